"""The switches of AnomalyDINO's authors' setting (configs/method/anomalydino_authors.yaml) against
independent references: cv2 and scipy for the map, PIL for the resize, numpy for the crop, the mask
morphology and the reference selection; the config composes and a wrong key is refused."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from baselines_support import one_torch_thread, tiny_dino_run  # noqa: F401 (autouse: one torch thread)
from PIL import Image
from scipy import ndimage

from datamodules.errors import ConfigError, ZsadError
from datamodules.index import DatasetIndex, SampleRecord
from datamodules.references import draw_references, rotations
from datamodules.transforms import ImageMaskTransform, TransformSpec
from lightning_modules.anomalydino.config import AnomalyDINOConfig
from lightning_modules.anomalydino.masking import dilate_close
from lightning_modules.anomalydino.model import AnomalyDINO
from lightning_modules.anomalydino.spec import preprocessing
from lightning_modules.dino.config import DinoBackboneConfig
from lightning_modules.dino.encoder import DinoEncoder, offset_resample


def authors_model(**overrides) -> AnomalyDINO:
    torch.manual_seed(0)
    backbone = DinoBackboneConfig(
        name="zsad-tiny-dinov2",
        pretrained=None,
        image_size=42,
        crop="top_left",
        any_aspect=True,
        interpolate_offset=0.1,
    )
    settings = {"preprocessing": "authors", "map_resize": "bilinear", "gaussian": "scipy", **overrides}
    cfg = AnomalyDINOConfig(backbone=backbone, **settings)
    return AnomalyDINO(cfg)


def test_the_map_is_cv2s_bilinear_resize_to_the_mask_size_then_scipys_gaussian_filter():
    model = authors_model()
    distances = torch.rand(
        2, 3 * 4, dtype=torch.float32
    )  # a 3 x 4 grid of 56 x 42 px inputs (+ 5, 3 cropped)
    maps = model.anomaly_maps(distances, (47, 61), (70, 93))
    for d, m in zip(distances.double().numpy(), maps.numpy(), strict=True):
        resized = cv2.resize(d.reshape(3, 4), (93, 70), interpolation=cv2.INTER_LINEAR)
        expected = ndimage.gaussian_filter(resized, sigma=4)  # mode 'reflect', truncate 4: their dists2map
        np.testing.assert_allclose(m, expected, atol=1e-6)
    torch_reflect = authors_model(gaussian="anomalib").anomaly_maps(distances, (47, 61), (70, 93))
    # anomalib's blur (torch's 'reflect': the edge sample not repeated, a 33 px kernel) is 50x off
    assert (torch_reflect - maps).abs().max() > 5e-5


def test_top_left_crop_drops_the_last_rows_and_columns_and_any_aspect_takes_non_square_inputs():
    model = authors_model()
    images = torch.randn(1, 3, 47, 61)
    cropped, pads = model.encoder.crop(images)
    assert pads == (0, 5, 0, 5) and torch.equal(cropped, images[..., :42, :56])
    tokens = model.encoder(images)
    assert tokens.shape == (1, 3 * 4, 32)
    assert model.encoder.grid_of((47, 61)) == (3, 4)
    centre = DinoEncoder(DinoBackboneConfig(name="zsad-tiny-dinov2", pretrained=None, image_size=42))
    assert centre.crop_pads((47, 61)) == (2, 3, 2, 3)


def test_the_non_square_position_embedding_follows_dinov2s_scale_factors_per_axis():
    pos = torch.randn(1, 1 + 37 * 37, 8)
    out = offset_resample(pos, (3, 4), (37, 37), 1, 0.1)
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    rows = torch.nn.functional.interpolate(grid, scale_factor=(3.1 / 37, 4.1 / 37), mode="bicubic")
    assert out.shape == (1, 1 + 12, 8)
    torch.testing.assert_close(out[:, 1:], rows.permute(0, 2, 3, 1).reshape(1, 12, 8))
    assert torch.equal(offset_resample(pos, 37, (37, 37), 1, 0.1), pos)  # the native grid: unchanged


def test_raster_morphology_dilates_along_row_major_order_across_row_ends():
    mask = np.zeros((3, 4), bool)
    mask[0, 3] = True  # last patch of the first row
    grid, raster = dilate_close(mask, "grid"), dilate_close(mask, "raster")
    # on the grid: the 2 x 2 corner, and the closing keeps row 2 (cv2's erosion treats outside as set)
    assert grid.tolist() == [[False, False, True, True]] * 3
    flat = np.zeros(12, bool)
    flat[2:5] = True  # the previous and the next patch in row-major order: (0, 2) and (1, 0)
    assert raster.reshape(-1).tolist() == flat.tolist()


def test_unmasked_references_keep_every_patch_while_test_images_stay_masked():
    model = authors_model(masking=True, mask_references=False)
    model.set_masked_categories([0])
    references = torch.randn(2, 3, 42, 56)
    model.set_references(0, references)  # the tiny model's features are below masking's threshold ...
    assert model.memory[0].shape == (2 * 12, 32)  # ... yet every reference patch is kept
    scores, maps = model.predict(references, torch.tensor([0, 0]), (42, 56))
    assert scores.abs().max() == 0 and maps.abs().max() == 0  # test images: every patch masked, score 0
    masked = authors_model(masking=True, mask_references=True)  # anomalib's: references masked too
    masked.set_masked_categories([0])
    with pytest.raises(ZsadError, match="no foreground patch"):
        masked.set_references(0, references)


def test_the_authors_preprocessing_is_pil_bicubic_of_the_short_side_and_masks_stay_at_file_size():
    cfg = AnomalyDINOConfig(preprocessing="authors")
    transform = ImageMaskTransform(TransformSpec(448, 448, preprocessing(cfg, "mvtec")))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8))
    mask = Image.fromarray((rng.random((300, 500)) > 0.5).astype(np.uint8) * 255)
    tensor, resized_mask = transform(image, mask)
    expected = (
        np.asarray(image.resize((746, 448), Image.Resampling.BICUBIC), np.float32) / 255
    )  # int(448*5/3)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(tensor.permute(1, 2, 0).numpy(), (expected - mean) / std, atol=1e-5)
    assert torch.equal(resized_mask, torch.from_numpy(np.asarray(mask) > 0).float())
    _, normal_mask = transform(image, None)
    assert normal_mask.shape == (300, 500) and normal_mask.sum() == 0
    grey = Image.fromarray(
        rng.integers(0, 256, (300, 500), dtype=np.uint8)
    )  # cv2 IMREAD_COLOR: 3 equal channels
    torch.testing.assert_close(transform.image(grey), transform.image(grey.convert("RGB")))


def test_rotations_are_cv2s_about_the_image_centre_with_reflect_101_borders():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rotated = rotations(Image.fromarray(array), [0, 90, 180])
    assert np.array_equal(np.asarray(rotated[0]), array)
    # 180 degrees about (15, 10): pixel (y, x) comes from (20 - y, 30 - x); row/column 0 from the reflected border
    np.testing.assert_array_equal(np.asarray(rotated[2])[1:, 1:], array[::-1, ::-1][:-1, :-1])
    assert all(r.size == (30, 20) for r in rotated)


def _record(path, split):
    return SampleRecord("c", "c", path, None, 0, "good", split)


def _index(tmp_path, names):
    records = []
    for name in names:
        path = tmp_path / name
        Image.new("RGB", (4, 4), color=(len(records), 0, 0)).save(path)
        records.append(_record(path, "train"))
    test = tmp_path / "test.png"
    Image.new("RGB", (4, 4), color=(200, 0, 0)).save(test)
    return (
        DatasetIndex("t", tmp_path, records, has_masks=False),
        DatasetIndex("t", tmp_path, [_record(test, "test")], has_masks=False),
    )


def test_sorted_selection_takes_the_kth_block_of_sorted_files_whatever_the_seed(tmp_path):
    index, test = _index(tmp_path, ["b.png", "e.png", "a.png", "d.png", "c.png"])
    for seed in (0, 111):
        draws = draw_references(index, test, ["c"], 2, seed, 2, "t", selection="sorted")
        assert [[p.name for p in d.paths["c"]] for d in draws] == [["a.png", "b.png"], ["c.png", "d.png"]]
    with pytest.raises(ConfigError, match=r"from position 4 on \(protocol.selection=sorted\)"):
        draw_references(index, test, ["c"], 2, 0, 3, "t", selection="sorted")
    with pytest.raises(ConfigError, match="protocol.selection"):
        draw_references(index, test, ["c"], 2, 0, 1, "t", selection="first")


def test_the_authors_config_composes_and_a_wrong_key_is_refused():
    from pipelines.config import compose, to_object

    cfg = to_object(compose("anomalydino_authors_mvtec_visa"))
    m = cfg.method
    assert (m.backbone.image_size, m.backbone.crop, m.backbone.any_aspect) == (448, "top_left", True)
    assert (m.backbone.interpolate_offset, m.preprocessing, m.map_resize, m.gaussian) == (
        0.1,
        "authors",
        "bilinear",
        "scipy",
    )
    assert (m.masking, m.mask_references, m.mask_morphology, m.rotate_references) == (
        True,
        False,
        "raster",
        True,
    )
    assert m.rotation_angles == [0, 45, 90, 135, 180, 225, 270, 315] and m.rotated_categories is None
    assert {"capsule", "screw", "pcb1", "pipe_fryum"} <= set(m.masked_categories)
    assert "bottle" not in m.masked_categories
    assert (cfg.protocol.shots, cfg.protocol.draws, cfg.protocol.selection) == (1, 3, "sorted")
    with pytest.raises(ConfigError, match="rotate_refs"):
        compose("anomalydino_authors_mvtec_visa", ["method.rotate_refs=true"])
    with pytest.raises(ZsadError, match="any_aspect"):
        AnomalyDINO(AnomalyDINOConfig(preprocessing="authors"))
    with pytest.raises(ZsadError, match="map_resize"):
        AnomalyDINO(AnomalyDINOConfig(map_resize="nearest"))


def authors_run(tmp_path: Path, run_dir: Path, *extra: str) -> dict:
    """``zsad run`` with configs/method/anomalydino_authors.yaml on the tiny DINOv2 (2-shot, sorted
    references, maps saved) over a vivid synthetic target of 40 px files; its results.json."""
    protocol = ["protocol.shots=2", "protocol.selection=sorted"]
    return tiny_dino_run(tmp_path, run_dir, "anomalydino_authors", 3, *protocol, *extra)


def test_a_run_in_the_authors_setting_rotates_sorted_references_and_scores_at_the_files_size(tmp_path):
    """Sorted references (recorded), each category's memory from the rotated references, masks and maps at
    the files' size."""
    run_dir = tmp_path / "run"
    results = authors_run(tmp_path, run_dir)
    assert results["protocol"]["selection"] == "sorted"
    files = results["draws"][0]["references"]["synthetic"]["files"]
    assert files == {c: [f"{c}/train/good/000.png", f"{c}/train/good/001.png"] for c in ("cells", "ring")}
    assert results["draws"][0]["targets"]["synthetic"]["preprocessing"]["mask_size"] == "original"
    assert results["draws"][0]["targets"]["synthetic"]["eval_size"] == "original"  # no one evaluation size
    saved = np.load(run_dir / "draws" / "0" / "maps" / "synthetic" / "ring" / "test" / "hole" / "000.npy")
    assert saved.shape == (40, 40)  # the file's size, not the 42 px input


