"""Few-shot reference draws: seeded and reproducible per category, from the normal training images only,
never a test image (by path or by content), refused in one line where a target cannot give K of them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import write_image

from datamodules.errors import ConfigError
from datamodules.index import build_index
from datamodules.references import draw_references
from datamodules.synthetic import generate_synthetic_dataset

CATEGORIES = ["ring", "cells"]


@pytest.fixture()
def root(tmp_path) -> Path:
    kwargs = dict(seed=5, image_size=32, n_train=5, n_test_good=2, n_test_defect_per_kind=1)
    return generate_synthetic_dataset(tmp_path / "d", style="vivid", categories=CATEGORIES, **kwargs).root


def draws(root: Path, shots: int = 2, seed: int = 7, n: int = 3, categories=CATEGORIES):
    index = build_index("synthetic", root)
    return draw_references(index, index.select(split="test"), list(categories), shots, seed, n, "tgt")


def test_draws_are_seeded_distinct_training_images_independent_of_the_other_categories(root):
    first = draws(root)
    assert [d.files() for d in first] == [d.files() for d in draws(root)]  # reproducible
    assert len({tuple(d.files()["ring"]) for d in first}) > 1  # draws differ
    for d in first:
        for category, files in d.files().items():
            assert len(set(files)) == 2 and all(f.startswith(f"{category}/train/good/") for f in files)
    alone = draws(root, categories=["cells"])  # one category's draw does not depend on which others run
    assert [d.files()["cells"] for d in alone] == [d.files()["cells"] for d in first]
    assert [d.files() for d in draws(root, seed=8)] != [d.files() for d in first]


def test_a_training_image_with_a_test_images_content_is_never_drawn(root):
    good = sorted((root / "ring" / "test" / "good").iterdir())[0]
    for train in (root / "ring" / "train" / "good").iterdir():
        if train.name != "004.png":
            shutil.copyfile(good, train)  # four of five training images are a test image, byte for byte
    (only,) = {tuple(d.files()["ring"]) for d in draws(root, shots=1, n=4)}
    assert only == ("ring/train/good/004.png",)
    skipped = [d.record().get("skipped_test_images", {}) for d in draws(root, shots=1, n=4)]
    assert any(skipped) and all(set(s) <= {"ring"} for s in skipped)  # recorded, and only where it happened
    with pytest.raises(
        ConfigError, match=r"'ring': 5 normal training images \(4 of them are test images\), fewer"
    ):
        draws(root, shots=2)


def test_a_target_without_normal_training_images_is_refused_in_one_line(root):
    for category in CATEGORIES:
        shutil.rmtree(root / category / "train")
    with pytest.raises(ConfigError, match="target 'tgt' has no normal training images") as error:
        draws(root)
    assert "\n" not in str(error.value) and "protocol.shots=0" in str(error.value)


def listed(root: Path, lists: list[list[str]], shots: int = 2):
    index = build_index("synthetic", root)
    test = index.select(split="test")
    return draw_references(index, test, CATEGORIES, shots, 7, len(lists), "tgt", "listed", lists)


def test_listed_draws_take_the_named_files_in_their_order_with_their_repeats(root):
    """The authors' recorded draws (APRIL-GAN's k_shot.txt: their data-folder-relative paths, drawn with
    replacement): each line matched by the path below the root it ends with, absolute or relative."""
    lines = [
        "mvtec_like/ring/train/good/003.png",  # relative to their data folder
        f"{root / 'cells' / 'train' / 'good' / '001.png'}",  # absolute
        "ring\\train\\good\\003.png",  # a repeat, with Windows separators
        "",
        "cells/train/good/000.png",
        "other_set/bottle/train/good/000.png",  # another target's: kept apart, not an error here
    ]
    (draw,) = listed(root, [lines])
    assert draw.files() == {
        "ring": ["ring/train/good/003.png", "ring/train/good/003.png"],
        "cells": ["cells/train/good/001.png", "cells/train/good/000.png"],
    }
    assert draw.unmatched == ("other_set/bottle/train/good/000.png",) and draw.seed == (7, 0)
    second = ["ring/train/good/000.png", "ring/train/good/001.png", "cells/train/good/002.png"] * 1
    with pytest.raises(
        ConfigError, match=r"draw 1 names cells: 1 normal training images .* not protocol.shots=2"
    ):
        listed(root, [lines, second])


def test_a_listed_test_image_is_refused_not_skipped(root):
    shutil.copyfile(
        sorted((root / "ring" / "test" / "good").iterdir())[0], root / "ring" / "train" / "good" / "000.png"
    )
    lines = ["ring/train/good/000.png", "ring/train/good/001.png", "cells/train/good/0.png"]
    with pytest.raises(ConfigError, match=r"names ring/train/good/000.png, one of the evaluated test images"):
        listed(root, [lines])


@pytest.mark.parametrize("high_bit_depth", ["clip", "scale"])
def test_a_reference_rotated_by_0_degrees_is_the_reference_itself_also_for_16_bit_files(
    tmp_path, high_bit_depth
):
    """The rotations (AnomalyDINO's rotate_references) decoded a 16-bit file with Pillow's clipping at 255
    whatever the preprocessing said: under high_bit_depth=scale the rotated references were clipped, the
    test images scaled (mostly white against grey). A rotation by 0 degrees is the identity: its reference
    must be the unrotated one, as the test images are preprocessed."""
    import numpy as np
    import torch
    from PIL import Image

    from datamodules.references import ReferenceDraw, ReferenceImages
    from datamodules.transforms import ImageMaskTransform, ImagePreprocessing, TransformSpec

    path = tmp_path / "ref.png"
    ramp = np.linspace(0, 65535, 24 * 16).reshape(16, 24).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    preprocessing = ImagePreprocessing(
        resize="short_side", rgb_before_resize=True, mask_size="original", high_bit_depth=high_bit_depth
    )
    transform = ImageMaskTransform(TransformSpec(14, 14, preprocessing))
    draw = ReferenceDraw(0, (0, 0), {"c": [path]}, tmp_path, {"c": 0})
    references = ReferenceImages(draw, transform)
    plain, (rotated,) = references.images("c"), references.images("c", [0.0])
    assert plain.shape == (1, 3, 14, 21)
    torch.testing.assert_close(rotated, plain[0], rtol=0, atol=0)


def test_references_of_several_sizes_come_as_one_stack_per_size_or_are_refused(tmp_path):
    """A preprocessing that keeps each file's aspect gives references of several sizes: `images` (a method
    that stacks them) refuses in one line naming the sizes, `images_by_size` gives one stack per size."""
    import numpy as np
    import pytest
    import torch
    from PIL import Image

    from datamodules.errors import ZsadError
    from datamodules.references import ReferenceDraw, ReferenceImages
    from datamodules.transforms import ImageMaskTransform, ImagePreprocessing, TransformSpec

    paths = []
    for name, (h, w) in {"a": (16, 24), "b": (24, 16), "c": (32, 48)}.items():
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(np.random.default_rng(len(paths)).integers(0, 255, (h, w, 3), np.uint8)).save(
            paths[-1]
        )
    preprocessing = ImagePreprocessing(resize="short_side", rgb_before_resize=True, mask_size="original")
    transform = ImageMaskTransform(TransformSpec(14, 14, preprocessing))
    references = ReferenceImages(ReferenceDraw(0, (0, 0), {"c": paths}, tmp_path, {"c": 0}), transform)
    wide, tall = references.images_by_size("c")
    assert wide.shape == (2, 3, 14, 21) and tall.shape == (1, 3, 21, 14)  # a and c share one size
    for stack, members in ((wide, [paths[0], paths[2]]), (tall, [paths[1]])):
        one_by_one = [transform.image(Image.open(p)) for p in members]
        torch.testing.assert_close(stack, torch.stack(one_by_one), rtol=0, atol=0)
    with pytest.raises(ZsadError, match=r"category 'c' have 2 sizes after preprocessing \(14x21, 21x14\)"):
        references.images("c")


def test_the_two_rows_of_a_loco_object_share_its_reference_draws(fake_mvtec_loco):
    """MVTec LOCO's logical and structural rows are one object's test set split by anomaly type (MVTec's
    evaluation scores the same maps of the good images in both), so a few-shot evaluation must give both
    rows the object's references: the draws of the rows=object version, not one draw per row."""
    for obj in ("breakfast_box", "pushpins"):
        for i in range(1, 8):
            write_image(fake_mvtec_loco / obj / "train" / "good" / f"{i:03d}.png", seed=100 + i)
    by_type = build_index("mvtec_loco", fake_mvtec_loco)
    objects = build_index("mvtec_loco", fake_mvtec_loco, rows="object")
    rows = draw_references(by_type, by_type.select(split="test"), by_type.categories(), 2, 7, 4, "loco")
    whole = draw_references(objects, objects.select(split="test"), objects.categories(), 2, 7, 4, "loco")
    assert len({tuple(d.files()["pushpins"]) for d in whole}) > 1  # the draws differ from one another
    for row_draw, object_draw in zip(rows, whole, strict=True):
        for obj in ("breakfast_box", "pushpins"):
            files = object_draw.files()[obj]
            assert row_draw.files()[f"{obj}_logical"] == files == row_draw.files()[f"{obj}_structural"]
