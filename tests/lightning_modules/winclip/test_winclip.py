"""WinCLIP: batched window scores against a direct per-window computation, and an end-to-end run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from baselines_support import (
    FAST,
    check_results,
    one_torch_thread,  # noqa: F401 - autouse fixture
    tiny_backbone,
    write_method_experiment,
)

from lightning_modules.clip.windows import harmonic_window_aggregation, window_token_indices
from lightning_modules.winclip import WinCLIP, WinCLIPConfig
from pipelines.cli import main


def test_window_indices_are_row_major_unfold():
    windows = window_token_indices((3, 4), size=2)
    assert windows.tolist() == [
        [0, 1, 4, 5],
        [1, 2, 5, 6],
        [2, 3, 6, 7],
        [4, 5, 8, 9],
        [5, 6, 9, 10],
        [6, 7, 10, 11],
    ]
    assert window_token_indices((4, 4), size=3, stride=1).shape == (4, 9)
    with pytest.raises(ValueError, match="does not fit"):
        window_token_indices((2, 2), size=3)


def _direct_window_embedding(visual, image: torch.Tensor, rows: range, cols: range) -> torch.Tensor:
    """One window through open_clip's own modules: class token + the window's tokens, each with its position
    embedding, ln_pre, the transformer, ln_post of the class token, proj."""
    x = visual.conv1(image[None]).flatten(2).transpose(1, 2)[0]  # [N, width]
    grid = image.shape[-1] // visual.conv1.kernel_size[0]
    pos = visual.positional_embedding
    sequence = [visual.class_embedding + pos[0]]
    for r in rows:
        for c in cols:
            sequence.append(x[r * grid + c] + pos[1 + r * grid + c])
    sequence = visual.ln_pre(torch.stack(sequence)[None])
    out = visual.transformer(sequence if visual.transformer.batch_first else sequence.transpose(0, 1))
    out = out if visual.transformer.batch_first else out.transpose(0, 1)
    return F.normalize(visual.ln_post(out[0, 0]) @ visual.proj, dim=-1)


def test_window_scores_and_map_equal_a_direct_computation(tiny_clip):
    model, tokenizer = tiny_clip
    winclip = WinCLIP(
        WinCLIPConfig(backbone=tiny_backbone(32), window_chunk_size=5), model, tokenizer
    )  # 4x4 grid
    torch.manual_seed(1)
    winclip.class_text = F.normalize(torch.randn(2, 2, model.visual.proj.shape[1]), dim=-1)
    images = torch.randn(2, 3, 32, 32)
    category_ids = torch.tensor([1, 0])
    text = winclip.class_text[category_ids]
    scores, maps = winclip.predict(images, category_ids, (32, 32))
    batched = winclip.window_scores(images, text)

    def probability(embedding: torch.Tensor, b: int) -> torch.Tensor:
        return (text[b] @ embedding / 0.07).softmax(-1)[1]

    with torch.no_grad():
        image_scores = [
            probability(F.normalize(model.encode_image(images[b : b + 1])[0], dim=-1), b) for b in range(2)
        ]
        torch.testing.assert_close(scores, torch.stack(image_scores), atol=1e-5, rtol=1e-5)
        expected_map = torch.zeros(2, 4, 4)
        for b in range(2):
            per_scale = []
            for scale, size in enumerate((2, 3)):
                corners = [(r, c) for r in range(4 - size + 1) for c in range(4 - size + 1)]
                window_scores = [
                    probability(
                        _direct_window_embedding(
                            model.visual, images[b], range(r, r + size), range(c, c + size)
                        ),
                        b,
                    )
                    for r, c in corners
                ]
                torch.testing.assert_close(
                    batched[scale][b], torch.stack(window_scores), atol=1e-5, rtol=1e-5
                )
                patch = torch.zeros(4, 4)
                for pr in range(4):
                    for pc in range(4):
                        covering = [
                            s
                            for (r, c), s in zip(corners, window_scores, strict=True)
                            if r <= pr < r + size and c <= pc < c + size
                        ]
                        patch[pr, pc] = len(covering) / sum(1.0 / s for s in covering)
                per_scale.append(patch)
            expected_map[b] = 3.0 / (1.0 / per_scale[0] + 1.0 / per_scale[1] + 1.0 / image_scores[b])
    expected = F.interpolate(expected_map[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-5)


def test_harmonic_aggregation_counts_each_covering_window():
    windows = window_token_indices((2, 3), size=2)  # two windows: patches {0,1,3,4} and {1,2,4,5}
    scores = torch.tensor([[0.5, 0.25]])
    got = harmonic_window_aggregation(scores, windows, num_patches=6)
    torch.testing.assert_close(got, torch.tensor([[0.5, 2 / (2 + 4), 0.25, 0.5, 2 / (2 + 4), 0.25]]))


def test_winclip_runs_end_to_end(tmp_path, synthetic_pair):
    _, target = synthetic_pair
    experiment = write_method_experiment(tmp_path, "winclip_tiny", None, target)
    assert (
        main(["run", str(experiment), *FAST, f"run_dir={tmp_path / 'run'}", "method.backbone.image_size=48"])
        == 0
    )
    results = check_results(tmp_path / "run", {"ring", "cells"})
    assert results["image_size"] == 48


@pytest.mark.parametrize("normalize_each", [False, True])
def test_class_text_is_the_mean_of_raw_or_normalised_sentence_embeddings(tiny_clip, normalize_each):
    """Default (as anomalib's WinCLIP): mean of the raw sentence embeddings of a state, then normalised;
    the switch normalises each sentence embedding first. Reference: open_clip's encode_text, one sentence
    list per state, written out here."""
    from lightning_modules.clip.prompts import WINCLIP_TEMPLATES

    model, tokenizer = tiny_clip
    assert WinCLIPConfig().normalize_each_prompt is False
    winclip = WinCLIP(
        WinCLIPConfig(backbone=tiny_backbone(32), normalize_each_prompt=normalize_each), model, tokenizer
    )
    winclip.set_classes(["metal nut"])
    states = {
        "normal": ["{}", "flawless {}", "perfect {}", "unblemished {}"]
        + ["{} without flaw", "{} without defect", "{} without damage"],
        "anomalous": ["damaged {}", "{} with flaw", "{} with defect", "{} with damage"],
    }
    with torch.no_grad():
        for s, kind in enumerate(("normal", "anomalous")):
            sentences = [
                t.format(state.format("metal nut")) for state in states[kind] for t in WINCLIP_TEMPLATES
            ]
            embeddings = model.encode_text(tokenizer(sentences)).float()
            raw = F.normalize(embeddings.mean(dim=0), dim=-1)
            normalised = F.normalize(F.normalize(embeddings, dim=-1).mean(dim=0), dim=-1)
            expected = normalised if normalize_each else raw
            torch.testing.assert_close(winclip.class_text[0, s], expected, atol=2e-6, rtol=1e-5)
            assert (raw - normalised).abs().max() > 1e-4  # the switch matters