def test_the_authors_setting_on_two_processes_equals_one(tmp_path):
    """Batch 1, maps at each file's size, rotated references built on every process: a 2-process DDP
    evaluation gives the one-process results and image scores exactly (with one thread per process on
    both sides, as each spawned process has here: docs/cluster.md)."""
    one = authors_run(tmp_path, tmp_path / "one")
    two = authors_run(tmp_path, tmp_path / "two", "trainer.strategy=ddp_spawn", "trainer.devices=2")
    assert one["draws"] == two["draws"] and one["draws"][0]["targets"]["synthetic"]["categories"]
    scores = Path("draws") / "0" / "maps" / "synthetic" / "image_scores.csv"
    assert (tmp_path / "one" / scores).read_text() == (tmp_path / "two" / scores).read_text()


def test_the_module_hands_rotated_references_of_the_rotated_categories_only():
    from unittest import mock

    from lightning_modules.anomalydino.module import AnomalyDINOModule

    module = AnomalyDINOModule(authors_model(rotate_references=True, rotated_categories=["screw"]).cfg)
    calls = []

    class References:
        def images_by_size(self, category, angles=None):
            calls.append((category, angles))
            return [torch.randn(2 * (len(angles) if angles else 1), 3, 42, 42)]

    module.references = References()
    trainer = mock.Mock()
    trainer.datamodule.categories = ["bottle", "screw"]
    trainer.datamodule.category_folders = ["bottle", "screw"]
    with mock.patch.object(
        AnomalyDINOModule, "trainer", new_callable=mock.PropertyMock, return_value=trainer
    ):
        module.load_references()
    assert calls == [("bottle", None), ("screw", [0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0])]
    assert module.model.memory[0].shape[0] == 2 * 9 and module.model.memory[1].shape[0] == 16 * 9


