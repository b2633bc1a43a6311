"""Adapters as one file: a saved adapter folder zipped for download, and an uploaded zip read
back, checked against the loaded model, and written as a folder :func:`.adapters.load_tuned`
reads.

The zip is peft's own folder layout under one folder named after the adapter::

    <name>/adapter_config.json          peft's LoRA config
    <name>/adapter_model.safetensors    the LoRA A and B matrices
    <name>/persona_finetune.json        what Persona Explorer recorded (settings, seed, losses)
    <name>/README.md                    peft's model card (written by peft; never read back)

so that, unzipped, it is a folder ``peft.PeftModel.from_pretrained`` and ``app.py --adapter``
both read.

An uploaded zip is hostile input, read without trusting anything it declares:

* the zip: at most ``max_bytes`` on disk and :data:`MAX_MEMBERS` entries; every entry's name
  is checked (no absolute path, ``..``, backslash or control character) and the whole file is
  refused when one is bad, although nothing is ever extracted to a path: the three known files
  are read into memory by name, each capped *before* reading by its declared size, then read
  with a bounded read (a member that lies about its size cannot grow past the cap), and only
  stored or deflated members are read (no encryption);
* pickled weights (``.bin``, ``.pt``, ...) are refused by name and never opened;
* ``adapter_config.json`` is user JSON: size-capped, only the keys listed in
  :func:`check_lora_config` are used; ``target_modules`` must be a list of the loaded model's
  own linear projections, ``r`` and ``lora_alpha`` are bounded, and any other peft option that is
  switched on (DoRA, rank patterns, layer replication, ...) is refused, because it would change
  what the weights mean;
* ``adapter_model.safetensors``: its header is parsed here before any tensor is made; every
  tensor must be exactly one of the LoRA matrices the config implies for the loaded model
  (name, shape ``[r, in]`` / ``[out, r]``, a float dtype, offsets that tile the data), so the
  file's size is known to be what the model needs before safetensors allocates anything;
* ``persona_finetune.json``: optional (a plain peft adapter has none), size-capped; when present
  it must be Persona Explorer's format and name the loaded model. Only known fields of known
  types are kept (:func:`clean_settings`); the rest is dropped.

:func:`write_upload` writes the checked files (the config and settings as cleaned here, never the
uploaded bytes) into a fresh folder; :func:`.adapters.load_tuned` then loads it with its own
checks (peft's expected state dict) as a second line of defence.

Imports: the standard library, :mod:`persona_explorer.core` (errors, limits, fileio), the
engine's model type and :mod:`.adapters`; safetensors lazily.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_explorer.core.errors import InputError
from persona_explorer.core.fileio import atomic_write
from persona_explorer.core.limits import (
    MAX_FINETUNE_CONTEXT_CHARS,
    MAX_SEED,
    check_finite,
    check_int,
)
from persona_explorer.engine.model import LoadedModel
from persona_explorer.training.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    FORMAT,
    SETTINGS_FILE,
    check_made_for,
)

__all__ = [
    "MAX_MEMBERS",
    "README",
    "AdapterUpload",
    "check_lora_config",
    "check_weights_header",
    "clean_settings",
    "linear_targets",
    "lora_shapes",
    "read_adapter_zip",
    "write_upload",
    "zip_adapter",
]

README = "README.md"  # peft's model card: zipped for completeness, never read back
MAX_MEMBERS = 16  # entries in an uploaded zip (an adapter has four files)
MAX_CONFIG_BYTES = 64 * 1024  # peft writes about 1.5 kB
MAX_SETTINGS_BYTES = 1024 * 1024  # the losses of a long run are the bulk
MAX_HEADER_BYTES = 4 * 1024 * 1024  # a 30-layer, 7-projection adapter's header is about 60 kB
MAX_LOSSES = 10_000  # losses kept from an uploaded record (more is not a run of this app)
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Config keys whose value changes nothing about the weights' meaning (bookkeeping, or only
# initialisation and training): accepted whatever they hold, and never used.
_IGNORED_KEYS = frozenset(
    {
        "auto_mapping",
        "base_model_name_or_path",
        "inference_mode",
        "init_lora_weights",
        "lora_dropout",
        "megatron_core",
        "peft_version",
        "qalora_group_size",
        "revision",
        "task_type",
    }
)
# Keys this module reads; every other key must be "off" (null, false, 0 or empty).
_USED_KEYS = frozenset(
    {"peft_type", "r", "lora_alpha", "target_modules", "bias", "fan_in_fan_out", "use_rslora"}
)


# --------------------------------------------------------------------------- download


def zip_adapter(adapter_dir: str | Path, dest: str | Path, name: str | None = None) -> Path:
    """The adapter folder as a zip at ``dest``: its files under one folder ``name`` (by default
    the folder's own name), written atomically. Only the adapter's known files are zipped."""
    src = Path(adapter_dir)
    if not (src / ADAPTER_WEIGHTS).is_file() or not (src / ADAPTER_CONFIG).is_file():
        raise InputError(f"{src.name} is not a saved adapter (its files are missing).")
    folder = name or src.name
    if not _safe_name(folder) or "/" in folder:
        raise ValueError(f"not a folder name: {folder!r}")

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for member in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, SETTINGS_FILE, README):
                if (src / member).is_file():
                    zf.write(src / member, f"{folder}/{member}")

    return atomic_write(Path(dest), write)


# --------------------------------------------------------------------------- what fits the model


def _fan_in_fan_out(base: LoadedModel) -> bool:
    # GPT-2's projections are Conv1D, whose weight is stored [in, out] (peft's fan_in_fan_out).
    return getattr(base.hf_model.config, "model_type", "") == "gpt2"


def _layer_projections(base: LoadedModel) -> dict[str, tuple[int, int]]:
    """Every 2-D weight inside a numbered decoder layer: module path -> (in, out) features."""
    flip = _fan_in_fan_out(base)
    out: dict[str, tuple[int, int]] = {}
    for key, weight in base.weights.items():
        if not key.endswith(".weight") or weight.ndim != 2:
            continue
        module = key[: -len(".weight")]
        # Inside a decoder layer: the path has a layer number (model.layers.3.mlp.up_proj);
        # embeddings and the unembedding have none and are never LoRA targets here.
        if not re.search(r"\.\d+\.", f".{module}."):
            continue
        rows, cols = int(weight.shape[0]), int(weight.shape[1])
        out[module] = (rows, cols) if flip else (cols, rows)
    return out


def linear_targets(base: LoadedModel) -> list[str]:
    """The names an adapter may target on ``base``: its decoder layers' linear projections."""
    return sorted({m.rsplit(".", 1)[-1] for m in _layer_projections(base)})


def lora_shapes(base: LoadedModel, targets: list[str], rank: int) -> dict[str, tuple[int, int]]:
    """The tensors a rank-``rank`` LoRA on ``targets`` has on ``base``, as peft names them in
    ``adapter_model.safetensors``: ``lora_A`` is ``[rank, in]``, ``lora_B`` ``[out, rank]``."""
    wanted = set(targets)
    shapes: dict[str, tuple[int, int]] = {}
    for module, (fan_in, fan_out) in _layer_projections(base).items():
        if module.rsplit(".", 1)[-1] in wanted:
            shapes[f"base_model.model.{module}.lora_A.weight"] = (rank, fan_in)
            shapes[f"base_model.model.{module}.lora_B.weight"] = (fan_out, rank)
    return shapes


# --------------------------------------------------------------------------- the config


def _off(value: Any) -> bool:
    return value is None or value is False or value == 0 or value in ("", [], {})


def _strict_json(data: bytes, what: str) -> Any:
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{what} is not valid JSON ({str(exc)[:120]}).") from None


def check_lora_config(raw: object, base: LoadedModel, max_rank: int) -> dict[str, Any]:
    """An uploaded ``adapter_config.json``, checked against ``base``; the config written back
    (only what :func:`.adapters.load_tuned` reads, and the loaded model's id)."""
    where = f"The adapter's {ADAPTER_CONFIG}"
    if not isinstance(raw, dict):
        raise InputError(f"{where} must hold a JSON object.")
    if raw.get("peft_type") != "LORA":
        kind = str(raw.get("peft_type"))[:40]
        raise InputError(f"{where} describes a {kind!r} adapter; only LoRA is supported.")
    for key, value in raw.items():
        if not isinstance(key, str):
            raise InputError(f"{where} has a key that is not text.")
        if key not in _USED_KEYS and key not in _IGNORED_KEYS and not _off(value):
            raise InputError(
                f"{where}: {key[:60]!r} is set, which this app does not support (it would "
                "change what the weights mean). Only plain LoRA adapters can be loaded."
            )
    # JSON numbers only: check_int and check_finite would also take "4" (a widget's text).
    if type(raw.get("r")) is not int:
        raise InputError(f"{where}: the rank r must be a whole number.")
    rank = check_int(raw.get("r"), "The adapter's rank r", 1, max_rank)
    if type(raw.get("lora_alpha")) not in (int, float):
        raise InputError(f"{where}: lora_alpha must be a number.")
    alpha = check_finite(raw.get("lora_alpha"), "The adapter's lora_alpha")
    if not 0 < alpha <= 16 * max_rank:
        raise InputError(f"{where}: lora_alpha {alpha:g} is out of range (0, {16 * max_rank}].")
    allowed = linear_targets(base)
    targets = raw.get("target_modules")
    if (
        not isinstance(targets, list)
        or not targets
        or len(targets) > 64
        or not all(isinstance(t, str) for t in targets)
    ):
        raise InputError(
            f"{where}: target_modules must be a list of the model's projections "
            f"({', '.join(allowed)})."
        )
    unknown = sorted({t for t in targets if t not in allowed})
    if unknown or len(set(targets)) != len(targets):
        shown = ", ".join(repr(t[:40]) for t in unknown[:4]) or "a repeated name"
        raise InputError(
            f"{where}: target_modules names {shown}; this model's projections are "
            f"{', '.join(allowed)}."
        )
    if raw.get("bias", "none") != "none":
        raise InputError(f"{where}: only bias 'none' is supported.")
    fan = raw.get("fan_in_fan_out", False)
    rslora = raw.get("use_rslora", False)
    if not isinstance(fan, bool) or not isinstance(rslora, bool):
        raise InputError(f"{where}: fan_in_fan_out and use_rslora must be true or false.")
    if fan != _fan_in_fan_out(base):
        raise InputError(f"{where}: fan_in_fan_out={fan} does not fit this model's layers.")
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": int(alpha) if alpha == int(alpha) else alpha,
        "target_modules": sorted(targets),
        "bias": "none",
        "fan_in_fan_out": fan,
        "use_rslora": rslora,
        "lora_dropout": 0.0,
        "inference_mode": True,
        "base_model_name_or_path": base.model_id,
    }


