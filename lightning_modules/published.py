"""Published numbers of the methods, which ``zsad report --reference`` shows as reference rows: each method's
spec names its numbers (``MethodSpec.published``), built here from the tables below.

From the AnomalyCLIP paper (ICLR 2024), Tables 1 and 2: image level (AUROC, AP), pixel level (AUROC, AUPRO),
in percent. AnomalyCLIP, VAND and CoOp were trained on the MVTec AD test set for every dataset except
MVTec AD itself (trained on VisA); WinCLIP's and VAND's MVTec AD / VisA numbers are from their own papers.

The benchmarks of 2025-2026 (issue 27): only Real-IAD has zero-shot numbers of zsad's methods in a source
stored here, the comparison table of UniADet's README (gaobb/UniADet, "Comparison with State-of-the-Arts",
zero-shot rows; image AUROC and pixel AP, as there): AnomalyCLIP 69.5 / 26.7, WinCLIP 67.0 / 3.3. That table
does not state the auxiliary training set, the Real-IAD split or the resolution; compare with care. No source
with numbers of zsad's methods on MVTec AD 2, MVTec LOCO AD, BMAD, AutoVI or KolektorSDD2 was found.

k-shot rows (``zsad report --reference`` on k-shot columns): WinCLIP+'s from the WinCLIP paper (below).
AnomalyDINO: its 1-shot MVTec AD image AUROC from its paper's abstract (the authors' setting, below). No
stored source states APRIL-GAN's (VAND's) k-shot numbers, so VAND's k-shot columns have no reference row.

AdaCLIP (Cao et al., ECCV 2024): the image AUROC its paper claims on MVTec AD, VisA and MPDD (89.2, 85.8,
82.5), as sotaverified.org lists them ("claimed", unverified there): the paper's tables themselves
(arXiv 2407.15795; its README's Table_industrial.png / Table_medical.png are Git LFS objects) could not be
read here, so its other columns are absent. Their README corrects the paper's training data: MVTec AD +
ColonDB for VisA and the other targets, VisA + ClinicDB for MVTec AD and ColonDB
(configs/experiment/adaclip_*.yaml).
"""

from __future__ import annotations

from lightning_modules.method_spec import PublishedNumbers, visa_for_mvtec

ANOMALYCLIP_PAPER = "AnomalyCLIP paper (Zhou et al., ICLR 2024), Tables 1-2"
UNIADET_README = (
    "UniADet's README (github.com/gaobb/UniADet, zero-shot comparison table; protocol not stated there)"
)
METHODS = ("clip", "clip_ac", "winclip", "vand", "coop", "anomalyclip")
#: the methods of the table that train (on the MVTec AD test split, on VisA's for MVTec AD)
TRAINED = ("vand", "coop", "anomalyclip")