def test_category_lists_name_folders_so_both_rows_of_a_loco_object_are_masked_and_rotated():
    """`masked_categories` / `rotated_categories` are folder names (the config says so): MVTec LOCO's rows
    `screw_bag_logical` and `screw_bag_structural` are the folder `screw_bag`, and both follow it; a row id
    names its row alone."""
    from unittest import mock

    from lightning_modules.anomalydino.module import AnomalyDINOModule

    rows = ["pushpins_logical", "pushpins_structural", "screw_bag_logical", "screw_bag_structural"]
    cfg = authors_model(
        masking=True,
        masked_categories=["screw_bag", "pushpins_logical"],
        rotate_references=True,
        rotated_categories=["screw_bag"],
    ).cfg
    module = AnomalyDINOModule(cfg)
    rotated = []

    class References:
        def images_by_size(self, category, angles=None):
            rotated.append(angles is not None)
            return [torch.randn(len(angles) if angles else 1, 3, 42, 42)]

    module.references = References()
    trainer = mock.Mock(is_global_zero=True)
    trainer.datamodule.categories = rows
    trainer.datamodule.category_folders = ["pushpins", "pushpins", "screw_bag", "screw_bag"]
    with mock.patch.object(
        AnomalyDINOModule, "trainer", new_callable=mock.PropertyMock, return_value=trainer
    ):
        module.use_datamodule_categories()
        assert module.model.masked == {0, 2, 3}
        module.model.set_masked_categories([])  # the random tiny model's masks keep no patch
        module.load_references()
    assert rotated == [False, False, True, True]


