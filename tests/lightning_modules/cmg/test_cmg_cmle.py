"""CMLE: locally-linear weights from text embeddings and the structure loss on latent codes."""

from __future__ import annotations

import torch

from lightning_modules.cmg.cmle import GlobalStructure, batch_cmle_loss, cmle_loss, dense_weights, lle_weights


def _plane_points(n: int = 24, dim: int = 6, seed: int = 0) -> torch.Tensor:
    """Points on a 2-d affine plane in ``dim`` dimensions: each is an affine combination of its neighbours."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(n, 2, generator=g, dtype=torch.float64)
    return coords @ torch.randn(2, dim, generator=g, dtype=torch.float64) + torch.randn(
        dim, generator=g, dtype=torch.float64
    )


def test_lle_weights_reconstruct_the_embeddings_and_rows_sum_to_one():
    texts = _plane_points()
    idx, w = lle_weights(texts, k=4, reg=1e-9)
    assert idx.shape == w.shape == (24, 4)
    assert not (idx == torch.arange(24)[:, None]).any()  # never the sample itself
    torch.testing.assert_close(w.sum(dim=1), torch.ones(24, dtype=w.dtype))
    W = dense_weights(idx, w, 24)
    torch.testing.assert_close(W @ texts, texts, atol=1e-6, rtol=0)
    # the neighbours are the nearest ones
    dist = torch.cdist(texts, texts) + torch.eye(24, dtype=texts.dtype) * 1e9
    torch.testing.assert_close(dist.gather(1, idx).max(1).values, dist.sort(1).values[:, 3])


def test_identical_texts_get_uniform_weights():
    texts = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    idx, w = lle_weights(texts, k=3, reg=1e-3)
    torch.testing.assert_close(w, torch.full((8, 3), 1 / 3))
    assert ((idx < 4) == (torch.arange(8)[:, None] < 4)).all()  # same-text samples are the neighbours


def test_cmle_loss_is_zero_when_codes_follow_the_text_structure():
    texts = _plane_points()
    idx, w = lle_weights(texts, k=4, reg=1e-9)
    g = torch.Generator().manual_seed(1)
    codes = texts @ torch.randn(6, 3, generator=g, dtype=torch.float64) + 2.0  # any affine image of the texts
    assert cmle_loss(codes, codes[idx], w) < 1e-10
    random_codes = torch.randn(24, 3, generator=g, dtype=torch.float64)
    loss = cmle_loss(random_codes, random_codes[idx], w)
    assert loss > 1e-2
    # it is ||(I - W) Z||_F^2 / n
    W = dense_weights(idx, w, 24)
    expected = ((torch.eye(24, dtype=W.dtype) - W) @ random_codes).pow(2).sum() / 24
    torch.testing.assert_close(loss, expected)


def test_batch_loss_has_gradients_and_is_zero_for_a_single_sample():
    texts = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    codes = torch.randn(6, 4, requires_grad=True)
    loss = batch_cmle_loss(codes, texts, k=5, reg=1e-3)
    loss.backward()
    assert loss > 0 and codes.grad.abs().sum() > 0
    assert batch_cmle_loss(codes[:1], texts[:1], k=5, reg=1e-3) == 0


def test_global_structure_uses_the_bank_for_neighbours_outside_the_batch():
    texts = _plane_points(n=12).float()
    codes = torch.randn(12, 3)
    structure = GlobalStructure(texts, k=3, reg=1e-3, latent_dim=3)
    first, second = torch.arange(0, 6), torch.arange(6, 12)
    early = structure.loss(codes[first], first)  # only rows whose neighbours all lie in the batch count
    usable = (structure.idx[first] < 6).all(dim=1)
    expected_early = cmle_loss(
        codes[first][usable], codes[structure.idx[first][usable]], structure.weights[first][usable]
    )
    torch.testing.assert_close(early, expected_early)
    structure.loss(codes[second], second)
    # every code is in the bank now: a batch's loss is the full matrix's rows of that batch
    late = structure.loss(codes[first], first)
    torch.testing.assert_close(
        late, cmle_loss(codes[first], codes[structure.idx[first]], structure.weights[first])
    )
