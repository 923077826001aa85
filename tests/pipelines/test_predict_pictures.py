"""The pictures of `zsad predict` and the warnings about its colour range and thresholds, without a model."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps

from pipelines.predict_pictures import (
    CONTOUR_COLOUR,
    PANEL_HEIGHT,
    ColourRange,
    MapStatistics,
    contour,
    panel,
    run_warnings,
    tick_labels,
)
from pipelines.predict_thresholds import Thresholds, few_normals_warning


def test_the_panel_shows_the_image_the_heatmap_with_its_colorbar_and_the_outlined_region():
    image = np.full((64, 32, 3), 90, dtype=np.uint8)  # portrait: the tiles keep the aspect
    anomaly_map = np.full((64, 32), 0.42, dtype=np.float32)
    anomaly_map[20:40, 8:24] = 0.48  # a WinCLIP-like narrow range
    mask = anomaly_map >= 0.45
    colours = ColourRange.of_maps(0.42, 0.48, 1)
    drawn = panel(image, anomaly_map, colours, mask, 0.45, ["title"], "no pixel threshold")
    assert drawn.shape[0] > PANEL_HEIGHT and drawn.shape[2] == 3
    top = drawn.shape[0] - 8 - PANEL_HEIGHT  # tiles are PANEL_HEIGHT high above an 8 px margin
    width = PANEL_HEIGHT // 2
    heat = drawn[top : top + PANEL_HEIGHT, 16 + width : 16 + 2 * width]
    jet = (np.asarray(colormaps["jet"]([0.0, 1.0]))[:, :3] * 255).round()
    np.testing.assert_array_equal(heat[0, 0], jet[0])  # the lowest value: the colour map's first colour
    np.testing.assert_array_equal(heat[PANEL_HEIGHT // 2, width // 2], jet[1])  # the highest: its last
    bar = drawn[top : top + PANEL_HEIGHT, 16 + 2 * width + 4 + 7]
    np.testing.assert_array_equal(bar[0], jet[1])  # colorbar: high at the top
    np.testing.assert_array_equal(bar[-1], jet[0])
    outlined = drawn[top : top + PANEL_HEIGHT, -8 - width : -8]
    region = np.all(outlined == CONTOUR_COLOUR, axis=-1)
    rows, cols = np.nonzero(region)
    # the outline surrounds rows 20..39 and columns 8..23 of the map, scaled by 4 to the 256 px tile
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (79, 160, 31, 96)
    assert not region[PANEL_HEIGHT // 2, width // 2]  # an outline, not a filled region


def test_contour_and_ticks():
    mask = np.zeros((7, 7), dtype=bool)
    mask[2:5, 2:5] = True
    edge = contour(mask)
    assert edge[2, 2] and edge[1, 3] and not edge[0, 0]  # the region's border, thickened by one pixel
    assert [text for _, text in tick_labels(0.42, 0.48)] == ["0.420", "0.435", "0.450", "0.465", "0.480"]
    assert [text for _, text in tick_labels(0.6, 2.2)] == ["0.60", "1.00", "1.40", "1.80", "2.20"]


def test_warnings_name_what_does_not_fit():
    stats = MapStatistics()
    for low in (0.6, 1.5):
        stats.add_map(np.array([[low, 2.2]], dtype=np.float32), overlay_range=(0.0, 1.0), pixel=0.5)
    stats.n_images = stats.n_anomalous = 2
    total = MapStatistics.total([stats, MapStatistics()])  # a process without images changes nothing
    assert (total.low, total.high) == (np.float32(0.6), np.float32(2.2))
    assert (total.n_maps, total.n_outside, total.n_all_flagged) == (2, 3, 2)
    thresholds = Thresholds(image=0.1, pixel=0.5, source="values given")
    outside, white, labels = run_warnings(total, thresholds, ColourRange.given(0.0, 1.0))
    assert "the maps span 0.6..2.2, outside --overlay-range 0 1: 75.0% of the pixels" in outside
    assert white.startswith("every pixel of 2 of 2 maps is >= the pixel threshold 0.5")
    assert labels.startswith("all 2 images are labelled anomalous")
    assert run_warnings(total, Thresholds(), ColourRange.of_maps(0.6, 2.2, 2)) == []
    assert "on 4 normal images: fewer than 1/fpr = 100" in few_normals_warning(4, 0.01)[0]
    assert few_normals_warning(100, 0.01) == few_normals_warning(4, 0.0) == []