def test_references_of_several_sizes_are_each_encoded_at_their_own_size():
    """The authors encode each reference alone at its own aspect: references of two sizes (a category with
    portrait and landscape files) make one memory of every reference's patches, each image's patches as
    encoding it alone gives them."""
    model = authors_model().eval()
    wide, tall = torch.randn(2, 3, 42, 56), torch.randn(1, 3, 56, 42)
    model.set_references(0, [wide, tall])
    alone = torch.cat([model.encode(image[None])[0] for image in [*wide, *tall]])
    torch.testing.assert_close(model.memory[0], torch.nn.functional.normalize(alone, dim=-1))
    assert len(model.memory[0]) == 3 * model.encode(wide[:1]).shape[1]


def test_a_category_name_of_no_dataset_is_warned_once(caplog):
    """`rotated_categories=[hazelnut, screws]` would rotate hazelnut only, silently: a name that is no
    category here nor of any known dataset is warned (once); names of other datasets (the authors' preset
    lists MVTec AD's and VisA's together) and of the data at hand are not."""
    from unittest import mock

    from lightning_modules.anomalydino.module import AnomalyDINOModule

    cfg = authors_model(rotated_categories=["hazelnut", "screws", "candle", "my_part"]).cfg
    module = AnomalyDINOModule(cfg)
    trainer = mock.Mock(is_global_zero=True)
    trainer.datamodule.categories = ["hazelnut", "my_part"]
    trainer.datamodule.category_folders = ["hazelnut", "my_part"]
    with (
        mock.patch.object(AnomalyDINOModule, "trainer", new_callable=mock.PropertyMock, return_value=trainer),
        caplog.at_level("WARNING", logger="lightning_modules.anomalydino.module"),
    ):
        module.use_datamodule_categories()
        module.use_datamodule_categories()  # the next draw or target: not again
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "method.rotated_categories names screws," in warned[0]


def test_the_papers_numbers_stand_beside_the_authors_setting_only():
    """`zsad report --reference`: the paper measured 96.6 with the authors' code; a run of their preset gets
    it (weights by tag or Meta's file), anomalib's defaults or one switch off their value get none."""
    import dataclasses

    from lightning_modules.anomalydino.spec import ANOMALYDINO_PUBLISHED, published_for
    from lightning_modules.method_spec import flatten
    from pipelines.config import compose, to_object

    authors = flatten(dataclasses.asdict(to_object(compose("anomalydino_authors_mvtec_visa")).method))
    anomalib = flatten(dataclasses.asdict(to_object(compose("anomalydino_mvtec_visa")).method))
    assert published_for(authors) == ANOMALYDINO_PUBLISHED
    assert ANOMALYDINO_PUBLISHED.numbers(1)["mvtec"]["image_auroc"] == pytest.approx(0.966)
    assert published_for(anomalib) is None and published_for({}) is None
    assert published_for({**authors, "backbone.pretrained": "/w/dinov2_vits14_pretrain.pth"}) is not None
    assert published_for({**authors, "backbone.pretrained": "/w/other.pth"}) is None
    for key, value in (("mask_morphology", "grid"), ("gaussian", "anomalib"), ("rotate_references", False),
                       ("backbone.image_size", 672), ("masked_categories", ["capsule"]),
                       ("masked_categories", None)):  # fmt: skip
        assert published_for({**authors, key: value}) is None, key
