"""CLIP text encoder that accepts learned prompt embeddings and per-block deep tokens.

Prompt learning methods (AnomalyCLIP, CoOp) replace some token embeddings of a tokenised template with
learned vectors; AnomalyCLIP additionally *overwrites* the hidden states at positions ``1..k`` of some
text blocks with learned deep tokens. The end-of-text position comes from the token ids (argmax, as CLIP)
or is given (prompts spliced in at run time, VCP-CLIP's image-conditioned class tokens).

VPT-deep text prompts (VCP-CLIP): ``inserted`` tokens go in right after the start token once the position
embeddings are added (they get none; the sequence keeps its length, its last ``k`` positions dropped),
deep tokens overwrite them before the later blocks, and they are gone again before pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class PromptTextEncoder(nn.Module):
    """Shares the text tower of an open_clip ``CLIP`` (or ``CustomTextCLIP``) model."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        tower = getattr(clip_model, "text", clip_model)
        if getattr(tower, "cls_emb", None) is not None:
            raise TypeError("text towers with an appended class token (CoCa) are not supported")
        pool = getattr(clip_model, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        if pool != "argmax":
            raise TypeError(f"text pooling '{pool}' is not supported; CLIP models pool at argmax(token ids)")
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        mask = getattr(clip_model, "attn_mask", getattr(tower, "attn_mask", None))
        self.register_buffer("attn_mask", mask, persistent=False)
        self.batch_first = getattr(self.transformer, "batch_first", True)
        self.checkpoint_blocks = False  # recompute each block's activations in the backward pass (memory)

    @property
    def width(self) -> int:
        return self.token_embedding.weight.shape[1]

    @property
    def depth(self) -> int:
        return len(self.transformer.resblocks)

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[n, L, width]`` of tokenised text (no position embedding)."""
        return self.token_embedding(token_ids)

    def forward(
        self,
        embeddings: torch.Tensor,
        token_ids: torch.Tensor | None,
        deep_tokens: Sequence[torch.Tensor] | None = None,
        deep_first_block: int = 2,
        inserted: torch.Tensor | None = None,
        eot_positions: torch.Tensor | None = None,
        final_norm: nn.Module | None = None,
    ) -> torch.Tensor:
        """Text features ``[n, output_dim]`` (not normalised).

        Args:
            embeddings: ``[n, L, width]`` token embeddings, possibly with learned vectors spliced in.
            token_ids: ``[n, L]`` the tokenised template; only used to find the end-of-text position (None
                with ``eot_positions``).
            deep_tokens: one tensor per block, ``[k, width]`` (shared by all ``n`` prompts) or ``[n, k, width]``
                (one copy per prompt, as AnomalyCLIP passes them so that each copy's gradient is rounded to
                float16 on its own); the j-th overwrites positions ``1..k`` of the hidden state entering block
                ``deep_first_block + j`` (1-indexed).
            inserted: ``[n, k, width]`` tokens inserted after the start token once the position embeddings
                are added (dropping the last ``k`` positions); pooling skips them.
            eot_positions: ``[n]`` end-of-text positions in ``embeddings`` (default: argmax of ``token_ids``).
            final_norm: applied to the pooled token before ``ln_final`` (VCP-CLIP's ``prompt_norm``).
        """
        n, length, _ = embeddings.shape
        x = embeddings + self.positional_embedding[:length].to(embeddings.dtype)
        shift = 0
        if inserted is not None:
            shift = inserted.shape[1]
            x = torch.cat([x[:, :1], inserted.to(x.dtype), x[:, 1 : length - shift]], dim=1)
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        deep_tokens = list(deep_tokens or ())
        if deep_tokens and deep_first_block + len(deep_tokens) - 1 > self.depth:
            raise ValueError(
                f"{len(deep_tokens)} deep token blocks from block {deep_first_block} exceed depth {self.depth}"
            )
        for i, block in enumerate(self.transformer.resblocks, start=1):
            j = i - deep_first_block
            if 0 <= j < len(deep_tokens):
                deep = deep_tokens[j].to(x.dtype).expand(n, -1, -1)
                x = torch.cat([x[:, :1], deep, x[:, 1 + deep.shape[1] :]], dim=1)
            x = self._block(block, x, mask)
        eot = token_ids.argmax(dim=-1) if eot_positions is None else eot_positions
        pooled = x[torch.arange(n, device=x.device), eot.to(x.device) + shift]
        if final_norm is not None:
            pooled = final_norm(pooled)
        pooled = self.ln_final(pooled)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection

    def _block(self, block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """One block; under ``checkpoint_blocks`` with gradients, its activations are recomputed in the
        backward pass instead of kept (same numbers, less memory: Bayes-PFL's many prompts per image)."""
        if self.checkpoint_blocks and torch.is_grad_enabled():
            return checkpoint(self._run_block, block, x, mask, use_reentrant=False)
        return self._run_block(block, x, mask)

    def _run_block(self, block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.batch_first:
            return block(x, attn_mask=mask)
        return block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)

    def encode(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Plain CLIP text features for tokenised text (hand-written prompts)."""
        return self(self.embed(token_ids), token_ids)


class LearnedContextPrompts(nn.Module):
    """A normal and an anomalous prompt whose first ``prompt_length`` words are learnable vectors
    (``normal_context``, ``abnormal_context``; normal init, std 0.02) right after the start token; the rest of
    each prompt (its words, end token, padding) stays CLIP's own token embeddings. ``texts``: the two prompts
    with ``{}`` where the learned words stand (AnomalyCLIP's ``"{} object."`` / ``"{} damaged object."``,
    AdaptCLIP's ``"{}."`` twice)."""

    def __init__(
        self, text_encoder: PromptTextEncoder, tokenizer, prompt_length: int, texts: tuple[str, str]
    ) -> None:
        super().__init__()
        width = text_encoder.width
        placeholder = " ".join(["X"] * prompt_length)
        token_ids = tokenizer([text.format(placeholder) for text in texts])
        with torch.no_grad():
            embeddings = text_encoder.embed(token_ids)
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("prefix", embeddings[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embeddings[:, 1 + prompt_length :].clone(), persistent=False)
        self.normal_context = nn.Parameter(torch.empty(prompt_length, width).normal_(std=0.02))
        self.abnormal_context = nn.Parameter(torch.empty(prompt_length, width).normal_(std=0.02))

    def forward(self) -> torch.Tensor:
        """Prompt embeddings ``[2, L, width]``: index 0 normal, 1 anomalous."""
        context = torch.stack([self.normal_context, self.abnormal_context]).to(self.prefix.dtype)
        return torch.cat([self.prefix, context, self.suffix], dim=1)
