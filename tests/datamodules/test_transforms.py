"""Images and masks on disk become the tensors each method's official code feeds its model.

References are written out here with PIL and numpy (AnomalyCLIP / VAND / AnoVL: ``transforms.Resize`` on
the PIL image, then ``convert("RGB")``, ``ToTensor``, ``Normalize``; masks ``convert("L") > 0`` as 0/255,
PIL bilinear, ``/ 255 > 0.5``) and with ``torch.nn.functional.interpolate`` (anomalib's WinCLIP resizes
the float tensor), independently of datamodules.transforms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from datamodules.config import DataConfig
from datamodules.datamodule import AnomalyDataModule
from datamodules.errors import ConfigError
from datamodules.images import open_image, open_mask
from datamodules.transforms import ImageMaskTransform, ImagePreprocessing, TransformSpec
from lightning_modules.registry import get_method

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
SIZE = 64  # model input; files are 150 x 100 (non-square, downscaled by 2.3 and 1.6)


def _textured(path: Path, mode: str = "RGB", seed: int = 0) -> Path:
    """Fine texture (noise on stripes): where antialiasing matters most."""
    rng = np.random.default_rng(seed)
    stripes = ((np.arange(150)[None, :] // 2) % 2 * 180).astype(np.float64)
    array = np.clip(stripes[..., None] + rng.normal(0, 40, (100, 150, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(array)
    if mode == "L":
        image = image.convert("L")
    elif mode == "P":
        image = image.quantize(16)
    elif mode == "RGBA":
        image.putalpha(Image.fromarray(rng.integers(0, 256, (100, 150), dtype=np.uint8)))
    elif mode == "I;16":
        image = Image.fromarray(array[..., 0].astype(np.uint16) * 257)
    image.save(path)
    return path


def _blob_mask(path: Path, colour: tuple[int, int, int] | None = None) -> Path:
    """An ellipse (edges at every sub-pixel phase), grey 255 or in ``colour``."""
    yy, xx = np.mgrid[:100, :150]
    inside = ((xx - 70) / 41.3) ** 2 + ((yy - 47) / 23.7) ** 2 < 1
    if colour is None:
        Image.fromarray(inside.astype(np.uint8) * 255).save(path)
    else:
        Image.fromarray((inside[..., None] * np.array(colour)).astype(np.uint8)).save(path)
    return path


def _normalised(rgb: np.ndarray) -> np.ndarray:
    """``ToTensor`` + ``Normalize`` in float32: ``(x / 255 - mean) / std``, as [3, H, W]."""
    return ((rgb.astype(np.float32) / np.float32(255) - MEAN) / STD).transpose(2, 0, 1)


def _official_pil_image(path: Path, resample: Image.Resampling) -> np.ndarray:
    """``Resize((S, S), interpolation)`` on the PIL image (PIL resampling), ``CenterCrop(S)`` (no-op),
    ``convert("RGB")``, ``ToTensor``, ``Normalize``."""
    resized = Image.open(path).resize((SIZE, SIZE), resample)
    return _normalised(np.asarray(resized.convert("RGB")))


def _official_pil_mask(path: Path, size: int = SIZE) -> np.ndarray:
    """``convert("L") > 0`` as 0/255, ``Resize((S, S))`` (PIL bilinear), ``ToTensor``, ``> 0.5``."""
    binary = Image.fromarray((np.asarray(Image.open(path).convert("L")) > 0).astype(np.uint8) * 255)
    return np.asarray(binary.resize((size, size), Image.Resampling.BILINEAR)) / 255.0 > 0.5


def _zsad(path: Path, mask: Path | None = None, size: int = SIZE, **preprocessing) -> tuple[np.ndarray, ...]:
    spec = TransformSpec(SIZE, size, ImagePreprocessing(**preprocessing))
    image, target = ImageMaskTransform(spec)(open_image(path), open_mask(mask) if mask else None)
    return image.numpy(), target.numpy()


def test_default_is_anomalyclip_bicubic_pil_resize_with_antialiasing(tmp_path: Path) -> None:
    path = _textured(tmp_path / "t.png")
    image, _ = _zsad(path)
    reference = _official_pil_image(path, Image.Resampling.BICUBIC)
    assert image.shape == (3, SIZE, SIZE) and np.abs(image - reference).max() <= 1e-6
    # the previous path (cv2 INTER_CUBIC, no antialiasing; torch's bicubic without antialias is its
    # float equivalent) is far from it on texture
    rgb = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)[None].float()
    aliased = F.interpolate(rgb, (SIZE, SIZE), mode="bicubic", antialias=False)[0].clamp(0, 255)
    old = (aliased / 255 - torch.from_numpy(MEAN)[:, None, None]) / torch.from_numpy(STD)[:, None, None]
    assert np.abs(old.numpy() - reference).mean() * STD.mean() * 255 > 5  # mean |diff| > 5 grey levels


def test_equals_the_official_torchvision_compositions(tmp_path: Path) -> None:
    """AnomalyCLIP's get_transform and target_transform as torchvision objects, applied to the files."""
    path, mask = _textured(tmp_path / "t.png"), _blob_mask(tmp_path / "m.png")
    preprocess = T.Compose(
        [
            T.Resize((SIZE, SIZE), interpolation=T.InterpolationMode.BICUBIC, antialias=None),
            T.CenterCrop((SIZE, SIZE)),
            lambda image: image.convert("RGB"),
            T.ToTensor(),
            T.Normalize(tuple(MEAN.tolist()), tuple(STD.tolist())),
        ]
    )
    target_transform = T.Compose([T.Resize((SIZE, SIZE)), T.CenterCrop(SIZE), T.ToTensor()])
    binary = Image.fromarray((np.array(Image.open(mask).convert("L")) > 0).astype(np.uint8) * 255, mode="L")
    official_mask = target_transform(binary)[0]
    official_mask[official_mask > 0.5], official_mask[official_mask <= 0.5] = 1, 0  # test.py
    image, target = _zsad(path, mask)
    assert np.abs(image - preprocess(Image.open(path)).numpy()).max() <= 1e-6
    assert (target == official_mask.numpy()).all()


