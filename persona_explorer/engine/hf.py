"""The generic decoder: any architecture the TransformerLens bridge wraps.

It runs the bridge-wrapped HF forward with a ``DynamicCache`` and reads/edits the residual stream
through forward hooks on the bridge's blocks, added for each pass and removed after it (also when
the callback raises), so the shared model never keeps a steering hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from persona_explorer.engine.base import (
    EMBED_LAYER,
    ResidFn,
    no_edit,
    positions_from_mask,
    prefill_slice,
)

if TYPE_CHECKING:
    from persona_explorer.engine.model import LoadedModel

__all__ = ["HFDecoder"]


class HFDecoder:
    name = "hf"
    shares_prefix = False  # no prefill_shared: a shared prefix runs in every row

    def __init__(self, model: LoadedModel) -> None:
        # The parts it runs, not the LoadedModel: the decoder cache is keyed weakly by the model,
        # and a value that referred to its key would keep the model alive forever.
        self.hf_model = model.hf_model
        self.bridge = model.bridge
        self.device = model.device

    def session(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        row_invariant: bool = True,
    ) -> _HFSession:
        return _HFSession(self, input_ids, attention_mask)


class _HFSession:
    def __init__(
        self, dec: HFDecoder, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> None:
        from transformers import DynamicCache

        self.dec = dec
        self.input_ids = input_ids.to(dec.device)
        self.mask = attention_mask.to(dec.device).long()
        self.cache: Any = DynamicCache(config=dec.hf_model.config)
        self.positions = positions_from_mask(self.mask)
        self.done = 0  # prompt positions already in the cache

    @contextlib.contextmanager
    def _hooks(self, resid_fn: ResidFn) -> Iterator[None]:
        def make(layer: int) -> Callable[..., Any]:
            def hook(_mod: Any, _inp: Any, out: Any) -> Any:
                if isinstance(out, tuple):
                    return (resid_fn(layer, out[0]), *out[1:])
                return resid_fn(layer, out)

            return hook

        def read_embedding(_mod: Any, args: tuple, kwargs: dict) -> None:
            # The first block's input is the full embedding output (token + position
            # embeddings where the architecture has them), unlike the token embedding module.
            h = args[0] if args else kwargs.get("hidden_states")
            if isinstance(h, torch.Tensor):
                resid_fn(EMBED_LAYER, h)

        bridge = self.dec.bridge
        handles = [bridge.blocks[0].register_forward_pre_hook(read_embedding, with_kwargs=True)]
        try:
            handles += [blk.register_forward_hook(make(i)) for i, blk in enumerate(bridge.blocks)]
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _run(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, resid_fn: ResidFn
    ) -> torch.Tensor:
        """``mask`` [batch, cached + new] covers the cached keys and the new ones."""
        with self._hooks(resid_fn):
            out = self.dec.hf_model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=self.cache,
                use_cache=True,
            )
        return out.logits

    def prefill(
        self,
        resid_fn: ResidFn = no_edit,
        all_logits: bool = False,
        start: int = 0,
        end: int | None = None,
    ) -> torch.Tensor:
        width = self.input_ids.shape[1]
        end = prefill_slice(self.done, width, start, end)
        # The cache holds positions [0, start): HF continues it and builds the chunk x keys mask.
        logits = self._run(
            self.input_ids[:, start:end], self.positions[:, start:end], self.mask[:, :end], resid_fn
        )
        self.done = end
        if end == width:
            self.next_pos = self.positions[:, -1] + 1
        return logits if all_logits else logits[:, -1]

    def step(self, tokens: torch.Tensor, resid_fn: ResidFn = no_edit) -> torch.Tensor:
        if self.done < self.input_ids.shape[1]:
            raise RuntimeError("step() before the whole prompt was prefilled")
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        logits = self._run(tokens.view(-1, 1), self.next_pos[:, None], self.mask, resid_fn)
        self.next_pos = self.next_pos + 1
        return logits[:, -1]

    def close(self) -> None:
        self.cache = None
