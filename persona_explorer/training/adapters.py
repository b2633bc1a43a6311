"""LoRA adapter folders: what fine-tuning saves, and the tuned model made from one.

A folder holds peft's own files (:data:`ADAPTER_CONFIG`, :data:`ADAPTER_WEIGHTS`) and
:data:`SETTINGS_FILE` (settings, data hash, losses, base model, seconds), which
:mod:`.finetune` writes. Both ends of a tuned model live here: :func:`fresh_hf` (a plain HF model
with a copy of the base model's weights: the shared model is never touched) and
:func:`tuned_model` (the merged model wrapped by ``engine.model.model_from_hf``, so steering,
projections and the fast decoder work on it unchanged).

:func:`load_tuned` rebuilds a tuned model from a saved directory; adapter files are hostile
input: only safetensors weights are read (never a pickle), their sizes are bounded
(``MAX_ADAPTER_*`` in :mod:`persona_explorer.core.limits`), and a directory made for another
model, or not made by peft's LoRA, is refused with a clear :class:`InputError`.

Imports: torch; peft, transformers and safetensors lazily; :mod:`persona_explorer.core`
(errors, limits) and the engine's model.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    MAX_ADAPTER_BYTES,
    MAX_ADAPTER_JSON_BYTES,
    MAX_FINETUNE_RANK,
    check_finite,
    check_int,
)
from persona_explorer.engine.model import LoadedModel, model_from_hf

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "FORMAT",
    "FORMAT_VERSION",
    "SETTINGS_FILE",
    "adapter_settings",
    "check_made_for",
    "fresh_hf",
    "load_tuned",
    "model_shape",
    "tuned_model",
]

SETTINGS_FILE = "persona_finetune.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORMAT = "persona-explorer-lora"  # SETTINGS_FILE's "format"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- model copies


def fresh_hf(base: LoadedModel) -> Any:
    """A plain HF model with a copy of the base model's weights (never the shared modules)."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(base.hf_model.config)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=base.dtype)
    result = hf.load_state_dict(dict(base.weights), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"weights do not fit a fresh model: {result}")
    return hf.to(base.device)


def model_shape(model: LoadedModel) -> dict[str, Any]:
    """What an adapter records of the model it was made for, and is checked against."""
    return {
        "model_id": model.model_id,
        "architecture": model.architecture,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "vocab_size": int(model.hf_model.config.vocab_size),
    }


def tuned_model(base: LoadedModel, merged: Any, adapter_dir: Path) -> LoadedModel:
    """The merged HF model of a saved adapter, wrapped for the engine (a new model id)."""
    merged.eval().requires_grad_(False)
    digest = _file_sha256(adapter_dir / ADAPTER_WEIGHTS)[:8]
    # The id names the adapter and its weights, so caches keyed by model id (own answers)
    # never mix two runs saved under the same name.
    model_id = f"{base.model_id}+lora:{adapter_dir.name}@{digest}"
    return model_from_hf(merged, _bridge_tokenizer(base.tokenizer), model_id=model_id)


def _bridge_tokenizer(tokenizer: Any) -> Any:
    """A copy of the base model's tokenizer that the bridge can boot with again.

    The bridge adjusts the tokenizer it is given; for one without a BOS token it sets BOS to
    EOS in place. Booting again, it would then try to reload that tokenizer by name to switch
    BOS on, which an in-memory tokenizer (no ``name_or_path``) cannot do: undo that one change.
    """
    tok = copy.deepcopy(tokenizer)
    in_memory = "name_or_path" not in getattr(tok, "init_kwargs", {})
    if in_memory and tok.bos_token is not None and tok.bos_token == tok.eos_token:
        tok.bos_token = None
    return tok


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- loading


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path.parent} has no {path.name}: it is not a saved adapter ({what}).")
    size = path.stat().st_size
    if size > MAX_ADAPTER_JSON_BYTES:
        raise InputError(f"{path} is {size:,} bytes; a {what} is far smaller. Not an adapter.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object.")
    return data


def _adapter_dir(adapter_dir: str | Path) -> Path:
    path = Path(adapter_dir).expanduser()
    if not path.is_dir():
        raise InputError(f"{path} is not a directory: give the directory finetune wrote.")
    return path


def adapter_settings(adapter_dir: str | Path) -> dict[str, Any]:
    """What :data:`SETTINGS_FILE` of a saved adapter records (settings, data hash, losses)."""
    path = _adapter_dir(adapter_dir)
    settings = _read_json(path / SETTINGS_FILE, "fine-tuning record")
    if settings.get("format") != FORMAT:
        raise InputError(f"{path / SETTINGS_FILE} was not written by Persona Explorer's finetune.")
    return settings