def test_anovl_resizes_bilinear(tmp_path: Path) -> None:
    path = _textured(tmp_path / "t.png")
    image, _ = _zsad(path, interpolation="bilinear")
    assert np.abs(image - _official_pil_image(path, Image.Resampling.BILINEAR)).max() <= 1e-6
    assert np.abs(image - _official_pil_image(path, Image.Resampling.BICUBIC)).max() > 0.05


def test_anovl_vis_test_resizes_the_short_side_without_a_crop(tmp_path: Path) -> None:
    """vis_test.py's get_data_transforms as torchvision objects: Resize(S) (int: the short side; bilinear),
    no crop, on the image and on the mask; a normal image's mask is zeros of the image's shape."""
    path, mask = _textured(tmp_path / "t.png"), _blob_mask(tmp_path / "m.png")
    image_transform = T.Compose(
        [
            T.Resize(SIZE),
            lambda image: image.convert("RGB"),
            T.ToTensor(),
            T.Normalize(tuple(MEAN.tolist()), tuple(STD.tolist())),
        ]
    )
    binary = Image.fromarray((np.array(Image.open(mask).convert("L")) > 0).astype(np.uint8) * 255, mode="L")
    official_mask = T.Compose([T.Resize(SIZE), T.ToTensor()])(binary)[0] > 0.5
    image, target = _zsad(path, mask, interpolation="bilinear", resize="short_side")
    assert image.shape == (3, SIZE, 96)  # 150 x 100 -> int(64 * 150 / 100) x 64
    assert np.abs(image - image_transform(Image.open(path)).numpy()).max() <= 1e-6
    assert (target == official_mask.numpy()).all() and target.any()
    _, normal = _zsad(path, interpolation="bilinear", resize="short_side")
    assert normal.shape == (SIZE, 96) and not normal.any()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16"])
def test_the_file_mode_is_resized_before_conversion_to_rgb(tmp_path: Path, mode: str) -> None:
    """As torchvision on PIL: a grey image is resized grey, a palette one nearest (Pillow's rule for
    "P"), RGBA with premultiplied alpha, 16-bit in 16 bits then clipped at 255 by ``convert("RGB")``."""
    path = _textured(tmp_path / "t.png", mode)
    assert Image.open(path).mode == mode
    image, _ = _zsad(path)
    resample = Image.Resampling.NEAREST if mode == "P" else Image.Resampling.BICUBIC
    assert np.abs(image - _official_pil_image(path, resample)).max() <= 1e-6


def test_16_bit_images_can_be_scaled_instead_of_clipped(tmp_path: Path) -> None:
    path = _textured(tmp_path / "t.png", "I;16")
    image, _ = _zsad(path, high_bit_depth="scale")
    grey = np.rint(np.asarray(Image.open(path), dtype=np.float64) / 65535 * 255).astype(np.uint8)
    resized = Image.fromarray(grey).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    assert np.abs(image - _normalised(np.asarray(resized.convert("RGB")))).max() <= 1e-6