# --------------------------------------------------------------------------- the weights


def check_weights_header(data: bytes, expected: dict[str, tuple[int, int]]) -> None:
    """Refuse a safetensors file unless it holds exactly the ``expected`` tensors (names and
    shapes), in a float dtype, tiling its data; checked on the header alone, before any tensor
    is made."""
    where = f"The adapter's {ADAPTER_WEIGHTS}"
    if len(data) < 8:
        raise InputError(f"{where} is not a safetensors file (too short).")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(MAX_HEADER_BYTES, len(data) - 8):
        raise InputError(f"{where} is not a safetensors file (its header size is impossible).")
    header = _strict_json(data[8 : 8 + length], f"{where}'s header")
    if not isinstance(header, dict):
        raise InputError(f"{where}'s header is not a JSON object.")
    header.pop("__metadata__", None)
    names = set(header)
    if names != set(expected):
        extra = sorted(names - set(expected))
        missing = sorted(set(expected) - names)
        first = (extra or missing)[0][:120]
        raise InputError(
            f"{where} does not fit the loaded model and its config: {len(extra)} unexpected "
            f"and {len(missing)} missing tensors (first: {first!r})."
        )
    spans = []
    for name, entry in header.items():
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if dtype not in _DTYPE_BYTES:
            raise InputError(f"{where}: tensor {name[:120]!r} is {str(dtype)[:12]!r}, not a float.")
        if shape != list(expected[name]):
            raise InputError(
                f"{where}: tensor {name[:120]!r} has shape {str(shape)[:60]}; this model and "
                f"the config's rank need {list(expected[name])}."
            )
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(n) is int for n in offsets)
            or offsets[1] - offsets[0] != math.prod(shape) * _DTYPE_BYTES[dtype]
        ):
            raise InputError(f"{where}: tensor {name[:120]!r} has invalid data offsets.")
        spans.append((offsets[0], offsets[1]))
    spans.sort()
    at = 0
    for begin, end in spans:
        if begin != at:
            raise InputError(f"{where}: its tensors overlap or leave gaps.")
        at = end
    if 8 + length + at != len(data):
        raise InputError(f"{where}: its size does not match its header (truncated or padded).")


