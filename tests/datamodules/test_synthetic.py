"""The synthetic benchmark is the demo's and the tests' data: its layout, masks and determinism must hold."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.errors import ZsadError
from datamodules.synthetic import (
    DEFECT_KINDS,
    MANIFEST_NAME,
    STYLES,
    SyntheticOutputError,
    SyntheticSummary,
    add_arguments,
    generate_synthetic_dataset,
    run,
)
from datamodules.synthetic_render import render_defect_pair, render_sample

SMALL = {"image_size": 32, "n_train": 2, "n_test_good": 3, "n_test_defect_per_kind": 2}


@pytest.fixture(scope="module")
def industrial(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSummary:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("industrial") / "data", seed=7)


@pytest.fixture(scope="module")
def vivid(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSummary:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("vivid") / "data", seed=7, style="vivid")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_defaults_give_four_categories_two_objects_two_textures(industrial: SyntheticSummary) -> None:
    assert len(industrial.categories) == 4
    assert sorted(industrial.kinds.values()) == ["object", "object", "texture", "texture"]
    assert industrial.image_size == 64
    assert industrial.n_anomalous == 4 * len(DEFECT_KINDS) * 2
    assert industrial.n_images == 4 * (4 + 6 + len(DEFECT_KINDS) * 2)


def test_layout_is_mvtec_with_masks_paired_by_name(industrial: SyntheticSummary) -> None:
    root = industrial.root
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(industrial.categories)
    for cat in industrial.categories:
        assert sorted(p.name for p in (root / cat).iterdir()) == ["ground_truth", "test", "train"]
        assert [p.name for p in (root / cat / "train").iterdir()] == ["good"]
        assert sorted(p.name for p in (root / cat / "test").iterdir()) == sorted(["good", *DEFECT_KINDS])
        assert sorted(p.name for p in (root / cat / "ground_truth").iterdir()) == sorted(DEFECT_KINDS)
        for split, n in industrial.counts[cat].items():
            assert len(list((root / cat / split).glob("*.png"))) == n > 0
        for defect in DEFECT_KINDS:
            images = sorted(p.stem for p in (root / cat / "test" / defect).glob("*.png"))
            masks = sorted(p.name for p in (root / cat / "ground_truth" / defect).iterdir())
            assert masks == [f"{stem}_mask.png" for stem in images]


def test_masks_are_binary_nonempty_and_image_sized(
    industrial: SyntheticSummary, vivid: SyntheticSummary
) -> None:
    for summary in (industrial, vivid):
        for cat in summary.categories:
            for defect in DEFECT_KINDS:
                for image_path in (summary.root / cat / "test" / defect).glob("*.png"):
                    image = _load(image_path)
                    mask = _load(summary.root / cat / "ground_truth" / defect / f"{image_path.stem}_mask.png")
                    assert image.shape == (summary.image_size, summary.image_size, 3)
                    assert image.dtype == np.uint8
                    assert mask.shape == image.shape[:2]
                    assert set(np.unique(mask)) == {0, 255}
                    # small, local defects as in MVTec: not the whole image
                    assert 0 < (mask > 0).mean() < 0.2


@pytest.mark.parametrize("style", sorted(STYLES))
def test_mask_is_exactly_the_changed_pixels_and_visible(style: str) -> None:
    for cat in STYLES[style].categories:
        for defect in DEFECT_KINDS:
            for index in range(3):
                clean, defective, mask = render_defect_pair(1, style, cat, f"test/{defect}", index, 48)
                assert defective is not None and mask is not None
                changed = (clean != defective).any(axis=-1)
                np.testing.assert_array_equal(mask, changed)
                contrast = np.abs(clean.astype(int) - defective.astype(int)).max(axis=-1)[mask].mean()
                assert contrast >= 20, (cat, defect, index, contrast)


def test_good_images_are_jittered_not_copies(industrial: SyntheticSummary) -> None:
    for cat in industrial.categories:
        images = [
            _load(p).astype(float) for p in sorted((industrial.root / cat / "train" / "good").glob("*.png"))
        ]
        for a, b in zip(images, images[1:], strict=False):
            assert np.abs(a - b).mean() > 2.0


@pytest.mark.parametrize("style", sorted(STYLES))
def test_mean_brightness_does_not_give_the_anomalies_away(style: str) -> None:
    """A detector must look at local structure; global brightness should sit near chance."""
    for cat in STYLES[style].categories:
        good = np.array([render_sample(2, style, cat, "test/good", i, 32)[0].mean() for i in range(24)])
        bad = np.array(
            [
                render_sample(2, style, cat, f"test/{d}", i, 32)[0].mean()
                for d in DEFECT_KINDS
                for i in range(6)
            ]
        )
        ranks = np.concatenate([good, bad]).argsort().argsort() + 1
        auroc = (ranks[len(good) :].sum() - len(bad) * (len(bad) + 1) / 2) / (len(good) * len(bad))
        assert 0.2 < auroc < 0.8, (cat, auroc)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    a = generate_synthetic_dataset(tmp_path / "a", seed=3, **SMALL)
    b = generate_synthetic_dataset(tmp_path / "b", seed=3, **SMALL)
    c = generate_synthetic_dataset(tmp_path / "c", seed=4, **SMALL)
    files_a, files_b, files_c = _files(a.root), _files(b.root), _files(c.root)
    assert files_a == files_b
    assert files_a.keys() == files_c.keys()
    images = [k for k in files_a if k.endswith(".png") and "ground_truth" not in k]
    assert all(files_a[k] != files_c[k] for k in images)


def test_counts_of_one_split_do_not_change_other_splits(tmp_path: Path) -> None:
    """Each image has its own RNG stream, so asking for more train images keeps the test set fixed."""
    a = generate_synthetic_dataset(tmp_path / "a", seed=3, categories=["disc"], **SMALL)
    b = generate_synthetic_dataset(tmp_path / "b", seed=3, categories=["disc"], **(SMALL | {"n_train": 5}))
    files_a, files_b = _files(a.root), _files(b.root)
    assert all(files_a[k] == files_b[k] for k in files_a if "/test/" in k or "ground_truth" in k)


def test_styles_differ_in_colour_and_categories(
    industrial: SyntheticSummary, vivid: SyntheticSummary
) -> None:
    assert not set(industrial.categories) & set(vivid.categories)

    def chroma(summary: SyntheticSummary) -> float:
        values = []
        for cat in summary.categories:
            for path in (summary.root / cat / "test" / "good").glob("*.png"):
                image = _load(path).astype(float) / 255
                values.append((image.max(axis=-1) - image.min(axis=-1)).mean())
        return float(np.mean(values))

    assert chroma(industrial) < 0.1
    assert chroma(vivid) > chroma(industrial) + 0.15


def test_manifest_records_parameters_kinds_and_counts(industrial: SyntheticSummary) -> None:
    manifest = json.loads((industrial.root / MANIFEST_NAME).read_text())
    assert industrial.manifest_path == industrial.root / MANIFEST_NAME
    assert manifest["synthetic"] is True
    assert manifest["seed"] == 7
    assert manifest["style"] == "industrial"
    assert manifest["image_size"] == 64
    assert (manifest["n_train"], manifest["n_test_good"], manifest["n_test_defect_per_kind"]) == (4, 6, 2)
    assert manifest["defect_kinds"] == list(DEFECT_KINDS)
    assert sorted(manifest["categories"]) == sorted(industrial.categories)
    for cat, entry in manifest["categories"].items():
        assert entry["kind"] == industrial.kinds[cat] == STYLES["industrial"].categories[cat].kind
        assert entry["counts"] == industrial.counts[cat]
        for split, n in entry["counts"].items():
            assert len(list((industrial.root / cat / split).glob("*.png"))) == n


def test_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("real data lives here")
    with pytest.raises(SyntheticOutputError, match="--overwrite") as info:
        generate_synthetic_dataset(tmp_path, seed=0, **SMALL)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ZsadError)
    assert "\n" not in str(info.value)
    # --overwrite never deletes folders it did not write
    with pytest.raises(SyntheticOutputError, match=MANIFEST_NAME):
        generate_synthetic_dataset(tmp_path, seed=0, overwrite=True, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "real data lives here"


def test_overwrite_replaces_an_earlier_synthetic_dataset(tmp_path: Path) -> None:
    generate_synthetic_dataset(tmp_path / "d", seed=0, **SMALL)
    summary = generate_synthetic_dataset(
        tmp_path / "d", seed=0, style="vivid", categories=["ring"], overwrite=True, **SMALL
    )
    assert sorted(p.name for p in summary.root.iterdir()) == sorted([MANIFEST_NAME, "ring"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"style": "pastel"},
        {"categories": ["ring"]},  # a vivid category asked of the industrial style
        {"categories": []},
        {"image_size": 16},
        {"seed": -1},
        {"defect_kinds": ["crack"]},
    ],
)
def test_rejects_bad_parameters(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(SyntheticOutputError):
        generate_synthetic_dataset(tmp_path / "x", **({"seed": 0} | kwargs))
    assert not (tmp_path / "x").exists()


def test_cli_flags_write_the_requested_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "synth"
    argv = [
        "--out",
        str(out),
        "--seed",
        "5",
        "--style",
        "vivid",
        "--image-size",
        "32",
        "--categories",
        "ring,cells",
    ]
    argv += ["--n-train", "1", "--n-test-good", "2", "--n-defect", "1"]
    assert run(parser.parse_args(argv)) == 0
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert (manifest["seed"], manifest["style"], manifest["image_size"]) == (5, "vivid", 32)
    assert sorted(manifest["categories"]) == ["cells", "ring"]
    assert manifest["categories"]["ring"]["counts"]["test/hole"] == 1
    assert str(out) in capsys.readouterr().out
    with pytest.raises(SyntheticOutputError):
        run(parser.parse_args(argv))
    assert run(parser.parse_args([*argv, "--overwrite"])) == 0