# dataset -> one (AUROC, AP) pair per method in METHODS order; None where the paper has no number
_IMAGE = {
    "mvtec": [(74.1, 87.6), (71.5, 86.4), (91.8, 96.5), (86.1, 93.5), (88.8, 94.8), (91.5, 96.2)],
    "visa": [(66.4, 71.5), (65.0, 70.1), (78.1, 81.2), (78.0, 81.4), (62.8, 68.1), (82.1, 85.4)],
    "mpdd": [(54.3, 65.4), (56.2, 66.0), (63.6, 69.9), (73.0, 80.2), (55.1, 64.2), (77.0, 82.0)],
    "btad": [(34.5, 52.5), (51.0, 62.1), (68.2, 70.9), (73.6, 68.6), (66.8, 77.4), (88.3, 87.3)],
    "sdd": [(65.7, 45.2), (65.2, 45.7), (84.3, 77.4), (79.8, 71.4), (74.9, 65.1), (84.7, 80.0)],
    "dagm": [(79.6, 59.0), (82.5, 63.7), (91.8, 79.5), (94.4, 83.8), (87.5, 74.6), (97.5, 92.3)],
    "dtd": [(71.6, 85.7), (66.8, 83.2), (93.2, 92.6), (86.4, 95.0), None, (93.5, 97.0)],
    "headct": [(56.5, 58.4), (60.0, 60.7), (81.8, 80.2), (89.1, 89.4), (78.4, 78.8), (93.4, 91.6)],
    "brainmri": [(73.9, 81.7), (80.6, 86.4), (86.6, 91.5), (89.3, 90.9), (61.3, 44.9), (90.3, 92.2)],
    "br35h": [(78.4, 78.8), (82.7, 81.3), (80.5, 82.2), (93.1, 92.9), (86.0, 87.5), (94.6, 94.7)],
    "covid": [(73.7, 42.4), (75.0, 45.9), (66.4, 42.9), (15.5, 8.5), (25.3, 9.2), (80.1, 58.7)],
}
# dataset -> one (pixel AUROC, AUPRO) pair per method
_PIXEL = {
    "mvtec": [(38.4, 11.3), (38.2, 11.6), (85.1, 64.6), (87.6, 44.0), (33.3, 6.7), (91.1, 81.4)],
    "visa": [(46.6, 14.8), (47.8, 17.3), (79.6, 56.8), (94.2, 86.8), (24.2, 3.8), (95.5, 87.0)],
    "mpdd": [(62.1, 33.0), (58.7, 29.1), (76.4, 48.9), (94.1, 83.2), (15.4, 2.3), (96.5, 88.7)],
    "btad": [(30.6, 4.4), (32.8, 8.3), (72.7, 27.3), (60.8, 25.0), (28.6, 3.8), (94.2, 74.8)],
    "sdd": [(39.0, 8.9), (32.5, 5.8), (68.8, 24.2), (79.8, 65.1), (28.9, 7.1), (90.6, 67.8)],
    "dagm": [(28.2, 2.9), (32.7, 4.8), (87.6, 65.7), (82.4, 66.2), (17.5, 2.1), (95.6, 91.0)],
    "dtd": [(33.9, 12.5), (23.7, 5.5), (83.9, 57.8), (95.3, 86.9), None, (97.9, 92.3)],
    "isic": [(33.1, 5.8), (36.0, 7.7), (83.3, 55.1), (89.4, 77.2), (51.7, 15.9), (89.7, 78.4)],
    "colondb": [(49.5, 15.8), (49.5, 11.5), (70.3, 32.5), (78.4, 64.6), (40.5, 2.6), (81.9, 71.3)],
    "clinicdb": [(47.5, 18.9), (48.5, 12.6), (51.2, 13.8), (80.5, 60.7), (34.8, 2.4), (82.9, 67.8)],
    "kvasir": [(44.6, 17.7), (45.0, 16.8), (69.7, 24.5), (75.0, 36.2), (44.1, 3.5), (78.9, 45.6)],
    "endo": [(45.2, 15.9), (46.6, 12.6), (68.2, 28.3), (81.9, 54.9), (40.6, 3.9), (84.1, 63.6)],
    "tn3k": [(42.3, 7.3), (35.6, 5.2), (70.7, 39.8), (73.6, 37.8), (34.0, 9.5), (81.5, 50.4)],
}


# (dataset, method) -> numbers in percent keyed like zsad's results, from the sources named above
_OTHER_SOURCES: dict[tuple[str, str], dict[str, float]] = {
    ("realiad", "anomalyclip"): {"image_auroc": 69.5, "pixel_ap": 26.7},
    ("realiad", "winclip"): {"image_auroc": 67.0, "pixel_ap": 3.3},
}


WINCLIP_PAPER = (
    "WinCLIP paper (Jeong et al., CVPR 2023), few-normal-shot rows: image AUROC and AUPRO per K as its "
    "'Results from the Paper' on paperswithcode, 1-shot pixel AUROC from its abstract"
)
# shots -> dataset -> numbers in percent (WinCLIP+, means over the paper's reference draws); only numbers a
# stored source states: the paper's AUPR, F1-max and 2/4-shot pixel AUROC are not in one
_WINCLIP_FEW_SHOT = {
    1: {"mvtec": {"image_auroc": 93.1, "pixel_auroc": 95.2, "aupro": 87.1},
        "visa": {"image_auroc": 83.8, "pixel_auroc": 96.4, "aupro": 85.1}},
    2: {"mvtec": {"image_auroc": 94.4, "aupro": 88.4}, "visa": {"image_auroc": 84.6, "aupro": 86.2}},
    4: {"mvtec": {"image_auroc": 95.2, "aupro": 89.0}, "visa": {"image_auroc": 87.3, "aupro": 87.6}},
}  # fmt: skip


def anomalyclip_paper(method: str) -> PublishedNumbers:
    """``method``'s numbers as fractions keyed like zsad's results: the AnomalyCLIP paper's (image_auroc,
    image_ap, pixel_auroc and the papers' cflow-style AUPRO as ``aupro``), and its Real-IAD rows from
    UniADet's README (image_auroc, pixel_ap) where there are any."""
    i = METHODS.index(method)
    results: dict[str, dict[str, float]] = {}
    for dataset in {**_IMAGE, **_PIXEL}:
        out = results.setdefault(dataset, {})
        image = _IMAGE.get(dataset, [None] * len(METHODS))[i]
        pixel = _PIXEL.get(dataset, [None] * len(METHODS))[i]
        if image:
            out["image_auroc"], out["image_ap"] = image[0] / 100, image[1] / 100
        if pixel:
            out["pixel_auroc"], out["aupro"] = pixel[0] / 100, pixel[1] / 100
    others = {dataset: numbers for (dataset, name), numbers in _OTHER_SOURCES.items() if name == method}
    for dataset, numbers in others.items():
        results[dataset] = {k: v / 100 for k, v in numbers.items()}
    source = ANOMALYCLIP_PAPER + (f"; Real-IAD rows: {UNIADET_README}" if others else "")
    few_shot = {
        shots: {dataset: {k: v / 100 for k, v in numbers.items()} for dataset, numbers in rows.items()}
        for shots, rows in (_WINCLIP_FEW_SHOT.items() if method == "winclip" else ())
    }
    return PublishedNumbers(
        source,
        {dataset: out for dataset, out in results.items() if out},
        few_shot=few_shot,
        few_shot_source=WINCLIP_PAPER if few_shot else None,
        trained_on=_anomalyclip_direction if method in TRAINED else None,
        epochs=_EPOCHS.get(method),
    )


