"""Hand-written prompt ensembles: normal / anomalous states x templates, averaged per category.

The one place for the ensembles the baselines use (docs/methods.md): CLIP's single pair, CLIP-AC's
("normal/anomalous [cls]" in CLIP's 80 ImageNet templates), WinCLIP's compositional ensemble, VAND's
(APRIL-GAN's ``prompt_ensemble.py``: one more anomalous state and 35 ImageNet-style templates) and AdaCLIP's
(VAND's states, 4 of its templates). ``{}`` in a
state is the object word (e.g. "metal nut", or VAND's raw folder name "metal_nut"), ``{}`` in a template is
the stated object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from lightning_modules.clip.text import PromptTextEncoder
from lightning_modules.ops import l2_normalize

# What names the object in a method's prompts (``method.prompt_words``): "folder", the category's folder
# name as the authors' meta.json cls_name ("metal_nut", "pipe_fryum"), or "object_word", the dataset's
# prompt name ("metal nut").
PROMPT_WORDS = ("folder", "object_word")


@dataclasses.dataclass(frozen=True)
class PromptEnsemble:
    normal_states: tuple[str, ...]
    abnormal_states: tuple[str, ...]
    templates: tuple[str, ...]
    # Sentence order: states outer (the default) or templates outer, states inner (AnoVL's
    # prompt_ensemble.py: there the order is also the row order of the TTA adapter's prompt span).
    template_major: bool = False

    def sentences(self, word: str) -> tuple[list[str], list[str]]:
        """``(normal sentences, anomalous sentences)`` for one object word, state- or template-major."""

        def expand(states: tuple[str, ...]) -> list[str]:
            if self.template_major:
                return [t.format(s.format(word)) for t in self.templates for s in states]
            return [t.format(s.format(word)) for s in states for t in self.templates]

        return expand(self.normal_states), expand(self.abnormal_states)


# "a photo of a normal [cls]." / "a photo of an anomalous [cls]." (the article belongs to the state).
CLIP_PAIR = PromptEnsemble(("a normal {}",), ("an anomalous {}",), ("a photo of {}.",))

WINCLIP_NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
# The WinCLIP paper's 22 templates (7 x 22 = 154 normal, 4 x 22 = 88 anomalous sentences).
WINCLIP_TEMPLATES = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)
WINCLIP = PromptEnsemble(
    WINCLIP_NORMAL_STATES,
    ("damaged {}", "{} with flaw", "{} with defect", "{} with damage"),
    WINCLIP_TEMPLATES,
)

# anomalib's WinCLIP (prompting.TEMPLATES): the paper's list without "a cropped photo of a {}." and with
# "a jpeg corrupted photo of the {}." twice instead of "... of a {}." (21 templates, one of them doubled, so
# that sentence weighs twice in the mean). prompt_ensemble=winclip_anomalib reproduces anomalib's numbers.
WINCLIP_ANOMALIB = PromptEnsemble(
    WINCLIP.normal_states,
    WINCLIP.abnormal_states,
    tuple(
        "a jpeg corrupted photo of the {}." if t == "a jpeg corrupted photo of a {}." else t
        for t in WINCLIP_TEMPLATES
        if t != "a cropped photo of a {}."
    ),
)

# APRIL-GAN (VAND): WinCLIP's states plus "broken {}", and CLIP's ImageNet templates (35).
VAND_TEMPLATES = (
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of my {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "a dark photo of a {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)
VAND = PromptEnsemble(
    WINCLIP_NORMAL_STATES,
    ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage"),
    VAND_TEMPLATES,
)

# AdaCLIP (method/adaclip.py TextEmbebddingLayer): VAND's states with the first 4 of its templates, states outer.
ADACLIP = PromptEnsemble(VAND.normal_states, VAND.abnormal_states, VAND_TEMPLATES[:4])

# AA-CLIP's (dataset/constants.py PROMPTS): 3 normal / 5 anomalous states x 2 templates, states outer.
AA_CLIP = PromptEnsemble(
    ("{}", "a {}", "the {}"),
    ("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage"),
    ("{}.", "a photo of {}."),
)

# CLIP-AC [reconstruction] (docs/methods.md#clip-and-clip-ac says what was searched): the labels "normal [c]" /
# "anomalous [c]" are those a summary of the WinCLIP paper gives for CLIP-AC (junxnone/aiwiki issue 468);
# putting them into CLIP's 80 ImageNet templates (open_clip's copy of OpenAI's list, e.g. "a bad photo of a
# anomalous bottle.") rests only on an unverified recollection of AnomalyCLIP's appendix ("an ensemble of
# text prompts designed for the ImageNet dataset"). Neither paper's text could be read; no code implements it.
CLIP_AC = PromptEnsemble(
    ("normal {}",), ("anomalous {}",), tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)
)

PROMPT_ENSEMBLES: dict[str, PromptEnsemble] = {
    "clip": CLIP_PAIR,
    "clip_ac": CLIP_AC,
    "winclip": WINCLIP,
    "winclip_anomalib": WINCLIP_ANOMALIB,
    "vand": VAND,
    "adaclip": ADACLIP,
    "aa_clip": AA_CLIP,
}


def get_ensemble(name: str) -> PromptEnsemble:
    try:
        return PROMPT_ENSEMBLES[name]
    except KeyError:
        raise ValueError(f"unknown prompt ensemble {name!r}; known: {', '.join(PROMPT_ENSEMBLES)}") from None


def trim_after_end_token(token_ids: torch.Tensor, text_encoder: PromptTextEncoder) -> torch.Tensor:
    """Drop the padding columns after the last end-of-text token of a batch of tokenised texts.

    With CLIP's causal attention mask nothing after a text's end token reaches its features, so this is
    exact and makes short prompts (about 10 of 77 tokens) several times cheaper. Towers without a causal
    mask keep every column.
    """
    if text_encoder.attn_mask is None:
        return token_ids
    return token_ids[:, : int(token_ids.argmax(dim=-1).max()) + 1]


@torch.no_grad()
def encode_prompt_ensemble(
    text_encoder: PromptTextEncoder,
    tokenizer,
    ensemble: PromptEnsemble,
    words: Sequence[str],
    normalize_each: bool = True,
    chunk_size: int = 512,
) -> torch.Tensor:
    """``[C, 2, D]`` L2-normalised (index 0 normal, 1 anomalous), one row per object word.

    Each state's sentences are encoded and averaged: after normalising each sentence embedding
    (``normalize_each``, CLIP's zero-shot recipe and VAND's code) or as raw embeddings (the
    Accurate-WinCLIP reproduction); the mean is normalised either way. All words' sentences go through
    the text tower in chunks of ``chunk_size``.
    """
    if not words:
        raise ValueError("no object words to build prompts for")
    sentences: list[str] = []
    for word in words:
        normal, abnormal = ensemble.sentences(word)
        sentences += normal + abnormal
    device = text_encoder.token_embedding.weight.device
    token_ids = trim_after_end_token(tokenizer(sentences).to(device), text_encoder)
    features = torch.cat([text_encoder.encode(part).float() for part in token_ids.split(chunk_size)])
    if normalize_each:
        features = l2_normalize(features)
    n_normal = len(ensemble.normal_states) * len(ensemble.templates)
    features = features.view(len(words), -1, features.shape[-1])
    normal = features[:, :n_normal].mean(dim=1)
    abnormal = features[:, n_normal:].mean(dim=1)
    return l2_normalize(torch.stack([normal, abnormal], dim=1))