def test_winclip_and_anomalydino_resize_the_float_tensor_as_anomalib(tmp_path: Path) -> None:
    path, mask = _textured(tmp_path / "t.png"), _blob_mask(tmp_path / "m.png")
    image, target = _zsad(path, mask, resize_backend="tensor", mask_interpolation="nearest")
    rgb = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    resized = F.interpolate(rgb, (SIZE, SIZE), mode="bicubic", antialias=True, align_corners=False)[0]
    reference = (resized.numpy() - MEAN[:, None, None]) / STD[:, None, None]
    assert np.abs(image - reference).max() <= 1e-6
    assert np.abs(image - _official_pil_image(path, Image.Resampling.BICUBIC)).max() > 1e-3  # not PIL's
    binary = torch.from_numpy(np.array(Image.open(mask).convert("L")) > 0)[None, None].float()
    assert (target == (F.interpolate(binary, (SIZE, SIZE), mode="nearest")[0, 0].numpy() > 0.5)).all()
    # AnomalyDINO (anomalib): the same resize, DINOv2's ImageNet mean/std
    dino, _ = _zsad(path, resize_backend="tensor", normalization="imagenet")
    imagenet_mean, imagenet_std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    reference = (resized.numpy() - imagenet_mean[:, None, None]) / imagenet_std[:, None, None]
    assert np.abs(dino - reference).max() <= 1e-6


def test_masks_are_resized_bilinear_and_binarised_above_half(tmp_path: Path) -> None:
    path, mask = _textured(tmp_path / "t.png"), _blob_mask(tmp_path / "m.png")
    _, target = _zsad(path, mask)
    reference = _official_pil_mask(mask)
    assert target.dtype == np.float32 and set(np.unique(target)) == {0.0, 1.0}
    assert (target == reference).all()
    _, nearest = _zsad(path, mask, mask_interpolation="nearest")
    picked = np.asarray(Image.open(mask).resize((SIZE, SIZE), Image.Resampling.NEAREST)) > 0
    assert (nearest == picked).all()
    assert (nearest != reference).sum() > 0  # the edges move: PRO changes


def test_colour_masks_go_through_luma_and_eval_size_is_the_mask_size(tmp_path: Path) -> None:
    path, mask = (
        _textured(tmp_path / "t.png"),
        _blob_mask(tmp_path / "m.png", colour=(0, 0, 5)),
    )  # luma 0.57 -> 1
    _, target = _zsad(path, mask, size=40)
    assert target.shape == (40, 40) and target.any()
    assert (target == _official_pil_mask(mask, size=40)).all()
    _, dark = _zsad(path, _blob_mask(tmp_path / "d.png", colour=(1, 0, 0)))
    assert not dark.any()  # luma 0.299 rounds to 0: normal in the official code


def test_methods_declare_their_official_preprocessing() -> None:
    def declared(name: str) -> ImagePreprocessing:
        spec = get_method(name)
        return spec.preprocessing(spec.config_class(), "mvtec")

    for name in ("anomalyclip", "vand", "coop", "clip", "cmg"):
        assert declared(name) == ImagePreprocessing()
    assert declared("anovl").interpolation == declared("dual_image").interpolation == "bilinear"
    assert declared("winclip") == ImagePreprocessing(resize_backend="tensor", mask_interpolation="nearest")


def test_datamodule_applies_the_method_choice_and_the_data_config_overrides(fake_mvtec: Path) -> None:
    cfg = DataConfig(name="mvtec", root=str(fake_mvtec), num_workers=0)
    datamodule = AnomalyDataModule(
        cfg, image_size=SIZE, preprocessing=ImagePreprocessing(interpolation="bilinear")
    )
    dataset = datamodule._dataset("test", train=False)
    item = next(dataset[i] for i in range(len(dataset)) if dataset.records[i].mask_path is not None)
    record = dataset.records[int(item["sample_id"])]
    reference = _official_pil_image(record.image_path, Image.Resampling.BILINEAR)
    assert np.abs(item["image"].numpy() - reference).max() <= 1e-6
    assert (item["mask"].numpy() == _official_pil_mask(record.mask_path)).all()
    overridden = AnomalyDataModule(
        DataConfig(name="mvtec", root=str(fake_mvtec), interpolation="bicubic", mask_interpolation="nearest"),
        image_size=SIZE,
        preprocessing=ImagePreprocessing(interpolation="bilinear"),
    )
    assert overridden.preprocessing == ImagePreprocessing(mask_interpolation="nearest")
    with pytest.raises(ConfigError, match="antialias=False needs resize_backend='tensor'"):
        AnomalyDataModule(DataConfig(name="mvtec", root=str(fake_mvtec), antialias=False), image_size=SIZE)


def test_horizontal_flip_flips_image_and_mask_together(tmp_path: Path) -> None:
    path, mask = _textured(tmp_path / "t.png"), _blob_mask(tmp_path / "m.png")
    flip = ImageMaskTransform(TransformSpec(SIZE, SIZE, hflip_p=1.0))
    image, target = flip(open_image(path), open_mask(mask))
    mirrored = Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    reference = _normalised(np.asarray(mirrored.resize((SIZE, SIZE), Image.Resampling.BICUBIC)))
    assert np.abs(image.numpy() - reference).max() <= 1e-6
    mirrored_mask = tmp_path / "mm.png"
    Image.open(mask).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored_mask)
    assert (target.numpy() == _official_pil_mask(mirrored_mask)).all()
