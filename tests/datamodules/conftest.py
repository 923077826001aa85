"""Tiny fake copies of the benchmarks' raw layouts (real folder names, extensions and quirks).

Images are 24 wide and 16 high (H != W catches transposed shapes); anomalous images get a mask whose
left half is set, so the defect survives any resize. Each ``fake_<name>`` fixture writes one layout
under ``tmp_path`` and returns its root; tests break it on purpose where they need to.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule

W, H = 24, 16  # PIL sizes are (W, H); arrays are (H, W)


def write_image(path: Path, size: tuple[int, int] = (W, H), mode: str = "RGB", seed: int = 0) -> Path:
    """A small random image in ``mode``; the format follows the extension (``.JPG``, ``.bmp``, ``.tif``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "RGB":
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    elif mode == "L":
        image = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        raise ValueError(mode)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
    image.save(
        path,
        format=fmt[path.suffix.lower()],
        **({"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}),
    )
    return path


def write_mask(path: Path, size: tuple[int, int] = (W, H), value: int = 255, empty: bool = False) -> Path:
    """A grey mask (0 / ``value``), left half set unless ``empty``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    array = np.zeros((h, w), dtype=np.uint8)
    if not empty:
        array[:, : w // 2] = value
    fmt = {".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF"}[path.suffix.lower()]
    Image.fromarray(array).save(path, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    return path


def write_mvtec_like(
    root: Path,
    category: str,
    normal: str = "good",
    defects: Iterable[str] = ("crack",),
    n_train: int = 2,
    n_good: int = 2,
    n_defect: int = 2,
    ext: str = ".png",
    mask_ext: str = ".png",
    mask_suffix: str = "_mask",
) -> Path:
    cat = root / category
    for i in range(n_train):
        write_image(cat / "train" / normal / f"{i:03d}{ext}", seed=i)
    for i in range(n_good):
        write_image(cat / "test" / normal / f"{i:03d}{ext}", seed=10 + i)
    for defect in defects:
        for i in range(n_defect):
            write_image(cat / "test" / defect / f"{i:03d}{ext}", seed=20 + i)
            write_mask(cat / "ground_truth" / defect / f"{i:03d}{mask_suffix}{mask_ext}")
    return root


# --------------------------------------------------------------------------------------------------
# one fixture per raw layout


@pytest.fixture
def fake_mvtec(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec"
    write_mvtec_like(root, "bottle", defects=("broken_large", "contamination"))
    write_mvtec_like(root, "metal_nut", defects=("bent",), n_defect=3)
    (root / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    return root


@pytest.fixture
def fake_visa(tmp_path: Path) -> Path:
    """``split_csv/1cls.csv`` + ``{cls}/Data/{Images,Masks}``; masks hold class indices 1, 2, not 255."""
    root = tmp_path / "visa"
    rows = []
    for k, cls in enumerate(("candle", "pcb1")):
        data = root / cls / "Data"
        for i in range(3):
            write_image(data / "Images" / "Normal" / f"{i:04d}.JPG", seed=i)
            rows.append(
                [cls, "train" if i == 0 else "test", "normal", f"{cls}/Data/Images/Normal/{i:04d}.JPG", ""]
            )
        for i in range(2):
            write_image(data / "Images" / "Anomaly" / f"{i:03d}.JPG", seed=50 + i)
            write_mask(data / "Masks" / "Anomaly" / f"{i:03d}.png", value=k + 1)
            rows.append(
                [
                    cls,
                    "test",
                    "anomaly",
                    f"{cls}/Data/Images/Anomaly/{i:03d}.JPG",
                    f"{cls}/Data/Masks/Anomaly/{i:03d}.png",
                ]
            )
        (root / cls / "image_anno.csv").write_text("image,label,mask\n")
    (root / "split_csv").mkdir(parents=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    (root / "split_csv" / "2cls_fewshot.csv").write_text("object,split,label,image,mask\n")
    return root


@pytest.fixture
def fake_mpdd(tmp_path: Path) -> Path:
    root = tmp_path / "MPDD"
    write_mvtec_like(root, "bracket_black", defects=("hole", "scratches"))
    write_mvtec_like(root, "tubes", defects=("anomalous",))
    return root


@pytest.fixture
def fake_btad(tmp_path: Path) -> Path:
    """``ok``/``ko`` folders, ``.bmp`` images; masks without suffix, ``.png`` for 01 and ``.bmp`` for 03."""
    root = tmp_path / "BTech_Dataset_transformed"
    write_mvtec_like(root, "01", normal="ok", defects=("ko",), ext=".bmp", mask_suffix="")
    write_mvtec_like(root, "02", normal="ok", defects=("ko",), ext=".png", mask_suffix="")
    write_mvtec_like(root, "03", normal="ok", defects=("ko",), ext=".bmp", mask_ext=".bmp", mask_suffix="")
    return root


SDD_SIZE = (12, 30)  # (W, H): tall like KolektorSDD's 500x1240, thirds of 10 rows


@pytest.fixture
def fake_sdd_raw(tmp_path: Path) -> Path:
    """``kosNN/PartN.jpg`` + ``PartN_label.bmp``; defects in kos01/Part1 (middle third) and kos02/Part0
    (rows 8..12: top and middle thirds), so 3 anomalous and 15 normal thirds."""
    root = tmp_path / "KolektorSDD"
    w, h = SDD_SIZE
    defects = {("kos01", "Part1"): (12, 18), ("kos02", "Part0"): (8, 12)}
    for kos in ("kos01", "kos02"):
        for part in ("Part0", "Part1", "Part2"):
            write_image(root / kos / f"{part}.jpg", size=SDD_SIZE, mode="L", seed=len(part))
            label = np.zeros((h, w), dtype=np.uint8)
            if (kos, part) in defects:
                a, b = defects[(kos, part)]
                label[a:b, 2:8] = 255
            Image.fromarray(label).save(root / kos / f"{part}_label.bmp")
    return root


@pytest.fixture
def fake_sdd_converted(tmp_path: Path) -> Path:
    root = tmp_path / "SDD_anomaly_detection"
    write_mvtec_like(root, "SDD", defects=("defect",), n_good=3, n_defect=2)
    return root


@pytest.fixture
def fake_dagm(tmp_path: Path) -> Path:
    """``Class{N}/{Train,Test}/*.PNG`` with ``Label/{stem}_label.PNG`` for the defective ones only."""
    root = tmp_path / "DAGM_KaggleUpload"
    for cls in ("Class1", "Class10", "Class2"):
        for split in ("Train", "Test"):
            folder = root / cls / split
            for i in range(1, 5):
                write_image(folder / f"{i:04d}.PNG", mode="L", seed=i)
            for i in (2, 4):
                write_mask(folder / "Label" / f"{i:04d}_label.PNG")
            (folder / "Label" / "Labels.txt").write_text("1\n")
    return root


@pytest.fixture
def fake_dtd(tmp_path: Path) -> Path:
    root = tmp_path / "DTD-Synthetic"
    write_mvtec_like(root, "Woven_001", defects=("bad",))
    write_mvtec_like(root, "Blotchy_099", defects=("bad",), n_defect=3)
    return root


@pytest.fixture
def fake_isic(tmp_path: Path) -> Path:
    root = tmp_path / "ISIC2016"
    for i in range(3):
        write_image(root / "ISBI2016_ISIC_Part1_Test_Data" / f"ISIC_{i:07d}.jpg", seed=i)
        write_mask(root / "ISBI2016_ISIC_Part1_Test_GroundTruth" / f"ISIC_{i:07d}_Segmentation.png")
    return root


def _images_masks(
    root: Path, n: int, image_ext: str = ".png", mask_ext: str = ".png", mode: str = "RGB"
) -> Path:
    for i in range(1, n + 1):
        write_image(root / "images" / f"{i}{image_ext}", mode=mode, seed=i)
        write_mask(root / "masks" / f"{i}{mask_ext}")
    return root


@pytest.fixture
def fake_clinicdb(tmp_path: Path) -> Path:
    return _images_masks(tmp_path / "CVC-ClinicDB", 3)


@pytest.fixture
def fake_colondb(tmp_path: Path) -> Path:
    return _images_masks(tmp_path / "CVC-ColonDB", 3)


@pytest.fixture
def fake_kvasir(tmp_path: Path) -> Path:
    root = _images_masks(tmp_path / "Kvasir-SEG", 3, ".jpg", ".jpg")
    (root / "kavsir_bboxes.json").write_text("{}\n")
    return root


@pytest.fixture
def fake_endo(tmp_path: Path) -> Path:
    """Images split over two folders that share one ``masks/``."""
    root = tmp_path / "EndoTect_2020_Segmentation_Test_Dataset"
    for folder, stems in (("images", ("a1", "a2")), ("images_part2", ("b1",))):
        for stem in stems:
            write_image(root / folder / f"{stem}.jpg")
            write_mask(root / "masks" / f"{stem}.png")
    return root


@pytest.fixture
def fake_tn3k(tmp_path: Path) -> Path:
    root = tmp_path / "tn3k"
    for split, n in (("test", 3), ("trainval", 2)):
        for i in range(n):
            write_image(root / f"{split}-image" / f"{i:04d}.jpg", mode="L", seed=i)
            write_mask(root / f"{split}-mask" / f"{i:04d}.jpg")
    return root


@pytest.fixture
def fake_headct(tmp_path: Path) -> Path:
    """``head_ct/head_ct/000.png`` (nested, zero-padded) + ``labels.csv`` (``id, hemorrhage``, int ids)."""
    root = tmp_path / "HeadCT"
    for i in range(4):
        write_image(root / "head_ct" / "head_ct" / f"{i:03d}.png", mode="L", seed=i)
    (root / "labels.csv").write_text("id, hemorrhage\n0,1\n1,1\n2,0\n3,0\n")
    return root


@pytest.fixture
def fake_brainmri(tmp_path: Path) -> Path:
    """``brain_tumor_dataset/{no,yes}`` plus the archive's duplicate ``no/`` and ``yes/`` next to it."""
    root = tmp_path / "BrainMRI"
    for base in (root / "brain_tumor_dataset", root):
        write_image(base / "no" / "No11.jpg", mode="L")
        write_image(base / "no" / "no 2.jpeg", mode="L")
        write_image(base / "yes" / "Y1.JPG")
        write_image(base / "yes" / "Y2.png", mode="L")
        write_image(base / "yes" / "Y3.jpg")
    return root


@pytest.fixture
def fake_br35h(tmp_path: Path) -> Path:
    root = tmp_path / "Br35H"
    for i in range(2):
        write_image(root / "no" / f"no{i}.jpg", seed=i)
        write_image(root / "yes" / f"y{i}.jpg", seed=i)
        write_image(root / "pred" / f"pred{i}.jpg", seed=i)
    return root


@pytest.fixture
def fake_covid(tmp_path: Path) -> Path:
    """``{COVID,Normal,Lung_Opacity,Viral Pneumonia}/{images,masks}``; the masks are lung masks."""
    root = tmp_path / "COVID-19_Radiography_Dataset"
    for folder, n in (("COVID", 2), ("Normal", 3), ("Lung_Opacity", 1), ("Viral Pneumonia", 1)):
        for i in range(1, n + 1):
            write_image(root / folder / "images" / f"{folder}-{i}.png", mode="L", seed=i)
            write_mask(root / folder / "masks" / f"{folder}-{i}.png")
    (root / "COVID.metadata.xlsx").write_bytes(b"")
    return root


def write_region(path: Path, rows: slice, cols: slice, value: int, size: tuple[int, int] = (W, H)) -> Path:
    """One defect region PNG of a mask folder (MVTec LOCO, AutoVI): ``value`` inside the box, 0 elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((size[1], size[0]), dtype=np.uint8)
    array[rows, cols] = value
    Image.fromarray(array, mode="L").save(path)
    return path


LOCO_DEFECTS = [  # pixel value 255: a relative rule; 1: an absolute one (pixels)
    {
        "defect_name": "missing_item",
        "pixel_value": 255,
        "saturation_threshold": 0.5,
        "relative_saturation": True,
    },
    {"defect_name": "scratch", "pixel_value": 1, "saturation_threshold": 10, "relative_saturation": False},
]


@pytest.fixture
def fake_mvtec_ad2(tmp_path: Path) -> Path:
    """``{cls}/{train,validation}/good``, ``test_public/{good,bad}`` + ``ground_truth/bad/*_mask.png``,
    ``test_private{,_mixed}`` (2 images each, so MVTec's file counts do not hold) and a ``license.txt``."""
    root = tmp_path / "mvtec_ad_2"
    for category in ("can", "walnuts"):
        cat = root / category
        write_image(cat / "train" / "good" / "000_regular.png")
        write_image(cat / "validation" / "good" / "000_regular.png", seed=1)
        for i in range(2):
            write_image(cat / "test_public" / "good" / f"{i:03d}_regular.png", seed=10 + i)
            write_image(cat / "test_public" / "bad" / f"{i:03d}_overexposed.png", seed=20 + i)
            write_mask(cat / "test_public" / "ground_truth" / "bad" / f"{i:03d}_overexposed_mask.png")
            write_image(cat / "test_private" / f"{i:03d}_regular.png", seed=30 + i)
            write_image(cat / "test_private_mixed" / f"{i:03d}_mixed.png", seed=40 + i)
    (root / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    return root


REALIAD_VIEWS = 5


@pytest.fixture
def fake_realiad(tmp_path: Path) -> Path:
    """``realiad_1024/{cls}/{OK,NG/<code>}/S####/`` with 5 views per sample and masks beside the NG views,
    ``realiad_jsons/{cls}.json`` (multi-view) and ``realiad_jsons_sv/`` (view C1 only). Per class: OK
    samples 1 and 2 (test) and 4 (train); NG sample 3 (code QS) whose view C3 does not show the defect, so
    the JSON lists it as OK without a mask although it lies in the NG folder."""
    root = tmp_path / "Real-IAD"
    for category in ("audiojack", "zipper"):
        base = root / "realiad_1024" / category
        train, test, single = [], [], []
        for number, folder, kind in (
            (1, "OK", "OK"),
            (2, "OK", "OK"),
            (3, "NG/QS", "NG_QS"),
            (4, "OK", "OK"),
        ):
            for view in range(1, REALIAD_VIEWS + 1):
                stem = f"{category}_{number:04d}_{kind}_C{view}_2023092209{number:02d}{view:02d}"
                relative = f"{folder}/S{number:04d}/{stem}"
                write_image(base / f"{relative}.jpg", seed=number * 10 + view)
                shows = kind != "OK" and view != 3
                if kind != "OK":
                    write_mask(base / f"{relative}.png", empty=not shows)
                sample = {
                    "category": category,
                    "anomaly_class": "QS" if shows else "OK",
                    "image_path": f"{relative}.jpg",
                    "mask_path": f"{relative}.png" if shows else None,
                }
                (train if number == 4 else test).append(sample)
                if view == 1 and number != 4:
                    single.append(sample)
        meta = {"prefix": category, "normal_class": "OK"}
        for folder, samples in (("realiad_jsons", test), ("realiad_jsons_sv", single)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            payload = {"meta": meta, "train": train, "test": samples}
            (root / folder / f"{category}.json").write_text(json.dumps(payload))
    return root


def write_mvtec_loco(root: Path, n_test: int = 2) -> Path:
    """Two objects with ``defects_config.json`` (:data:`LOCO_DEFECTS`) and ``n_test`` images per test folder;
    each anomalous image has a folder of region PNGs: logical ``000`` has two regions (values 255 and 1),
    every other one a single region."""
    for obj in ("breakfast_box", "pushpins"):
        cat = root / obj
        write_image(cat / "train" / "good" / "000.png")
        write_image(cat / "validation" / "good" / "000.png", seed=1)
        for i in range(n_test):
            write_image(cat / "test" / "good" / f"{i:03d}.png", seed=10 + i)
            for kind, value in (("logical_anomalies", 255), ("structural_anomalies", 1)):
                write_image(cat / "test" / kind / f"{i:03d}.png", seed=20 + i)
                write_region(
                    cat / "ground_truth" / kind / f"{i:03d}" / "000.png", slice(2, 8), slice(2, 10), value
                )
        write_region(
            cat / "ground_truth" / "logical_anomalies" / "000" / "001.png", slice(9, 14), slice(12, 20), 1
        )
        (cat / "defects_config.json").write_text(json.dumps(LOCO_DEFECTS))
    (root / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    (root / "readme.txt").write_text("MVTec LOCO AD\n")
    return root


@pytest.fixture
def fake_mvtec_loco(tmp_path: Path) -> Path:
    """:func:`write_mvtec_loco` with two images per test folder."""
    return write_mvtec_loco(tmp_path / "mvtec_loco_anomaly_detection")


@pytest.fixture
def fake_bmad(tmp_path: Path) -> Path:
    """``Brain_AD/BraTS2021_slice/`` (a wrapper; ``test/<label>/<img|label>``), ``Liver_AD/hist_DIY/``
    (``test/<img|label>/<label>``, lower-case ``ungood``) and ``Chest-AD/`` (image level, no wrapper), each
    with a ``valid/`` that holds anomalies too; plus a ``.DS_Store`` and a readme."""
    root = tmp_path / "BMAD"
    brain = root / "Brain_AD" / "BraTS2021_slice"
    write_image(brain / "train" / "good" / "img" / "00003_60.png", mode="L")
    for label in ("good", "Ungood"):
        for i in range(2):
            write_image(brain / "test" / label / "img" / f"0000{i}_9{i}.png", mode="L", seed=i)
            write_image(brain / "valid" / label / "img" / f"0010{i}_9{i}.png", mode="L", seed=i)
            if label == "Ungood":
                write_mask(brain / "test" / label / "label" / f"0000{i}_9{i}.png")
                write_mask(brain / "valid" / label / "label" / f"0010{i}_9{i}.png")
    liver = root / "Liver_AD" / "hist_DIY"
    write_image(liver / "train" / "good" / "0.png", mode="L")
    for label in ("good", "ungood"):
        for i in range(2):
            write_image(liver / "test" / "img" / label / f"{i}.png", mode="L", seed=i)
            if label == "ungood":
                write_mask(liver / "test" / "label" / label / f"{i}.png")
    chest = root / "Chest-AD"
    write_image(chest / "train" / "good" / "0.png", mode="L")
    for label in ("good", "Ungood"):
        for i in range(3):
            write_image(chest / "test" / label / f"{label}{i}.png", mode="L", seed=i)
            write_image(chest / "val" / label / f"{label}{i}.png", mode="L", seed=i)
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "README.md").write_text("BMAD\n")
    return root


AUTOVI_DEFECTS = [
    {
        "defect_name": "fastening",
        "pixel_value": 255,
        "saturation_threshold": 1.0,
        "relative_saturation": True,
    },
]


@pytest.fixture
def fake_autovi(tmp_path: Path) -> Path:
    """``engine_wiring`` inside a wrapper folder of its own name, with ``defects_config.json``;
    ``pipe_clip`` directly under the root, without one (no sPRO there)."""
    root = tmp_path / "AutoVI"
    for cat in (root / "engine_wiring" / "engine_wiring", root / "pipe_clip"):
        write_image(cat / "train" / "good" / "0000.png")
        for i in range(2):
            write_image(cat / "test" / "good" / f"{i:04d}.png", seed=10 + i)
            write_image(cat / "test" / "fastening" / f"{i:04d}.png", seed=20 + i)
            write_region(
                cat / "ground_truth" / "fastening" / f"{i:04d}" / "0000.png", slice(0, 8), slice(0, 12), 255
            )
    (root / "engine_wiring" / "engine_wiring" / "defects_config.json").write_text(json.dumps(AUTOVI_DEFECTS))
    return root


@pytest.fixture
def fake_ksdd2(tmp_path: Path) -> Path:
    """``{train,test}/{id}.png`` + ``{id}_GT.png``: an all-zero GT is a normal image, any non-zero pixel
    (here value 1) an anomalous one."""
    root = tmp_path / "KolektorSDD2"
    for split, n in (("test", 4), ("train", 2)):
        for i in range(n):
            stem = f"{10000 + i}"
            write_image(root / split / f"{stem}.png", seed=i)
            write_mask(root / split / f"{stem}_GT.png", value=1, empty=i % 2 == 0)
    return root


# --------------------------------------------------------------------------------------------------
# loading a batch through the DataModule


def load_test_batch(name: str, root: Path, image_size: int = 32, **options: str) -> dict[str, Any]:
    """One test batch of the whole test split through :class:`AnomalyDataModule`, shapes and ranges checked."""
    cfg = DataConfig(name=name, root=str(root), num_workers=0, eval_batch_size=64, options=dict(options))
    dm = AnomalyDataModule(cfg, image_size=image_size)
    batch = next(iter(dm.test_dataloader()))
    n = len(batch["label"])
    assert n == len(dm.test_index.records)
    assert batch["image"].shape == (n, 3, image_size, image_size)
    assert batch["image"].dtype == torch.float32 and torch.isfinite(batch["image"]).all()
    # CLIP-normalised 8-bit images lie within about [-1.8, 2.2]
    assert batch["image"].min() >= -2.0 and batch["image"].max() <= 2.3
    assert batch["mask"].shape == (n, image_size, image_size)
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert set(batch["label"].tolist()) <= {0, 1}
    normal = batch["label"] == 0
    assert batch["mask"][normal].sum() == 0, "normal images must get empty masks"
    masked = batch["has_mask"]  # per image: BMAD has categories without masks
    anomalous = batch["mask"][~normal & masked].flatten(1).sum(1)
    assert (anomalous > 0).all(), "every anomalous image with ground truth must have a non-empty mask"
    assert batch["mask"][~masked].sum() == 0
    return batch


@pytest.fixture
def batch_of() -> Callable[..., dict[str, Any]]:
    return load_test_batch


@pytest.fixture
def image_writer() -> Callable[..., Path]:
    return write_image


@pytest.fixture
def mask_writer() -> Callable[..., Path]:
    return write_mask


@pytest.fixture
def mvtec_like_writer() -> Callable[..., Path]:
    return write_mvtec_like
