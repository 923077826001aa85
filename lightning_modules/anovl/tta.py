"""AnoVL's test-time adaptation (TTA) of a text adapter on the patch tokens, with synthetic anomalies.

The adapter maps a token onto the span of all ``2K`` prompt embeddings ``T_all``:
``A(f) = tanh(W f/|f| + b) @ T_all`` and ``f' = 0.5 f + 0.5 A(f)``; only ``W`` and ``b`` learn. Synthetic
anomalies in feature space are ``f~ = f + N(0, sigma^2)``; the loss per image is
``H(p(f')) + 0.5 [-log p_a(f~') - log p_n(f')]`` (entropy of the clean prediction, noisy -> abnormal,
clean -> normal), as in the authors' ``loss_func``. Optional extra targets
(:class:`SyntheticAnomalies`: tokens of synthesized anomalous images with per-patch targets) add a
cross-entropy term; the dual-image method supplies them.

Reset policies (``TTAConfig.reset``). The default, ``image_keep_optimizer``, is the authors' ``vl_test.py``:
one AdamW per category, created with the category's adapter; every image re-initialises the adapter's
weights, but the optimizer's moments and step count carry over, so images are adapted one after another
in the order they arrive (the test split's index order) and the module refuses DDP for it. ``image`` (a
deviation) adapts a batch *at once* with one independent adapter and optimizer per image: the batch loss is
the sum of the per-image losses and AdamW acts element-wise, so each image gets exactly the updates it
would get alone. Randomness (initialisation, noise) comes from one generator per image, seeded from the
image, so under ``image`` scores depend neither on batch composition nor on how the test set is split.

Gradients: only the adapter requires them; the CLIP stays frozen and its features enter as constants.
Lightning runs ``test`` under ``torch.inference_mode`` unless the Trainer is built with
``inference_mode=False`` (zsad's runner does so for methods whose spec has ``grad_at_test``); inference mode
cannot be left from inside, so TTA refuses to run there rather than silently doing nothing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from datamodules.errors import ConfigError, ZsadError
from lightning_modules.anovl.config import TTA_RESETS, TTAConfig
from lightning_modules.anovl.model import ABNORMAL, NORMAL, BatchText, class_probabilities


@dataclasses.dataclass
class SyntheticAnomalies:
    """Patch tokens of synthesized anomalous images and how abnormal each patch is meant to be."""

    tokens: torch.Tensor  # [B, S, N, D] (unnormalised, like the clean tokens)
    targets: torch.Tensor  # [B, S, N] in [0, 1]
    weight: float = 0.5


class TextAdapter(nn.Module):
    """``B`` independent adapters, one per image, stacked: ``weight [B, 2K, D]``, ``bias [B, 2K]``."""

    def __init__(self, prompts: torch.Tensor) -> None:
        super().__init__()
        b, k, d = prompts.shape
        self.register_buffer("prompts", prompts.detach().float(), persistent=False)
        self.weight = nn.Parameter(torch.zeros(b, k, d, device=prompts.device))
        self.bias = nn.Parameter(torch.zeros(b, k, device=prompts.device))

    @torch.no_grad()
    def reset_parameters(self, generators: Sequence[torch.Generator]) -> None:
        """``nn.Linear``'s default initialisation, ``U(-1/sqrt(D), 1/sqrt(D))``, drawn from each image's generator."""
        _, k, d = self.weight.shape
        bound = 1.0 / math.sqrt(d)
        for i, generator in enumerate(generators):
            self.weight[i] = ((torch.rand(k, d, generator=generator) * 2 - 1) * bound).to(self.weight)
            self.bias[i] = ((torch.rand(k, generator=generator) * 2 - 1) * bound).to(self.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``0.5 f + 0.5 A(f)`` for ``tokens [B, ..., D]``."""
        b, d = tokens.shape[0], tokens.shape[-1]
        flat = tokens.reshape(b, -1, d)
        unit = flat / flat.norm(dim=-1, keepdim=True)
        affinity = torch.tanh(torch.einsum("bnd,bkd->bnk", unit, self.weight) + self.bias[:, None])
        adapted = 0.5 * flat + 0.5 * torch.einsum("bnk,bkd->bnd", affinity, self.prompts)
        return adapted.reshape(tokens.shape)


def feature_noise(
    generators: Sequence[torch.Generator], shape: Sequence[int], std: float, device: torch.device
) -> torch.Tensor:
    """``[B, *shape]`` Gaussian noise, image ``i`` from generator ``i`` (drawn on the CPU: same numbers on any device)."""
    return torch.stack([torch.randn(*shape, generator=g) * std for g in generators]).to(device)


def check_tta_config(cfg: TTAConfig) -> None:
    """The ``method.tta`` settings every AnoVL adaptation (vl_test.py's and vis_test.py's) needs."""
    if cfg.reset not in TTA_RESETS:
        raise ConfigError(f"method.tta.reset must be one of {list(TTA_RESETS)}, got {cfg.reset!r}")
    if cfg.steps < 0 or cfg.noise_copies < 1:
        raise ConfigError(
            f"method.tta needs steps >= 0 and noise_copies >= 1, got {cfg.steps} and {cfg.noise_copies}"
        )


def require_autograd() -> None:
    """TTA cannot run under ``torch.inference_mode`` (it cannot be left from inside): refuse, never skip."""
    if torch.is_inference_mode_enabled():
        raise ZsadError(
            "test-time adaptation needs autograd but the test loop runs in inference mode: build the "
            "Trainer with inference_mode=False (zsad's runner does this when the method's spec says grad_at_test)"
        )


