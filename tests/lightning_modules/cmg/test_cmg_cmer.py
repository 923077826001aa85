"""CMER: occluded views, relevance from image-text matching, region selection and the relevance cache."""

from __future__ import annotations

import os

import torch

from lightning_modules.cmg.cmer import (
    RelevanceCache,
    fill_regions,
    keep_regions,
    occluded_views,
    occlusion_relevance,
    regions_to_grid,
)

GRID = 3


def region_means(images: torch.Tensor) -> torch.Tensor:
    """A constructed 'image encoder': the mean of channel 0 in each of the 3x3 regions, plus a bias."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(images[:, :1], GRID).flatten(1)
    return torch.cat([pooled, torch.ones(images.shape[0], 1)], dim=1)


def constructed_example() -> tuple[torch.Tensor, torch.Tensor]:
    """One 12x12 image whose text matches the centre region most (then the top-left one)."""
    image = torch.zeros(1, 3, 12, 12)
    image[:, 0, 4:8, 4:8] = 3.0  # region 4 (centre)
    image[:, 0, 0:4, 0:4] = 1.0  # region 0
    image[:, 0, 8:12, 8:12] = 2.0  # region 8: bright, but the text does not care about it
    text = torch.zeros(1, GRID * GRID + 1)
    text[0, 4], text[0, 0], text[0, -1] = 1.0, 0.5, 0.2
    return image, text


def test_cmer_keeps_the_region_whose_occlusion_lowers_the_match_most_and_removes_the_irrelevant():
    image, text = constructed_example()
    relevance = occlusion_relevance(image, text, region_means, grid=GRID, fill="mean", chunk_size=4)
    assert relevance.shape == (1, GRID * GRID)
    assert relevance.argmax().item() == 4  # occluding the centre lowers the match most
    assert relevance[0, 0] > 0 and relevance[0, 8] < 0  # region 8 only dilutes the match
    keep = keep_regions(relevance, keep_ratio=2 / 9)
    assert keep[0].nonzero().flatten().tolist() == [0, 4]
    cleaned = fill_regions(image, ~keep, GRID, "mean")
    assert cleaned[0, 0, 4:8, 4:8].eq(3.0).all() and cleaned[0, 0, 0:4, 0:4].eq(1.0).all()
    assert cleaned[0, 0, 8:12, 8:12].eq(0.0).all()  # the irrelevant region is discarded
    # threshold mode: the regions whose occlusion lowers the match by more than the threshold
    assert keep_regions(relevance, threshold=0.0)[0].nonzero().flatten().tolist() == [0, 4]
    assert keep_regions(relevance, threshold=10.0)[0].nonzero().flatten().tolist() == [4]  # never empty


def test_occluded_views_fill_exactly_one_region_each():
    images = torch.randn(2, 3, 12, 12)
    views = occluded_views(images, GRID, "image_mean").reshape(2, 1 + GRID * GRID, 3, 12, 12)
    torch.testing.assert_close(views[:, 0], images)
    changed = (views[:, 1:] != images[:, None]).any(dim=2)  # [2, 9, 12, 12]
    for k in range(GRID * GRID):
        expected = torch.zeros(12, 12, dtype=torch.bool)
        expected[4 * (k // 3) : 4 * (k // 3) + 4, 4 * (k % 3) : 4 * (k % 3) + 4] = True
        assert torch.equal(changed[0, k], expected)
    # view k + 1 fills region k (here region 5: middle row, right column) with the image's channel means
    torch.testing.assert_close(
        views[1, 6, :, 4:8, 8:12], images[1].mean(dim=(1, 2))[:, None, None].expand(3, 4, 4)
    )
    assert occluded_views(images, GRID, "mean")[1, :, :4, :4].eq(0).all()  # CLIP mean colour = 0


def test_chunking_does_not_change_relevance():
    images = torch.randn(3, 3, 12, 12)
    texts = torch.randn(3, GRID * GRID + 1)
    one = occlusion_relevance(images, texts, region_means, grid=GRID, chunk_size=1)
    all_at_once = occlusion_relevance(images, texts, region_means, grid=GRID, chunk_size=1000)
    torch.testing.assert_close(one, all_at_once)


def test_regions_map_to_the_same_area_on_pixels_and_tokens():
    keep = torch.tensor([[True, False, False, True]])
    pixels = regions_to_grid(keep, 2, (32, 32))
    tokens = regions_to_grid(keep, 2, (4, 4))
    torch.testing.assert_close(pixels[:, ::8, ::8], tokens)
    assert pixels[0, :16, :16].all() and not pixels[0, :16, 16:].any()


def test_relevance_cache_round_trip_and_keys(tmp_path):
    settings = {"backbone": "tiny", "grid": 2, "fill": "mean"}
    cache = RelevanceCache(settings, tmp_path)
    key = RelevanceCache.key("/data/a.png", "a photo")
    cache.put([key], torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    cache.save()
    again = RelevanceCache(settings, tmp_path)
    torch.testing.assert_close(again.get([key])[0], torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert again.get([RelevanceCache.key("/data/a.png", "another text")]) == [None]
    assert RelevanceCache({**settings, "grid": 3}, tmp_path).get([key]) == [None]
    memory = RelevanceCache(settings, None)
    memory.put([key], torch.zeros(1, 4))
    memory.save()
    assert memory.path is None and len(list(tmp_path.iterdir())) == 1


def test_relevance_cache_misses_an_image_replaced_at_the_same_path(tmp_path):
    """A dataset regenerated at the same root (issue 29's stale-cache fault) must not reuse the relevance of
    the image that was there before."""
    image = tmp_path / "data" / "a.png"
    image.parent.mkdir()
    image.write_bytes(b"first image")
    settings = {"backbone": "tiny", "grid": 2, "fill": "mean"}
    cache = RelevanceCache(settings, tmp_path / "cache")
    cache.put([RelevanceCache.key(str(image), "a photo")], torch.ones(1, 4))
    cache.save()
    again = RelevanceCache(settings, tmp_path / "cache")
    assert again.get([RelevanceCache.key(str(image), "a photo")])[0] is not None  # unchanged: a hit
    image.write_bytes(b"another image, longer")
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert again.get([RelevanceCache.key(str(image), "a photo")]) == [None]
