"""Brain tumour classification sets with ``no/`` and ``yes/`` folders and no masks.

BrainMRI (Kaggle "Brain MRI Images for Brain Tumor Detection"): ``brain_tumor_dataset/{no,yes}/*``;
the archive also holds a duplicate ``no/`` and ``yes/`` next to it, which are ignored so no image is
counted twice. Br35H (Kaggle "Br35H :: Brain Tumor Detection 2020"): ``{no,yes}/*`` plus an
unlabelled ``pred/`` folder, which is ignored. Extensions vary (``.jpg``, ``.JPG``, ``.png``...).
No masks: no pixel-level metrics.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.index import DatasetIndex, DatasetSpec, Parser, register_dataset
from datamodules.parsers.common import Findings, child_dir, folder_records, require_dir, warn_unexpected

BRAIN_PROMPT = "brain"


def _no_yes(base: Path, dataset: str, findings: Findings) -> DatasetIndex:
    no = require_dir(base, "no", dataset=dataset, hint="expected folders no/ (normal) and yes/ (tumour)")
    yes = require_dir(base, "yes", dataset=dataset, hint="expected folders no/ (normal) and yes/ (tumour)")
    records = folder_records(no, dataset, BRAIN_PROMPT, 0, "") + folder_records(
        yes, dataset, BRAIN_PROMPT, 1, "tumor"
    )
    return findings.finish(
        DatasetIndex(dataset=dataset, root=findings.root, records=records, has_masks=False)
    )


def parse_brainmri(root: Path) -> DatasetIndex:
    findings = Findings("brainmri", root)
    nested = child_dir(root, "brain_tumor_dataset")
    if nested is not None:
        for p in (child_dir(root, "no"), child_dir(root, "yes")):
            if p is not None:
                findings.warn(f"ignored folder {p}: a duplicate of {nested / p.name} in the Kaggle archive")
        warn_unexpected(findings, root, ("brain_tumor_dataset", "no", "yes"))
        warn_unexpected(findings, nested, ("no", "yes"))
        return _no_yes(nested, "brainmri", findings)
    warn_unexpected(findings, root, ("no", "yes"))
    return _no_yes(root, "brainmri", findings)


def parse_br35h(root: Path) -> DatasetIndex:
    findings = Findings("br35h", root)
    pred = child_dir(root, "pred")
    if pred is not None:
        findings.warn(f"ignored folder {pred}: Br35H's unlabelled images")
    warn_unexpected(findings, root, ("no", "yes", "pred"))
    return _no_yes(root, "br35h", findings)


def _spec(name: str, parse: Parser, counts: tuple[int, int], description: str) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        parse=parse,
        categories=(name,),
        has_masks=False,
        has_normals=True,
        domain="medical",
        expected_test_counts={name: counts},
        description=description,
    )


register_dataset(
    _spec(
        "brainmri",
        parse_brainmri,
        (98, 155),
        "BrainMRI (Kaggle), MRI slices with/without tumour; brain_tumor_dataset/{no,yes}; no masks",
    )
)
register_dataset(
    _spec(
        "br35h",
        parse_br35h,
        (1500, 1500),
        "Br35H (Kaggle, 2020), MRI with/without tumour; {no,yes}, pred/ ignored; no masks",
    )
)