# --------------------------------------------------------------------------- the record


def _text(value: object, cap: int) -> str | None:
    return value[:cap] if isinstance(value, str) else None


def _whole(value: object, low: int, high: int) -> int | None:
    ok = type(value) is int and low <= value <= high
    return value if ok else None  # type: ignore[return-value]


def _number(value: object) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None  # type: ignore[arg-type]


def _numbers(value: object) -> list[float]:
    if not isinstance(value, list):
        return []
    return [x for x in (_number(v) for v in value[:MAX_LOSSES]) if x is not None]


def _pick(raw: object, fields: dict[str, Any]) -> dict[str, Any]:
    """The known ``fields`` of ``raw`` (a dict), each through its check; None values dropped."""
    if not isinstance(raw, dict):
        return {}
    out = {k: check(raw.get(k)) for k, check in fields.items() if k in raw}
    return {k: v for k, v in out.items() if v is not None}


def clean_settings(raw: object, base: LoadedModel) -> dict[str, Any]:
    """An uploaded ``persona_finetune.json``: it must be this app's and name the loaded model;
    only its known fields, of the known types, are kept."""
    where = f"The adapter's {SETTINGS_FILE}"
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InputError(f"{where} was not written by Persona Explorer's finetune.")
    made = raw.get("base_model")
    if not isinstance(made, dict):
        raise InputError(f"{where} does not say which model it was made for.")
    check_made_for(made, base, where)
    big = 2**40
    steer = _pick(
        (raw.get("config") or {}).get("steer") if isinstance(raw.get("config"), dict) else None,
        {
            "vector": lambda v: _text(v, 80),
            "vector_model_id": lambda v: _text(v, 200),
            "layer": lambda v: _whole(v, 0, 100_000),
            "strength": _number,
        },
    )
    config = _pick(
        raw.get("config"),
        {
            "epochs": lambda v: _whole(v, 1, big),
            "lr": _number,
            "rank": lambda v: _whole(v, 1, big),
            "alpha": _number,
            "dropout": _number,
            "max_tokens": lambda v: _whole(v, 1, big),
            "batch_size": lambda v: _whole(v, 1, big),
            "seed": lambda v: _whole(v, 0, MAX_SEED),
            "context": lambda v: _text(v, MAX_FINETUNE_CONTEXT_CHARS),
            "target_modules": lambda v: (
                [t[:40] for t in v[:64] if isinstance(t, str)] if isinstance(v, list) else None
            ),
        },
    )
    if steer:
        config["steer"] = steer
    out: dict[str, Any] = {
        "format": FORMAT,
        "version": _whole(raw.get("version"), 0, big) or 1,
        "base_model": _pick(
            made,
            {
                "model_id": lambda v: _text(v, 200),
                "architecture": lambda v: _text(v, 80),
                "n_layers": lambda v: _whole(v, 1, big),
                "d_model": lambda v: _whole(v, 1, big),
                "vocab_size": lambda v: _whole(v, 1, big),
            },
        ),
        "config": config,
        **_pick(
            raw,
            {
                "name": lambda v: _text(v, 80),
                "created": lambda v: _text(v, 40),
                "seed": lambda v: _whole(v, 0, MAX_SEED),
                "steps": lambda v: _whole(v, 0, big),
                "stopped": lambda v: v if isinstance(v, bool) else None,
                "seconds": _number,
            },
        ),
        "data": _pick(
            raw.get("data"),
            {
                "source": lambda v: _text(v, 200),
                "sha256": lambda v: v if isinstance(v, str) and _SHA256.match(v) else None,
                "n_samples": lambda v: _whole(v, 0, big),
                "skipped": lambda v: _whole(v, 0, big),
            },
        ),
        "losses": _numbers(raw.get("losses")),
        "epoch_losses": _numbers(raw.get("epoch_losses")),
        "versions": _pick(
            raw.get("versions"),
            {k: lambda v: _text(v, 40) for k in ("peft", "transformers", "torch")},
        ),
    }
    return out


