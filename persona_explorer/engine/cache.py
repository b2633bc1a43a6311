"""One decoder per loaded model: chosen and built on first use, freed with the model."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from persona_explorer.engine.base import Decoder
from persona_explorer.engine.fast_llama import FastLlamaDecoder, fast_path_problem
from persona_explorer.engine.hf import HFDecoder

if TYPE_CHECKING:
    from persona_explorer.engine.model import LoadedModel

__all__ = ["build_decoder", "decoder_for"]


@dataclass(frozen=True)
class _Built:
    decoder: Decoder
    prefer_fast: bool  # what was asked for, not what was built (an HF-only model gets HF anyway)
    use_kernel: bool


# One lock for every model: building is rare, and a build must be finished (weights packed, the
# kernel compiled) before anyone gets the decoder.
_LOCK = threading.Lock()
_DECODERS: weakref.WeakKeyDictionary[LoadedModel, _Built] = weakref.WeakKeyDictionary()


def build_decoder(model: LoadedModel, prefer_fast: bool = True, use_kernel: bool = True) -> Decoder:
    """A new decoder for ``model``: the fast one where it runs the model exactly, else HF's."""
    if prefer_fast and fast_path_problem(model) is None:
        return FastLlamaDecoder(model, use_kernel=use_kernel)
    return HFDecoder(model)


def decoder_for(
    model: LoadedModel, *, prefer_fast: bool | None = None, use_kernel: bool | None = None
) -> Decoder:
    """The decoder serving ``model``, built once (concurrent first calls build it once).

    A switch left as None comes from the model's :class:`~.model.DecoderSwitches` (the
    ``fast_decoder`` and ``decode_kernel`` settings of whoever loaded it), read when the decoder
    is built; nothing here reads the environment. Given explicitly (the app's settings, tests,
    the bench), a switch that differs from the one the cached decoder was built with replaces
    it for every later caller; sessions already open keep the decoder they started with.
    """
    with _LOCK:
        built = _DECODERS.get(model)
        if (
            built is not None
            and prefer_fast in (None, built.prefer_fast)
            and use_kernel in (None, built.use_kernel)
        ):
            return built.decoder
        switches = model.decoder_switches
        prefer_fast = switches.fast if prefer_fast is None else prefer_fast
        use_kernel = switches.kernel if use_kernel is None else use_kernel
        decoder = build_decoder(model, prefer_fast=prefer_fast, use_kernel=use_kernel)
        _DECODERS[model] = _Built(decoder, prefer_fast, use_kernel)
        return decoder
