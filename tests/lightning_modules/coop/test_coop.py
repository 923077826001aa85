"""CoOp: prompt construction, per-class texts, image loss, and training end to end with a frozen CLIP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from baselines_support import (
    one_torch_thread,  # noqa: F401 - autouse fixture
    tiny_backbone,
)

from lightning_modules.clip import PromptTextEncoder
from lightning_modules.coop import CoOp, CoOpConfig


def _tiny_coop(tiny_clip, **overrides) -> CoOp:
    model, tokenizer = tiny_clip
    torch.manual_seed(0)
    return CoOp(CoOpConfig(backbone=tiny_backbone(), context_length=3, **overrides), model, tokenizer)


def test_context_replaces_the_placeholders_of_every_class_prompt(tiny_clip):
    model, tokenizer = tiny_clip
    coop = _tiny_coop(tiny_clip)
    coop.set_classes(["disc", "metal nut"])
    rows = torch.arange(4)
    embeddings = coop.prompts(rows)
    token_ids = tokenizer(
        [
            "X X X normal disc.",
            "X X X anomalous disc.",
            "X X X normal metal nut.",
            "X X X anomalous metal nut.",
        ]
    )
    reference = PromptTextEncoder(model).embed(token_ids)[:, : embeddings.shape[1]]
    torch.testing.assert_close(embeddings[:, 0], reference[:, 0])  # start token
    torch.testing.assert_close(embeddings[:, 4:], reference[:, 4:])  # "<state> <class>." and the end token
    for row in range(4):
        torch.testing.assert_close(
            embeddings[row, 1:4], coop.prompts.context[0]
        )  # shared by classes and states


def test_class_texts_follow_each_images_category_and_carry_gradients(tiny_clip):
    coop = _tiny_coop(tiny_clip, separate_state_context=True)
    coop.set_classes(["disc", "metal nut", "weave"])
    everything = coop.class_text_for(torch.arange(3))
    batch = coop.class_text_for(torch.tensor([2, 0, 2]))
    torch.testing.assert_close(batch, everything[[2, 0, 2]])
    torch.testing.assert_close(batch.norm(dim=-1), torch.ones(3, 2))

    images = torch.randn(3, 3, 32, 32)
    labels = torch.tensor([1, 0, 0])
    logits = coop(images, torch.tensor([2, 0, 2]))
    with torch.no_grad():
        image = F.normalize(coop.clip.encode_image(images), dim=-1)
    torch.testing.assert_close(
        logits, torch.einsum("bd,bcd->bc", image, batch.detach()) / 0.01, atol=1e-4, rtol=1e-4
    )
    coop.loss(logits, labels).backward()
    assert coop.prompts.context.grad is not None and coop.prompts.context.grad.abs().sum() > 0
    assert [n for n, p in coop.named_parameters() if p.requires_grad] == ["prompts.context"]
