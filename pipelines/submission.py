"""``zsad predict --submission mvtec_ad2``: anomaly images in the form MVTec's AD 2 evaluation server takes.

MVTec AD 2's private test sets have no public ground truth; methods are scored by uploading anomaly images
to https://benchmark.mvtec.com. The form is the one MVTec's upload checker verifies
(``MVTecAD2_public_code_utils``: ``check_and_prepare_data_for_upload.py`` and ``utils.py``, 2025)::

    anomaly_images/{object}/test_private/{NNN}_regular.tiff          # single-channel float16 TIFF
    anomaly_images/{object}/test_private_mixed/{NNN}_mixed.tiff
    anomaly_images_thresholded/{object}/{split}/{NNN}_{regular|mixed}.png   # optional: 0/255, single channel

for all 8 objects and both splits, each split complete (as many files as MVTec's checker counts, e.g. 321
for ``can``); the checker then packs the folder as a ``.tar.gz``. zsad writes the maps at each image's own
resolution (the model's map resized bilinearly, as every ``zsad predict`` map), as float16, and the
thresholded images where a pixel threshold is given. It checks the inputs' names before predicting and says
which splits are incomplete afterwards; MVTec's checker remains the authority before an upload.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from datamodules.errors import ConfigError
from datamodules.parsers.mvtec_ad2 import PRIVATE_COUNTS, PRIVATE_SPLITS

SUBMISSIONS = ("mvtec_ad2",)
MAPS_DIR = "anomaly_images"
MASKS_DIR = "anomaly_images_thresholded"
MAP_DTYPE = np.float16
_NAME = re.compile(
    r"(?P<object>[a-z_]+)/(?P<split>test_private(?:_mixed)?)/(?P<index>\d{3})_(?P<kind>regular|mixed)"
)
_KIND = {"test_private": "regular", "test_private_mixed": "mixed"}


def name_of(image: Path) -> str:
    """``{object}/{split}/{stem}``: where an input image's anomaly image goes (its last three path parts, so
    that any subset of objects and splits lands in the server's tree)."""
    return "/".join(image.with_suffix("").parts[-3:])


def check_inputs(images: list[Path]) -> None:
    """Every input must be ``.../{object}/{test_private|test_private_mixed}/{NNN}_{regular|mixed}.png``
    (``--input ROOT/*/test_private ROOT/*/test_private_mixed``)."""
    for name in map(name_of, images):
        match = _NAME.fullmatch(name)
        if match is None or match["object"] not in PRIVATE_COUNTS or _KIND[match["split"]] != match["kind"]:
            raise ConfigError(
                f"--submission mvtec_ad2: input {name} is not an image of MVTec AD 2's private test sets "
                f"(.../{{object}}/{'|'.join(PRIVATE_SPLITS)}/NNN_regular|mixed.png); "
                "pass --input ROOT/*/test_private ROOT/*/test_private_mixed"
            )


def as_map(anomaly_map: np.ndarray) -> np.ndarray:
    """The map as the server's float16; scores beyond float16's range are an error, not a silent inf."""
    converted = anomaly_map.astype(MAP_DTYPE)
    if not np.isfinite(converted).all():
        raise ConfigError(
            f"--submission mvtec_ad2: anomaly scores up to {float(np.abs(anomaly_map).max()):g} exceed float16, "
            "which MVTec's server requires; rescale the method's maps"
        )
    return converted


def incomplete_splits(names: list[str]) -> list[str]:
    """One line per object and private split whose predicted images fall short of MVTec's count."""
    found = Counter((m["object"], m["split"]) for m in map(_NAME.fullmatch, names) if m is not None)
    return [
        f"{obj}/{split}: {found[(obj, split)]} of {count} images (MVTec's checker refuses an incomplete split)"
        for obj, count in PRIVATE_COUNTS.items()
        for split in PRIVATE_SPLITS
        if found[(obj, split)] != count
    ]


def written_names(out: Path) -> list[str]:
    """``{object}/{split}/{stem}`` of every anomaly image written under ``out``."""
    maps = out / MAPS_DIR
    return sorted(p.relative_to(maps).with_suffix("").as_posix() for p in maps.rglob("*.tiff"))
