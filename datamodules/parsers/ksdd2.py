"""KolektorSDD2 (Božič et al., Computers in Industry 2021), surface defects on production items.

Layout of the official archive (vicoslab/mixed-segdec-net-comind2021, ``datasets/README.md``)::

    train/{id}.png + {id}_GT.png
    test/{id}.png + {id}_GT.png

Every image has a ground-truth file; as the authors' loader (``data/dataset.py``, ``read_label_resize``:
``np.max(label) > 0``), an image is anomalous when its ``_GT.png`` has any non-zero pixel, and that file is
its mask. ``test/`` is evaluated, ``train/`` indexed as ``train``. One category, ``ksdd2``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.errors import ZsadError
from datamodules.images import load_mask
from datamodules.index import DatasetIndex, DatasetSpec, list_image_files, register_dataset
from datamodules.parsers.common import IMAGE_EXTENSIONS, Findings, make_records, require_dir, warn_unexpected

KSDD2_CATEGORY = "ksdd2"
KSDD2_PROMPT = "surface"
GT_SUFFIX = "_GT"


def parse_ksdd2(root: Path) -> DatasetIndex:
    findings = Findings("ksdd2", root)
    warn_unexpected(findings, root, ("train", "test"))
    records = []
    for split in ("test", "train"):
        folder = require_dir(root, split, dataset="ksdd2", hint="expected train/ and test/ of KolektorSDD2")
        files = list_image_files(folder, IMAGE_EXTENSIONS)
        truths = {p.stem[: -len(GT_SUFFIX)]: p for p in files if p.stem.endswith(GT_SUFFIX)}
        normal, anomalous = [], []
        for image in (p for p in files if not p.stem.endswith(GT_SUFFIX)):
            gt = truths.pop(image.stem, None)
            if gt is None:
                findings.error(
                    f"no ground truth for {image} (expected {folder / (image.stem + GT_SUFFIX)}.png)"
                )
                continue
            try:
                positive = bool(np.any(load_mask(gt)))
            except ZsadError as error:
                findings.error(str(error))
                continue
            (anomalous if positive else normal).append((image, gt if positive else None))
        for stem, gt in sorted(truths.items()):
            findings.problem(f"ground truth {gt} has no image {folder / stem}.png")
        records += make_records(normal, KSDD2_CATEGORY, KSDD2_PROMPT, 0, "", split)
        records += make_records(anomalous, KSDD2_CATEGORY, KSDD2_PROMPT, 1, "defect", split)
    return findings.finish(DatasetIndex(dataset="ksdd2", root=root, records=records, has_masks=True))


register_dataset(
    DatasetSpec(
        name="ksdd2",
        parse=parse_ksdd2,
        categories=(KSDD2_CATEGORY,),
        has_masks=True,
        has_normals=True,
        domain="industrial",
        description="KolektorSDD2 (Božič et al., 2021), one category; test/ evaluated; anomalous iff its "
        "_GT.png has a non-zero pixel",
    )
)