# --------------------------------------------------------------------------- upload


@dataclass(frozen=True)
class AdapterUpload:
    """An uploaded adapter, checked: what :func:`write_upload` writes."""

    config: dict[str, Any]  # adapter_config.json as written back (see check_lora_config)
    weights: bytes  # adapter_model.safetensors, its header checked
    settings: dict[str, Any] | None  # persona_finetune.json, cleaned; None for a plain peft one
    file_name: str  # the uploaded file's name (user text: for labels only)
    sha256: str  # of the weights

    @property
    def rank(self) -> int:
        return int(self.config["r"])


def _safe_name(name: str) -> bool:
    if not name or len(name) > 255 or name.startswith("/") or "\\" in name:
        return False
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return False
    if re.match(r"^[A-Za-z]:", name):
        return False
    return all(part not in ("..", ".") for part in name.rstrip("/").split("/"))


def _members(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The zip's files by their own name (the folder above, if any, dropped), checked."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise InputError(
            f"The zip holds {len(infos)} entries; an adapter has four files (at most "
            f"{MAX_MEMBERS} entries are read)."
        )
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        if not _safe_name(name):
            raise InputError(
                f"The zip holds an entry named {name[:80]!r}, a path outside its folder: "
                "refused (an adapter zip holds plain file names only)."
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InputError(f"The zip's entry {name[:80]!r} is a link: refused.")
        if info.is_dir() or name.startswith("__MACOSX/"):
            continue
        parts = name.split("/")
        if len(parts) > 2:
            raise InputError(
                f"The zip's entry {name[:80]!r} is nested too deep: zip the adapter's folder "
                "(its files, or one folder holding them)."
            )
        base = parts[-1]
        if base.lower().endswith(_PICKLE_SUFFIXES):
            raise InputError(
                f"The zip holds {base[:80]!r}: pickled weights are never loaded (unsafe). Save "
                "the adapter with safetensors (peft's default) and zip that."
            )
        if base in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, SETTINGS_FILE):
            if base in by_name:
                raise InputError(f"The zip holds more than one {base}: zip one adapter only.")
            by_name[base] = info
    return by_name


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """One member, at most ``cap`` bytes, refused on its declared size before it is read."""
    name = info.filename.rsplit("/", 1)[-1]
    if info.file_size > cap:
        raise InputError(
            f"The zip's {name} declares {info.file_size:,} bytes unpacked; at most {cap:,} are "
            "read for this model (a zip bomb, or an adapter for a far larger model?)."
        )
    if info.flag_bits & 0x1:
        raise InputError(f"The zip's {name} is encrypted: zip the adapter without a password.")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise InputError(f"The zip's {name} uses a compression this app does not read.")
    try:
        with zf.open(info) as fh:
            data = fh.read(cap + 1)  # bounded: a member cannot unpack past the cap
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError) as exc:
        raise InputError(f"The zip's {name} is damaged ({str(exc)[:120]}).") from None
    if len(data) > cap:
        raise InputError(f"The zip's {name} unpacks to more than {cap:,} bytes.")
    return data


