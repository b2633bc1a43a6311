"""The interface every decoder implements, and the residual-callback convention.

The residual callback ``resid_fn(layer, h)`` sees ``h`` of shape [batch, seq, d_model] after
decoder block ``layer`` (FACTS.md's convention: ``blocks.{layer}.hook_resid_post``) and returns
the tensor to continue with (steering edits it, capture reads it). ``layer == EMBED_LAYER``
(-1) is the embedding output, read-only. Sessions are per request: the shared decoder holds only
read-only weights, so concurrent users never see each other's steering.

A session runs the prompt in one or more ``prefill`` calls over consecutive slices of its
positions, then one ``step`` per generated token. Slicing is what lets a caller release the
model between parts of a long prompt (``generation.generate_stream`` does, per chunk): each
call attends over the keys cached so far plus its own, so its memory grows with
``slice x keys``, never ``prompt x prompt``. A whole prompt in one call is the same computation
as before slicing existed, op for op; a sliced one agrees within float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

__all__ = [
    "EMBED_LAYER",
    "DecodeSession",
    "Decoder",
    "ResidFn",
    "no_edit",
    "positions_from_mask",
    "prefill_slice",
]

ResidFn = Callable[[int, torch.Tensor], torch.Tensor]
EMBED_LAYER = -1


def no_edit(_layer: int, h: torch.Tensor) -> torch.Tensor:
    return h


class DecodeSession(Protocol):
    def prefill(
        self,
        resid_fn: ResidFn = no_edit,
        all_logits: bool = False,
        start: int = 0,
        end: int | None = None,
    ) -> torch.Tensor:
        """Run prompt positions ``[start, end)`` (``end=None``: to the end of the prompt).

        Slices must come in order and without gaps: ``start`` is where the previous call ended
        (0 for the first); anything else raises ``ValueError``. ``resid_fn`` sees
        ``h`` [batch, end - start, d_model]. Returns the logits [batch, vocab] of position
        ``end - 1`` (with ``all_logits``: [batch, end - start, vocab]).
        """
        ...

    def step(self, tokens: torch.Tensor, resid_fn: ResidFn = no_edit) -> torch.Tensor:
        """Feed one token per row ([batch]) after the whole prompt ran; logits [batch, vocab]."""
        ...

    def close(self) -> None: ...


class Decoder(Protocol):
    name: str
    # Whether its sessions also have ``prefill_shared(end, resid_fn)``: the first ``end``
    # positions, identical in every row, run once for row 0 and fill every row's cache.
    shares_prefix: bool

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


def prefill_slice(done: int, width: int, start: int, end: int | None) -> int:
    """The checked end of a prefill slice ``[start, end)`` after ``done`` of ``width`` prompt
    positions ran: a session's cache is written in order, so a gap or a rerun would corrupt it."""
    stop = width if end is None else end
    if start != done or not start < stop <= width:
        raise ValueError(
            f"prefill slice [{start}, {stop}) does not continue the {done} of {width} prompt "
            "positions already run"
        )
    return stop
