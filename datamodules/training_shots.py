"""A few-shot *training* set: K labelled images per category of a source's training split.

AA-CLIP's data-efficiency study (their ``train.py --training_mode few_shot --shot K``, paper: 2, 16 and 64
shots besides the full set) trains on K images of each source category: "2-shot means one normal and one
anomalous sample taken at random from each category; 4-shot two normal and two anomalous" (the authors,
Mwxinnn/AA-CLIP issue 8). Their ``{K}-shot.jsonl`` files are not published, so which images they drew is
unknown: zsad draws K/2 normal and K/2 anomalous images per category at random (**reconstruction**), and the
drawn files become the training split's fingerprint, which checkpoints and results record and a resume
compares. This is unrelated to the few-shot *evaluation* protocol (``protocol.shots``: normal reference
images of the target, :mod:`datamodules.references`).

A draw depends on ``train_shots_seed``, the category's name and the label only (:func:`datamodules.
references.category_stream`, one stream per label): one category's images do not move when other categories
are selected, its anomalous images do not move when normal images are added (or the other way round), and a
sweep over run seeds trains every seed on the same images, as one ``{K}-shot.jsonl`` per dataset did.
"""

from __future__ import annotations

import collections
import dataclasses

from datamodules.errors import ConfigError
from datamodules.index import DatasetIndex, SampleRecord
from datamodules.references import category_stream

# category_stream's draw number for training shots (+ the label): far from the reference draws' 0, 1, 2, ...
TRAINING_SHOTS_DRAW = 2**31


def training_shots(index: DatasetIndex, shots: int, seed: int) -> DatasetIndex:
    """``index`` (one source's training split) cut to ``shots // 2`` normal and ``shots // 2`` anomalous
    images per category, drawn at random (sorted by path, then permuted by the category's stream); the
    records keep their order in ``index``. An odd or non-positive ``shots``, or a category with too few
    images of either label, is a ConfigError."""
    if shots < 2 or shots % 2:
        raise ConfigError(
            f"source.train_shots={shots}: a few-shot training set takes shots/2 normal and shots/2 anomalous "
            "images per category (AA-CLIP's K-shot); give an even number >= 2, or null for the whole split"
        )
    per_label = shots // 2
    pools: dict[tuple[str, int], list[SampleRecord]] = collections.defaultdict(list)
    for record in index.records:
        pools[(record.category, record.label)].append(record)
    chosen: set[int] = set()
    for category in index.categories():
        for label, name in ((0, "normal"), (1, "anomalous")):
            stream = category_stream(seed, TRAINING_SHOTS_DRAW + label, category)
            pool = sorted(pools[(category, label)], key=lambda r: str(r.image_path))
            if len(pool) < per_label:
                raise ConfigError(
                    f"source.train_shots={shots}: category '{category}' of {index.dataset} has {len(pool)} "
                    f"{name} images in its training split, {per_label} needed; lower train_shots or leave "
                    f"the category out (source.categories)"
                )
            chosen.update(id(pool[i]) for i in stream.permutation(len(pool))[:per_label])
    return dataclasses.replace(index, records=[r for r in index.records if id(r) in chosen])