def read_adapter_zip(
    path: str | Path, base: LoadedModel, *, max_bytes: int, max_rank: int
) -> AdapterUpload:
    """An uploaded adapter zip, checked against ``base`` (see the module doc). ``max_bytes``:
    the zip's own size; ``max_rank``: the largest LoRA rank accepted."""
    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise InputError(
            f"The file is {size / 2**20:.1f} MB; an adapter zip may be {max_bytes / 2**20:.0f} "
            "MB here (train with a lower rank)."
        )
    if not zipfile.is_zipfile(p):
        raise InputError(
            "That file is not a zip. Upload the .zip this tab's 'Download the adapter' gives "
            "(peft's adapter folder, zipped)."
        )
    try:
        with zipfile.ZipFile(p) as zf:
            members = _members(zf)
            for needed in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                if needed not in members:
                    raise InputError(
                        f"The zip has no {needed}: it is not a LoRA adapter folder from peft."
                    )
            raw_config = _read_member(zf, members[ADAPTER_CONFIG], MAX_CONFIG_BYTES)
            config = check_lora_config(
                _strict_json(raw_config, f"The adapter's {ADAPTER_CONFIG}"), base, max_rank
            )
            expected = lora_shapes(base, config["target_modules"], config["r"])
            # The largest file these tensors make (float32) with the largest header allowed.
            cap = 8 + MAX_HEADER_BYTES + 4 * sum(a * b for a, b in expected.values())
            weights = _read_member(zf, members[ADAPTER_WEIGHTS], cap)
            settings = None
            if SETTINGS_FILE in members:
                raw = _read_member(zf, members[SETTINGS_FILE], MAX_SETTINGS_BYTES)
                settings = clean_settings(_strict_json(raw, f"The adapter's {SETTINGS_FILE}"), base)
    except zipfile.BadZipFile as exc:
        raise InputError(f"That zip is damaged ({str(exc)[:120]}).") from None
    check_weights_header(weights, expected)
    return AdapterUpload(
        config=config,
        weights=weights,
        settings=settings,
        file_name=p.name[:120],
        sha256=hashlib.sha256(weights).hexdigest(),
    )


def write_upload(upload: AdapterUpload, folder: str | Path) -> Path:
    """The checked adapter as a folder (atomically): the config and record as cleaned, the
    weights as uploaded (their header checked), and where they came from in the record."""
    settings = dict(upload.settings) if upload.settings is not None else None
    if settings is not None:
        settings["uploaded"] = {"file": upload.file_name, "sha256": upload.sha256}

    def write(tmp: Path) -> None:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(upload.config, indent=2), encoding="utf-8")
        (tmp / ADAPTER_WEIGHTS).write_bytes(upload.weights)
        if settings is not None:
            text = json.dumps(settings, indent=2, ensure_ascii=False, allow_nan=False)
            (tmp / SETTINGS_FILE).write_text(text, encoding="utf-8")

    out = Path(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, write, directory=True)