def category_adapter(
    kept: dict[str, tuple[nn.Module, torch.optim.Optimizer]],
    category: str,
    cfg: TTAConfig,
    build: Callable[[], nn.Module],
    initialise: Callable[[nn.Module], None],
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The adapter and AdamW an image of ``category`` adapts under ``cfg.reset``: built and initialised
    once per category and kept in ``kept`` (``image``: new for every image, replacing the kept one);
    ``image_keep_optimizer`` re-initialises the adapter per image while the optimizer's moments carry over."""
    state = None if cfg.reset == "image" else kept.get(category)
    if state is None:
        adapter = build()
        initialise(adapter)
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        state = kept[category] = (adapter, optimizer)
    elif cfg.reset == "image_keep_optimizer":
        initialise(state[0])
    return state


def tta_loss(
    adapter: TextAdapter,
    tokens: torch.Tensor,
    classes: torch.Tensor,
    noise: torch.Tensor,
    cfg: TTAConfig,
    temperature: float = 1.0,
    synthetic: SyntheticAnomalies | None = None,
) -> torch.Tensor:
    """Per-image loss ``[B]``: ``tokens [B, N, D]``, ``noise [B, M, N, D]``, ``classes [B, 2, D]``."""
    log_clean = class_probabilities(adapter(tokens), classes, temperature)  # [B, N, 2]
    log_noisy = class_probabilities(adapter(tokens[:, None] + noise), classes, temperature)  # [B, M, N, 2]
    entropy = -(log_clean.exp() * log_clean).sum(dim=-1).mean(dim=-1)
    hard = -log_noisy[..., ABNORMAL].mean(dim=(1, 2)) - log_clean[..., NORMAL].mean(dim=-1)
    loss = cfg.entropy_weight * entropy + cfg.hard_weight * hard
    if synthetic is not None:
        log_syn = class_probabilities(adapter(synthetic.tokens), classes, temperature)  # [B, S, N, 2]
        t = synthetic.targets.to(log_syn.dtype)
        cross_entropy = -(t * log_syn[..., ABNORMAL] + (1 - t) * log_syn[..., NORMAL]).mean(dim=(1, 2))
        loss = loss + synthetic.weight * cross_entropy
    return loss


def run_steps(
    adapter: TextAdapter,
    optimizer: torch.optim.Optimizer,
    tokens: torch.Tensor,
    classes: torch.Tensor,
    generators: Sequence[torch.Generator],
    cfg: TTAConfig,
    temperature: float = 1.0,
    synthetic: SyntheticAnomalies | None = None,
) -> list[torch.Tensor]:
    """``cfg.steps`` AdamW steps on the summed per-image losses; returns each step's losses ``[B]``."""
    history = []
    with torch.enable_grad():
        for _ in range(cfg.steps):
            noise = feature_noise(
                generators, (cfg.noise_copies, *tokens.shape[1:]), cfg.noise_std, tokens.device
            )
            loss = tta_loss(adapter, tokens, classes, noise, cfg, temperature, synthetic)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            history.append(loss.detach())
    return history


class TestTimeAdaptation:
    """Runs TTA per batch under a reset policy (``TTAConfig.reset``)."""

    __test__ = False  # not a pytest test class

    def __init__(self, cfg: TTAConfig, temperature: float = 1.0) -> None:
        check_tta_config(cfg)
        self.cfg = cfg
        self.temperature = temperature
        self._persistent: dict[str, tuple[TextAdapter, torch.optim.Optimizer]] = {}
        self.last_losses: list[torch.Tensor] = []  # per step, [B]: for logging and tests

    def reset(self) -> None:
        """Forget adapters kept across images (a new test epoch or dataset)."""
        self._persistent.clear()

    def adapt(
        self,
        tokens: torch.Tensor,
        text: BatchText,
        seeds: Sequence[int],
        categories: Sequence[str],
        synthetic: SyntheticAnomalies | None = None,
    ) -> torch.Tensor:
        """Adapted tokens ``[B, N, D]`` (no gradient attached)."""
        require_autograd()
        if len(seeds) != tokens.shape[0]:
            raise ValueError(f"TTA needs one seed per image, got {len(seeds)} for {tokens.shape[0]} images")
        tokens = tokens.detach().float()
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        if self.cfg.reset == "image":
            adapter, optimizer = category_adapter(
                {}, "", self.cfg, lambda: TextAdapter(text.prompts), lambda a: a.reset_parameters(generators)
            )
            self.last_losses = run_steps(
                adapter,
                optimizer,
                tokens,
                text.classes,
                generators,
                self.cfg,
                self.temperature,
                synthetic,
            )
            with torch.no_grad():
                return adapter(tokens)
        return self._adapt_sequentially(tokens, text, generators, categories, synthetic)

    def _adapt_sequentially(
        self,
        tokens: torch.Tensor,
        text: BatchText,
        generators: Sequence[torch.Generator],
        categories: Sequence[str],
        synthetic: SyntheticAnomalies | None,
    ) -> torch.Tensor:
        """Adapters kept per category: images one after another, in the order they arrive."""
        out, losses = [], []
        for i, generator in enumerate(generators):
            one = slice(i, i + 1)
            adapter, optimizer = category_adapter(
                self._persistent,
                categories[i],
                self.cfg,
                lambda one=one: TextAdapter(text.prompts[one]),
                lambda a, generator=generator: a.reset_parameters([generator]),
            )
            part = (
                None
                if synthetic is None
                else dataclasses.replace(
                    synthetic, tokens=synthetic.tokens[one], targets=synthetic.targets[one]
                )
            )
            losses.append(
                run_steps(
                    adapter,
                    optimizer,
                    tokens[one],
                    text.classes[one],
                    [generator],
                    self.cfg,
                    self.temperature,
                    part,
                )
            )
            with torch.no_grad():
                out.append(adapter(tokens[one]))
        self.last_losses = [torch.cat(step) for step in zip(*losses, strict=True)]
        return torch.cat(out)
