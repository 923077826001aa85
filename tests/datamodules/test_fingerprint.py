"""Data fingerprints (datamodules/fingerprint.py): what counts as other data, and what does not."""

from __future__ import annotations

import os
import shutil

from datamodules.fingerprint import changes, describe_changes, file_sha256, index_fingerprint
from datamodules.index import build_index


def _fingerprint(root, **kwargs):
    return index_fingerprint(build_index("synthetic", root).select(split="test"), **kwargs)


def test_files_added_removed_and_changed_are_named_and_a_touched_file_is_not(tmp_path, synthetic_pair):
    root = shutil.copytree(synthetic_pair[0], tmp_path / "data")
    before = _fingerprint(root)
    assert before["content"] == "sha256 of every file" and len(before["files"]) == 14 + 8
    mask = "disc/ground_truth/hole/000_mask.png"
    assert before["files"][mask][2] == file_sha256(root / mask)

    touched = root / "disc" / "test" / "good" / "000.png"
    touched.write_bytes(touched.read_bytes())  # same bytes, a new modification time
    os.utime(touched, ns=(1, 1))
    assert _fingerprint(root)["digest"] == before["digest"]
    assert not any(changes(before, _fingerprint(root)).values())

    (root / "disc" / "test" / "good" / "001.png").unlink()
    shutil.copyfile(
        root / "weave" / "test" / "good" / "000.png", root / "weave" / "test" / "good" / "009.png"
    )
    changed = root / "weave" / "test" / "good" / "002.png"
    changed.write_bytes(touched.read_bytes())
    after = _fingerprint(root)
    found = changes(before, after)
    assert found == {
        "added": ["weave/test/good/009.png"],
        "removed": ["disc/test/good/001.png"],
        "changed": ["weave/test/good/002.png"],
    }
    assert after["digest"] != before["digest"]
    assert describe_changes(found) == (
        "1 added (weave/test/good/009.png), 1 removed (disc/test/good/001.png), 1 changed (weave/test/good/002.png)"
    )


def test_images_of_a_large_set_are_compared_by_size_and_time_its_masks_by_content(tmp_path, synthetic_pair):
    root = shutil.copytree(synthetic_pair[0], tmp_path / "data")
    limit = sum(p.stat().st_size for p in root.glob("*/ground_truth/*/*.png"))  # the images total more
    before = _fingerprint(root, content_limit=limit)  # as if the images were too many to hash at every start
    assert before["content"] == "sha256 of masks; images by size and time"
    image, mask = "disc/test/good/000.png", "disc/ground_truth/hole/000_mask.png"
    assert before["files"][image][2] is None and before["files"][mask][2] is not None
    for name in (image, mask):
        os.utime(root / name, ns=(1, 1))  # touched: same size and content
    assert changes(before, _fingerprint(root, content_limit=limit))["changed"] == [image]
    assert _fingerprint(root, content_limit=0)["content"] == "every file by size and time"


def test_a_mask_folder_is_fingerprinted_by_its_region_files(fake_mvtec_loco):
    """MVTec LOCO's and AutoVI's masks are folders of region PNGs: the fingerprint (results.json's
    data_fingerprint of every target, the saved maps' dataset.json, a training source's checkpoint record)
    lists and hashes each region file, so it can be computed at all and a changed region is a change."""
    index = build_index("mvtec_loco", fake_mvtec_loco).select(split="test")
    before = index_fingerprint(index)
    region = "breakfast_box/ground_truth/logical_anomalies/000/001.png"
    regions = sorted(
        p.relative_to(fake_mvtec_loco).as_posix() for p in fake_mvtec_loco.rglob("ground_truth/*/*/*.png")
    )
    assert set(regions) <= set(before["files"]) and len(regions) == 10
    assert before["content"] == "sha256 of every file"
    assert before["files"][region][2] == file_sha256(fake_mvtec_loco / region)
    shutil.copyfile(
        fake_mvtec_loco / "breakfast_box/ground_truth/logical_anomalies/000/000.png", fake_mvtec_loco / region
    )
    assert changes(before, index_fingerprint(index))["changed"] == [region]
