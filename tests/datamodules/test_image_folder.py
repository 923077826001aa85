"""User images for `zsad predict`: files, folders and globs; any format and size; unreadable files named."""

from __future__ import annotations

import pytest
import torch
from conftest import write_image

from datamodules.errors import ZsadError
from datamodules.image_folder import ImageFolderDataModule, collect_images
from datamodules.images import open_image
from datamodules.transforms import ImageMaskTransform, ImagePreprocessing, TransformSpec


@pytest.fixture
def images(tmp_path):
    write_image(tmp_path / "a" / "one.png", size=(30, 20))
    write_image(tmp_path / "a" / "deep" / "two.JPG", size=(17, 41), mode="L")
    write_image(tmp_path / "b" / "three.tif", size=(25, 25), mode="I;16")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG garbage")
    return tmp_path


def test_files_folders_and_globs_give_each_image_once_with_its_size(images):
    found = collect_images([str(images / "a"), str(images / "b" / "*.tif"), str(images / "a" / "one.png")])
    assert [p.name for p in found.images] == ["two.JPG", "one.png", "three.tif"]
    assert found.sizes == [(41, 17), (20, 30), (25, 25)]  # (height, width)
    assert found.root == images.resolve() and found.unreadable == []


def test_unreadable_files_are_set_aside_with_the_reason_and_empty_inputs_are_errors(images):
    found = collect_images([str(images / "b")])
    assert [p.name for p in found.images] == ["three.tif"]
    ((path, reason),) = found.unreadable
    assert path.name == "broken.png" and "broken.png" in reason
    with pytest.raises(ZsadError, match="matches no image"):
        collect_images([str(images / "nothing" / "*.png")])
    with pytest.raises(ZsadError, match="readable image"):
        collect_images([str(images / "b" / "broken.png")])


def test_items_use_the_methods_preprocessing_and_a_truncated_file_becomes_a_flagged_placeholder(images):
    data = (images / "a" / "one.png").read_bytes()
    (images / "a" / "cut.png").write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    found = collect_images([str(images / "a")])
    preprocessing = ImagePreprocessing()
    datamodule = ImageFolderDataModule(found, 32, preprocessing, object_name="metal nut", num_workers=0)
    assert datamodule.categories == ["metal_nut"] and datamodule.full_index.prompt_names() == {
        "metal_nut": "metal nut"
    }
    items = {item["image_path"]: item for item in datamodule.predict_dataloader().dataset}
    cut = items[str((images / "a" / "cut.png").resolve())]
    assert "cut.png" in cut["error"] and cut["image"].shape == (3, 32, 32)
    one = items[str((images / "a" / "one.png").resolve())]
    assert one["error"] == "" and one["original_size"].tolist() == [20, 30] and not one["has_mask"]
    expected, _ = ImageMaskTransform(TransformSpec(32, 32, preprocessing))(
        open_image(images / "a" / "one.png"), None
    )
    assert torch.equal(one["image"], expected)


def test_a_truncated_file_is_a_placeholder_too_where_masks_keep_the_files_size(images):
    """Under AnomalyDINO's authors' preprocessing (short side, masks at the file's size) a truncated file
    stopped `zsad predict` with "mask_size='original' needs the image's size" instead of being set aside:
    its placeholder's mask now has the file's size, as a decoded image's."""
    data = (images / "a" / "one.png").read_bytes()
    (images / "a" / "cut.png").write_bytes(data[: len(data) // 2])
    found = collect_images([str(images / "a")])
    preprocessing = ImagePreprocessing(resize="short_side", mask_size="original", rgb_before_resize=True)
    datamodule = ImageFolderDataModule(found, 28, preprocessing, num_workers=0)
    items = {item["image_path"]: item for item in datamodule.predict_dataloader().dataset}
    cut = items[str((images / "a" / "cut.png").resolve())]
    assert "cut.png" in cut["error"] and cut["original_size"].tolist() == [20, 30]
    assert cut["mask"].shape == (20, 30) and not cut["mask"].any() and not cut["has_mask"]
    one = items[str((images / "a" / "one.png").resolve())]
    assert one["error"] == "" and one["mask"].shape == (20, 30) and one["image"].shape == (3, 28, 42)