def _lora_config(path: Path) -> Any:
    """peft's LoraConfig from the fields we make and understand; anything else is refused."""
    from peft import LoraConfig

    raw = _read_json(path / ADAPTER_CONFIG, "LoRA adapter config")
    if raw.get("peft_type") != "LORA":
        raise InputError(
            f"{path} holds a {raw.get('peft_type')!r} adapter; only LoRA is supported."
        )
    targets = raw.get("target_modules")
    if isinstance(targets, list) and all(isinstance(t, str) and t.isidentifier() for t in targets):
        target_list = targets[:64]
    else:
        raise InputError(f"{path / ADAPTER_CONFIG}: target_modules must be a list of module names.")
    for key in (
        "modules_to_save",
        "layers_to_transform",
        "use_dora",
        "rank_pattern",
        "alpha_pattern",
    ):
        if raw.get(key):
            raise InputError(f"{path / ADAPTER_CONFIG}: {key} is not supported here.")
    if raw.get("bias", "none") != "none":
        raise InputError(f"{path / ADAPTER_CONFIG}: only bias 'none' is supported.")
    alpha = check_finite(raw.get("lora_alpha"), "lora_alpha")
    if not 0 < alpha <= 16 * MAX_FINETUNE_RANK:
        raise InputError(f"{path / ADAPTER_CONFIG}: lora_alpha {alpha:g} is out of range.")
    return LoraConfig(
        r=check_int(raw.get("r"), "LoRA rank", 1, MAX_FINETUNE_RANK),
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=target_list,
        bias="none",
        fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)),
        use_rslora=bool(raw.get("use_rslora", False)),
        task_type="CAUSAL_LM",
    )


def check_made_for(made: dict[str, Any], base: LoadedModel, where: str) -> None:
    """Refuse an adapter whose record (``base_model`` of :data:`SETTINGS_FILE`) names another
    model than ``base``: an adapter changes one model's weights and means nothing on another's."""
    have = model_shape(base)
    if any(made.get(k) != have[k] for k in ("architecture", "n_layers", "d_model", "vocab_size")):
        raise InputError(
            f"This adapter was made for {str(made.get('model_id'))[:200]!r} "
            f"({str(made.get('n_layers'))[:12]} layers, d_model {str(made.get('d_model'))[:12]}); "
            f"the loaded model {base.model_id!r} has {base.n_layers} layers and d_model "
            f"{base.d_model}. Load it on the model it was trained on ({where})."
        )
    if made.get("model_id") != base.model_id:
        raise InputError(
            f"This adapter was made for {str(made.get('model_id'))[:200]!r}, but "
            f"{base.model_id!r} is loaded: an adapter changes one model's weights and means "
            f"nothing on another's ({where})."
        )


def _check_base(path: Path, base: LoadedModel) -> None:
    if not (path / SETTINGS_FILE).exists():
        return  # a plain peft adapter: the tensor shapes below still have to fit
    made = adapter_settings(path).get("base_model")
    if not isinstance(made, dict):
        raise InputError(f"{path / SETTINGS_FILE} does not say which model it was made for.")
    check_made_for(made, base, str(path / SETTINGS_FILE))


def load_tuned(base: LoadedModel, adapter_dir: str | Path) -> LoadedModel:
    """The base model with a saved LoRA adapter merged in, as a new :class:`LoadedModel`."""
    from peft import get_peft_model
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _adapter_dir(adapter_dir)
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickled = (path / "adapter_model.bin").exists()
        raise InputError(
            f"{path} has no {ADAPTER_WEIGHTS}"
            + ("; pickled adapter_model.bin files are never loaded (unsafe)." if pickled else ".")
        )
    if weights.stat().st_size > MAX_ADAPTER_BYTES:
        raise InputError(f"{weights} is larger than {MAX_ADAPTER_BYTES / 2**30:.0f} GiB.")
    lora = _lora_config(path)
    _check_base(path, base)
    try:
        state = load_file(str(weights), device=str(base.device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{weights} is not a readable safetensors file ({exc}).") from None
    with torch.random.fork_rng(devices=[]):
        hf = fresh_hf(base)
        try:
            peft_model = get_peft_model(hf, lora)
        except ValueError as exc:
            raise InputError(f"{path}: the adapter's target modules do not fit: {exc}") from exc
    expected = get_peft_model_state_dict(peft_model)
    wrong = sorted(
        k
        for k in set(state) | set(expected)
        if k not in state or k not in expected or state[k].shape != expected[k].shape
    )
    if wrong:
        raise InputError(
            f"{weights} does not fit {base.model_id!r}: {len(wrong)} tensors are missing, extra "
            f"or of another shape (first: {wrong[0]})."
        )
    set_peft_model_state_dict(peft_model, {k: v.to(base.dtype) for k, v in state.items()})
    return tuned_model(base, peft_model.merge_and_unload(), path)