# the training epochs of the papers' runs (their train scripts): AnomalyCLIP 15 in both directions; VAND's
# own MVTec AD / VisA numbers (APRIL-GAN's train.sh) 15 from VisA and 3 from MVTec AD; AnomalyCLIP's reruns of
# VAND on the other datasets and of CoOp do not say
_EPOCHS = {
    "anomalyclip": lambda dataset: None if dataset == "realiad" else 15,
    "vand": {"mvtec": 15, "visa": 3}.get,
}


def _anomalyclip_direction(dataset: str) -> str | None:
    """VisA for MVTec AD, MVTec AD for the others; the Real-IAD rows' source does not say."""
    return None if any(d == dataset for d, _ in _OTHER_SOURCES) else visa_for_mvtec(dataset)


ADACLIP_PAPER = (
    "AdaCLIP paper (Cao et al., ECCV 2024), image AUROC as listed by sotaverified.org (the paper's tables "
    "could not be read here)"
)


def adaclip_paper() -> PublishedNumbers:
    """AdaCLIP's image AUROC on MVTec AD, VisA and MPDD (the only numbers of its paper read here)."""
    numbers = {"mvtec": 89.2, "visa": 85.8, "mpdd": 82.5}
    return PublishedNumbers(
        ADACLIP_PAPER,
        {d: {"image_auroc": v / 100} for d, v in numbers.items()},
        trained_on=_adaclip_direction,
        epochs=lambda dataset: 5,  # their train.py --epoch 5
    )


def _adaclip_direction(dataset: str) -> str:
    """Their README: VisA + ClinicDB for MVTec AD and ColonDB, MVTec AD + ColonDB for the others."""
    return "visa+clinicdb" if dataset in ("mvtec", "colondb") else "mvtec+colondb"


ANOMALYDINO_PAPER = (
    "AnomalyDINO paper (Damm et al., WACV 2025, arXiv 2405.14529v2), abstract: the authors' code and setting "
    "(448 px, foreground masking of 5 MVTec AD categories, rotated references: zsad's method=anomalydino_authors), "
    "not anomalib's defaults; the paper's tables could not be read here"
)


def anomalydino_paper() -> PublishedNumbers:
    """AnomalyDINO's 1-shot image AUROC on MVTec AD (96.6), the one number of its paper read here."""
    return PublishedNumbers(
        ANOMALYDINO_PAPER,
        {},
        few_shot={1: {"mvtec": {"image_auroc": 0.966}}},
        few_shot_source=ANOMALYDINO_PAPER,
    )


ADAPTCLIP_README = (
    "AdaptCLIP's README (github.com/gaobb/AdaptCLIP, 'Ablation Studies' table; MVTec / VisA cells are image "
    "AUROC / pixel AUPR, as its note says): row 4 ('alternating', 0 shots, textual + visual adapters) for "
    "zero-shot, row 7 ('AdaptCLIP', 1 shot, all three adapters) for 1-shot. The table does not state the "
    "training direction (zsad: VisA -> MVTec AD, MVTec AD -> VisA, as their scripts) nor over how many "
    "reference draws the 1-shot cells average (their test script: seeds 10, 20, 30)"
)


def adaptclip_readme() -> PublishedNumbers:
    """AdaptCLIP's zero-shot and 1-shot image AUROC and pixel AUPR on MVTec AD and VisA (README): their AUPR is
    anomalib's trapezoidal area under the PR curve, zsad's ``pixel_aupr`` (not its step-wise ``pixel_ap``)."""

    def cells(image_auroc: float, pixel_aupr: float) -> dict[str, float]:
        return {"image_auroc": image_auroc / 100, "pixel_aupr": pixel_aupr / 100}

    return PublishedNumbers(
        ADAPTCLIP_README,
        {"mvtec": cells(93.5, 38.3), "visa": cells(84.8, 26.1)},
        few_shot={1: {"mvtec": cells(94.2, 52.5), "visa": cells(92.0, 38.8)}},
        few_shot_source=ADAPTCLIP_README,
        trained_on=visa_for_mvtec,  # their train_adaptclip.sh's directions (the table does not state them)
        epochs=lambda dataset: 15,  # train_adaptclip.sh
    )
