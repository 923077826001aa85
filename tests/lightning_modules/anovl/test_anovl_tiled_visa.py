"""The pieces of AnoVL's tiled VisA protocol (the authors' vis_test.py; lightning_modules/anovl/tiled_visa.py)
that the parity fixture does not isolate: tiling and
merging geometry, the shapes it refuses, the adapter's initialisation and the TTA's reset rules."""

from __future__ import annotations

import pytest
import torch

from datamodules.errors import ZsadError
from lightning_modules.anovl import TTAConfig
from lightning_modules.anovl.tiled_visa import FeatureAdapter, TiledAdaptation, merge_tiles, tile_pair


@pytest.mark.parametrize("width", [6, 4, 8])
def test_tiles_of_an_image_merge_back_into_it(width):
    """Left tile = the first S columns, right tile = the last S; merging averages the overlap, so the
    tiles of one image give the image back (width S: both tiles are the image)."""
    image = torch.randn(1, 3, 4, width)
    tiles, offset = tile_pair(image)
    assert tiles.shape == (2, 3, 4, 4) and offset == width - 4
    torch.testing.assert_close(tiles[0], image[0, :, :, :4])
    torch.testing.assert_close(tiles[1], image[0, :, :, offset:])
    torch.testing.assert_close(merge_tiles(tiles, offset), image, rtol=0, atol=1e-7)


def test_the_overlap_is_the_mean_of_both_tiles():
    left, right = torch.zeros(1, 1, 2, 4), torch.ones(1, 1, 2, 4)
    merged = merge_tiles(torch.cat([left, right]), 1)[0, 0, 0]
    assert merged.tolist() == [0.0, 0.5, 0.5, 0.5, 1.0]


@pytest.mark.parametrize("shape", [(6, 4), (4, 9)])
def test_portrait_and_over_wide_images_are_refused(shape):
    """The authors' image_recover needs S <= W <= 2 S (it fails on anything else)."""
    with pytest.raises(ZsadError, match="visa_protocol=vl_test"):
        tile_pair(torch.zeros(1, 3, *shape))


def test_the_adapter_starts_as_nn_linear_does_from_the_images_generator():
    adapter = FeatureAdapter(16)
    adapter.reset_parameters(torch.Generator().manual_seed(3))
    weight = adapter.linear.weight.clone()
    assert weight.abs().max() <= 0.25 and adapter.linear.bias.abs().max() <= 0.25  # 1 / sqrt(16)
    adapter.reset_parameters(torch.Generator().manual_seed(3))
    torch.testing.assert_close(adapter.linear.weight, weight, rtol=0, atol=0)
    tokens = torch.randn(5, 16)
    expected = 0.5 * tokens + 0.5 * (
        tokens / tokens.norm(dim=-1, keepdim=True) @ weight.T + adapter.linear.bias
    )
    torch.testing.assert_close(adapter(tokens), expected)


@pytest.mark.parametrize(
    ("reset", "steps_after_two_images", "same_adapter"),
    [("image_keep_optimizer", 4, True), ("image", 2, False), ("category", 4, True)],
)
def test_reset_rules(reset, steps_after_two_images, same_adapter):
    """One AdamW per category whose step count carries over (the authors'), or a fresh one per image."""
    tta = TiledAdaptation(TTAConfig(steps=2, reset=reset))
    classes = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    tokens = torch.randn(2, 4, 8)
    adapters = []
    for seed in (1, 2):
        tta.adapt(tokens, classes, (2, 2), 4, 2, "a", torch.Generator().manual_seed(seed))
        adapters.append(tta._persistent["a"][0])
    optimizer = tta._persistent["a"][1]
    step = optimizer.state[next(iter(adapters[-1].parameters()))]["step"]
    assert int(step) == steps_after_two_images
    assert (adapters[0] is adapters[1]) == same_adapter
