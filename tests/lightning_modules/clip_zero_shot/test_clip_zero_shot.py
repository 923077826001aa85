"""CLIP and CLIP-AC: scores against plain open_clip, end-to-end `zsad run`, `zsad methods`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from baselines_support import (
    FAST,
    one_torch_thread,  # noqa: F401 - autouse fixture
    tiny_backbone,
    write_method_experiment,
)

from lightning_modules.clip_zero_shot import CLIPACConfig, CLIPConfig, CLIPZeroShot
from pipelines.cli import main


def test_clip_scores_and_maps_equal_open_clip(tiny_clip):
    model, tokenizer = tiny_clip
    clip = CLIPZeroShot(CLIPConfig(backbone=tiny_backbone()), model, tokenizer)
    clip.set_classes(["disc", "metal nut"])
    images = torch.randn(3, 3, 32, 32)
    category_ids = torch.tensor([1, 0, 1])
    scores, maps = clip.predict(images, category_ids, (40, 40))

    with torch.no_grad():
        text = F.normalize(
            model.encode_text(
                tokenizer(
                    [
                        "a photo of a normal disc.",
                        "a photo of an anomalous disc.",
                        "a photo of a normal metal nut.",
                        "a photo of an anomalous metal nut.",
                    ]
                )
            ),
            dim=-1,
        ).view(2, 2, -1)[category_ids]
        model.visual.output_tokens = True
        try:
            pooled, tokens = model.visual(images)  # tokens: ln_post(last block) without proj
        finally:
            model.visual.output_tokens = False
    image = F.normalize(pooled, dim=-1)
    expected_scores = (torch.einsum("bd,bcd->bc", image, text) / 0.07).softmax(-1)[:, 1]
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=1e-5)
    patch_probs = (
        torch.einsum("bnd,bcd->bnc", F.normalize(tokens @ model.visual.proj, dim=-1), text) / 0.07
    ).softmax(-1)
    grid = patch_probs[..., 1].reshape(3, 1, 4, 4)
    expected_maps = F.interpolate(grid, size=(40, 40), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(maps, expected_maps, atol=1e-5, rtol=1e-5)


def test_clip_ac_averages_normal_and_anomalous_over_clips_imagenet_templates(tiny_clip):
    """CLIP-AC's texts: "normal/anomalous [cls]" in each of OpenAI's 80 ImageNet templates, each sentence
    embedding normalised, averaged per class, normalised (CLIP's zero-shot recipe), written out here."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    model, tokenizer = tiny_clip
    clip_ac = CLIPZeroShot(CLIPACConfig(backbone=tiny_backbone()), model, tokenizer)
    clip_ac.set_classes(["metal nut"])
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    with torch.no_grad():
        for s, state in enumerate(("normal", "anomalous")):
            sentences = [template(f"{state} metal nut") for template in OPENAI_IMAGENET_TEMPLATES]
            assert sentences[0] == f"a bad photo of a {state} metal nut."
            expected = F.normalize(
                F.normalize(model.encode_text(tokenizer(sentences)), dim=-1).mean(0), dim=-1
            )
            torch.testing.assert_close(clip_ac.class_text[0, s], expected, atol=2e-6, rtol=1e-5)
    # the switch back to WinCLIP's compositional ensemble gives other texts, and scoring stays CLIP's
    winclip_texts = CLIPZeroShot(
        CLIPACConfig(backbone=tiny_backbone(), prompt_ensemble="winclip"), model, tokenizer
    )
    winclip_texts.set_classes(["metal nut"])
    assert not torch.allclose(winclip_texts.class_text, clip_ac.class_text)


def test_methods_lists_the_baselines(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if line and not line.startswith(" ")}
    for name in ("clip", "clip_ac", "winclip"):
        assert "training-free" in rows[name]
    assert "trains" in rows["vand"] and "masks" in rows["vand"]
    assert "trains" in rows["coop"] and "image labels" in rows["coop"]


def test_train_on_a_training_free_method_says_what_to_do_instead(tmp_path, synthetic_pair, capsys):
    """`zsad train` refuses before a run folder is made, on one line (tests/test_every_method.py runs them)."""
    _, target = synthetic_pair
    experiment = write_method_experiment(tmp_path, "clip_tiny", None, target)
    source = f"source={tmp_path / 'data' / 'tgt.yaml'}"
    assert main(["train", str(experiment), *FAST, f"run_dir={tmp_path / 'train'}", source]) == 2
    err = capsys.readouterr().err.strip()
    assert "training-free" in err and "\n" not in err
    assert not (tmp_path / "train").exists()  # refused before a run folder is made
