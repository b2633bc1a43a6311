"""The interface every decoder implements, and the residual-callback convention.

The residual callback ``resid_fn(layer, h)`` sees ``h`` of shape [batch, seq, d_model] after
decoder block ``layer`` (FACTS.md's convention: ``blocks.{layer}.hook_resid_post``) and returns
the tensor to continue with (steering edits it, capture reads it). ``layer == EMBED_LAYER``
(-1) is the embedding output, read-only. Sessions are per request: the shared decoder holds only
read-only weights, so concurrent users never see each other's steering.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

__all__ = ["EMBED_LAYER", "DecodeSession", "Decoder", "ResidFn", "no_edit", "positions_from_mask"]

ResidFn = Callable[[int, torch.Tensor], torch.Tensor]
EMBED_LAYER = -1


def no_edit(_layer: int, h: torch.Tensor) -> torch.Tensor:
    return h


class DecodeSession(Protocol):
    def prefill(self, resid_fn: ResidFn = no_edit, all_logits: bool = False) -> torch.Tensor:
        """Run the prompt; logits [batch, vocab] of the last position (or [batch, seq, vocab])."""
        ...

    def step(self, tokens: torch.Tensor, resid_fn: ResidFn = no_edit) -> torch.Tensor:
        """Feed one token per row ([batch]); logits [batch, vocab]."""
        ...

    def close(self) -> None: ...


class Decoder(Protocol):
    name: str

    def session(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        row_invariant: bool = True,
    ) -> DecodeSession:
        """``input_ids``/``attention_mask``: [batch, seq], left-padded.

        ``row_invariant``: identical rows must give bit-identical results (side by side: a
        strength-0 row equals the baseline), at some cost in speed where a kernel is not.
        """
        ...


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Rotary positions that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
