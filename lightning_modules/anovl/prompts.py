"""AnoVL's unified domain-aware contrastive state prompts (Deng et al., arXiv 2308.15939).

Seven normal/abnormal state pairs, each put into 22 sentence templates per "domain" (the medium the
picture is said to be: an industrial photo, a manufacturing image, ...). Objects and textures get
different media, as in the authors' ``prompt_ensemble.py``; the sentence order (templates outer, states
inner) is theirs too: it is the row order of the TTA adapter's prompt span, so with the same random
initialisation both adapt the same way.

The ensembles are :class:`~lightning_modules.clip.prompts.PromptEnsemble` objects like the baselines';
AnoVL's states differ from WinCLIP's ("normal {}" and four more abnormal states), and its templates depend
on the category's kind, so they are built here.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning_modules.clip.prompts import WINCLIP_NORMAL_STATES, PromptEnsemble

# WinCLIP's normal states with "normal {}" in place of the bare "{}".
NORMAL_STATES = ("normal {}", *WINCLIP_NORMAL_STATES[1:])
ABNORMAL_STATES = (
    "damaged {}",
    "abnormal {}",
    "imperfect {}",
    "blemished {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)

# "{a}" is the article of the medium, "{m}" the medium, "{}" the stated object.
_TEMPLATE_PATTERNS = (
    "a cropped {m} of the {}",
    "a cropped {m} of a {}",
    "a close-up {m} of a {}",
    "a close-up {m} of the {}",
    "a bright {m} of a {}",
    "a bright {m} of the {}",
    "a dark {m} of the {}",
    "a dark {m} of a {}",
    "a jpeg corrupted {m} of a {}",
    "a jpeg corrupted {m} of the {}",
    "a blurry {m} of the {}",
    "a blurry {m} of a {}",
    "{a} {m} of a {}",
    "{a} {m} of the {}",
    "{a} {m} of a small {}",
    "{a} {m} of the small {}",
    "{a} {m} of a large {}",
    "{a} {m} of the large {}",
    "{a} {m} of the {} for visual inspection",
    "{a} {m} of a {} for visual inspection",
    "{a} {m} of the {} for anomaly detection",
    "{a} {m} of a {} for anomaly detection",
)

# The authors' media. Medical media are a [design choice]: AnoVL was only published on industrial data.
MEDIA: dict[str, tuple[str, ...]] = {
    "object": ("industrial photo", "industrial image", "manufacturing image"),
    "texture": ("industrial photo", "textural photo", "surface picture"),
    "medical": ("medical photo", "medical image", "clinical image"),
}
# The authors' class_mapping: folder names that their prompts replace (every other folder name is used as
# it is, "metal_nut" with its underscore).
AUTHORS_CLASS_MAPPING = {"macaroni1": "macaroni", "macaroni2": "macaroni"}


def domain_templates(medium: str) -> list[str]:
    """The 22 templates of one medium, e.g. ``"an industrial photo of a {} for visual inspection"``."""
    article = "an" if medium[:1].lower() in "aeiou" else "a"
    return [p.replace("{a}", article).replace("{m}", medium) for p in _TEMPLATE_PATTERNS]


def prompt_kind(category: str, object_name: str, domain: str, texture_categories: Sequence[str]) -> str:
    """``"medical"`` for medical datasets, ``"texture"`` for texture classes, else ``"object"``."""
    if domain == "medical":
        return "medical"
    textures = {t.lower().replace(" ", "_") for t in texture_categories}
    names = {category.lower().replace(" ", "_"), object_name.lower().replace(" ", "_")}
    return "texture" if names & textures else "object"


def anovl_ensemble(kind: str, templates_per_domain: int | None = None) -> PromptEnsemble:
    """7 state pairs x (3 media x 22 templates) for one kind of category.

    ``templates_per_domain`` keeps only the first templates of each medium (the tiny test configs use it
    to stay fast; ``None`` is the authors' full set). Sentences are template-major, as the authors'.
    """
    if kind not in MEDIA:
        raise ValueError(f"prompt kind must be one of {sorted(MEDIA)}, got {kind!r}")
    templates = tuple(t for medium in MEDIA[kind] for t in domain_templates(medium)[:templates_per_domain])
    return PromptEnsemble(NORMAL_STATES, ABNORMAL_STATES, templates, template_major=True)
