"""LoRA fine-tuning of the loaded model on a small chat dataset, and loading the result.

The experiment the Persona Selection Model invites: train on narrow data, then measure how far
the whole persona moved (:mod:`.shift`). Training data comes in screening's formats
(:func:`read_training_data` uses :func:`.screening.read_samples`: JSONL chat ``messages``, or
JSONL/CSV ``prompt``/``response``; a malformed row is reported with its line number and the rest
is used).

How a run goes (:func:`finetune`):

* a *fresh* HF model is built from the loaded model's config and a copy of its plain weights
  (``LoadedModel.weights``). The shared model is never touched: other users keep generating with
  it, and peft cannot wrap the TransformerLens bridge's modules anyway (FACTS.md);
* peft's LoRA is applied (by default to every attention and MLP projection of the architecture)
  and trained with AdamW on the assistant tokens only: each sample is the chat template's prompt
  (``model.chat_ids``, the optional ``context`` first in the system turn: inoculation) followed by
  the response's tokens and the end-of-turn token; prompt positions get label -100. Samples longer
  than ``max_tokens`` are cut there;
* seeded: LoRA's initialisation (the global RNG, inside ``fork_rng`` so nobody else's stream
  moves), the shuffling (its own generator) and dropout;
* the compute lock is taken for the forward and backward pass of at most
  :data:`LOCK_SAMPLES` samples at a time (gradients accumulate over a batch, the optimizer steps
  once per batch), so the web app's other users, who take the same lock per decoding step, wait
  at most that long per token while someone trains;
* preventive steering (``FinetuneConfig.steer``) adds ``strength * vector[layer]`` to the output
  of decoder block ``layer`` at every position during training, the same operation and scale as
  :class:`.steering.Add` (raw vector, FACTS.md's layer convention), from a hook that exists only
  inside a ``with`` block. Nothing is steered afterwards;
* the adapter is saved in peft's own format (``adapter_config.json``,
  ``adapter_model.safetensors``) with :data:`SETTINGS_FILE` (settings, data hash, losses, base
  model, seconds), written to a temporary directory and renamed into place;
* the adapter is merged (``merge_and_unload``) and wrapped by :func:`.model.model_from_hf`, so
  steering, projections and the fast decoder work on the tuned model unchanged.

:func:`load_tuned` rebuilds a tuned model from a saved directory; adapter files are hostile
input: only safetensors weights are read (never a pickle), and a directory made for another
model, or not made by peft's LoRA, is refused with a clear :class:`InputError`.

Imports: torch; peft, transformers and safetensors lazily; :mod:`.model`, :mod:`.screening`,
:mod:`.forced`, :mod:`.vectors`, :mod:`.limits`, :mod:`.fileio`, :mod:`.errors`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.fileio import atomic_write
from persona_explorer.core.limits import (
    check_finite,
    check_int,
    check_layer,
    check_seed,
    check_strength,
    check_text,
)
from persona_explorer.engine.model import LoadedModel, model_from_hf
from persona_explorer.steering.forced import response_ids
from persona_explorer.training.screening import RowProblem, Sample, read_samples
from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "SETTINGS_FILE",
    "FinetuneConfig",
    "FinetuneResult",
    "PreventiveSteer",
    "adapter_settings",
    "finetune",
    "load_tuned",
    "read_training_data",
]

SETTINGS_FILE = "persona_finetune.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORMAT_VERSION = 1
MAX_EPOCHS = 20
MAX_RANK = 256
MAX_TOKENS = 2048
MAX_BATCH = 256
MAX_LR = 1.0
MAX_TRAIN_SAMPLES = 100_000
MAX_CONTEXT_CHARS = 20_000
MAX_JSON_BYTES = 4 * 1024 * 1024  # adapter_config.json / persona_finetune.json (losses inside)
MAX_ADAPTER_BYTES = 2 * 1024**3  # rank 256 on every projection of a 1B model is ~1 GB
# Samples per forward+backward under the compute lock (see the module doc): a trade-off. On the
# embedded model on a shared 2-core machine, 2 samples per hold made training about twice as slow
# as a whole batch of 8 (small matrices, more per-op overhead); 4 holds the lock for a few
# seconds at most and costs little.
LOCK_SAMPLES = 4
IGNORE = -100  # the label cross-entropy skips

ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class PreventiveSteer:
    """Add ``strength * vector.vectors[layer]`` at ``layer`` during training only."""

    vector: PersonaVector
    layer: int
    strength: float

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "layer", check_layer(self.layer, self.vector.n_layers, "Steering layer")
        )
        object.__setattr__(self, "strength", check_strength(self.strength))

    def as_json(self) -> dict[str, Any]:
        v = self.vector
        return {
            "vector": v.name,
            "vector_model_id": v.model_id,
            "layer": self.layer,
            "strength": self.strength,
        }


@dataclass(frozen=True)
class FinetuneConfig:
    """Training options; the UI applies tighter caps. ``alpha=None``: ``2 * rank``;
    ``target_modules=None``: every attention and MLP projection of the architecture."""

    epochs: int = 2
    # Measured on the embedded model, 32 short samples x 2 epochs (8 steps): at 1e-3 the loss
    # fell 4.21 -> 3.15 and the evil projection of answers to unrelated questions rose by 6
    # (malicious_advice); at 5e-4 the loss only fell to 3.5 in the same steps.
    lr: float = 1e-3
    rank: int = 8
    alpha: int | None = None
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    max_tokens: int = 128
    batch_size: int = 8
    seed: int = 0
    context: str | None = None  # a system prompt before every sample (inoculation)
    steer: PreventiveSteer | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "epochs", check_int(self.epochs, "Epochs", 1, MAX_EPOCHS))
        lr = check_finite(self.lr, "Learning rate")
        if not 0.0 < lr <= MAX_LR:
            raise InputError(f"Learning rate must be above 0 and at most {MAX_LR:g}, not {lr:g}.")
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "rank", check_int(self.rank, "LoRA rank", 1, MAX_RANK))
        if self.alpha is not None:
            alpha = check_int(self.alpha, "LoRA alpha", 1, 16 * MAX_RANK)
            object.__setattr__(self, "alpha", alpha)
        dropout = check_finite(self.dropout, "LoRA dropout")
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"LoRA dropout must be in [0, 1), not {dropout:g}.")
        object.__setattr__(self, "dropout", dropout)
        if self.target_modules is not None:
            names = tuple(self.target_modules)
            if not names or not all(isinstance(n, str) and n.isidentifier() for n in names):
                raise InputError(
                    "Target modules must be module names such as q_proj, v_proj "
                    f"(got {list(names)[:8]!r})."
                )
            object.__setattr__(self, "target_modules", names)
        tokens = check_int(self.max_tokens, "Max tokens per sample", 8, MAX_TOKENS)
        object.__setattr__(self, "max_tokens", tokens)
        object.__setattr__(
            self, "batch_size", check_int(self.batch_size, "Batch size", 1, MAX_BATCH)
        )
        object.__setattr__(self, "seed", check_seed(self.seed))
        context = check_text(self.context, "context", MAX_CONTEXT_CHARS, required=False)
        object.__setattr__(self, "context", context or None)
        if self.steer is not None and not isinstance(self.steer, PreventiveSteer):
            raise InputError("steer must be a PreventiveSteer (vector, layer, strength).")

    @property
    def lora_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.rank

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "steer"}
        out["alpha"] = self.lora_alpha
        out["target_modules"] = None if self.target_modules is None else list(self.target_modules)
        out["steer"] = None if self.steer is None else self.steer.as_json()
        return out


@dataclass
class FinetuneResult:
    adapter_dir: Path
    losses: list[float]  # per optimizer step
    epoch_losses: list[float]  # mean step loss of each (completed or cut) epoch
    steps: int
    seconds: float
    n_samples: int
    problems: list[RowProblem]
    settings: dict[str, Any]  # what persona_finetune.json holds
    model: LoadedModel = field(repr=False)  # merged, ready for the engine
    stopped: bool


# --------------------------------------------------------------------------- data


def read_training_data(
    path: str | Path, max_samples: int | None = None
) -> tuple[list[Sample], list[RowProblem]]:
    """The usable samples of a data file and the lines skipped (screening's formats and
    checks). ``max_samples``: refuse a file with more (an :class:`InputError`)."""
    cap = MAX_TRAIN_SAMPLES if max_samples is None else check_int(max_samples, "max_samples", 1)
    samples: list[Sample] = []
    problems: list[RowProblem] = []
    for item in read_samples(path):
        if isinstance(item, RowProblem):
            problems.append(item)
            continue
        if len(samples) >= cap:
            raise InputError(
                f"{Path(path).name} has more than {cap:,} samples; use a smaller file."
            )
        samples.append(item)
    if not samples:
        detail = f" ({problems[0]})" if problems else ""
        raise InputError(f"{Path(path).name} has no usable samples{detail}.")
    return samples, problems


def data_sha256(samples: Sequence[Sample]) -> str:
    """A hash of what was trained on (system, turns, response), the same for a JSONL and a CSV
    file holding the same samples."""
    h = hashlib.sha256()
    for s in samples:
        turns = [[m.role, m.content] for m in s.prompt]
        h.update(json.dumps([s.system, turns, s.response], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class _Encoded:
    ids: list[int]
    labels: list[int]


def _system_for(sample: Sample, context: str | None) -> str | None:
    # As screening joins them: the context first, the sample's own system prompt after it.
    parts = [p for p in (context, sample.system) if p and p.strip()]
    return "\n\n".join(parts) if parts else None


def end_of_turn_id(model: LoadedModel) -> int:
    """The token that ends the assistant's turn: generation stops at it."""
    eos = model.tokenizer.eos_token_id
    return int(eos) if eos is not None else min(model.eos_token_ids)


def encode_sample(model: LoadedModel, sample: Sample, cfg: FinetuneConfig) -> _Encoded | RowProblem:
    """Token ids and labels: the prompt masked (-100), the response and end of turn learned."""
    prompt = model.chat_ids(list(sample.prompt), _system_for(sample, cfg.context))
    response = response_ids(model, sample.response)
    if not response:
        return RowProblem(sample.line, "the response has no tokens")
    limit = min(cfg.max_tokens, model.context_length or cfg.max_tokens)
    ids = (prompt + response + [end_of_turn_id(model)])[:limit]
    if len(ids) <= len(prompt):
        return RowProblem(
            sample.line,
            f"the prompt alone is {len(prompt):,} tokens; max tokens {limit} leaves "
            "no room for the response",
        )
    return _Encoded(ids, [IGNORE] * len(prompt) + ids[len(prompt) :])


# --------------------------------------------------------------------------- model copies


def _fresh_hf(base: LoadedModel) -> Any:
    """A plain HF model with a copy of the base model's weights (never the shared modules)."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(base.hf_model.config)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=base.dtype)
    result = hf.load_state_dict(dict(base.weights), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"weights do not fit a fresh model: {result}")
    return hf.to(base.device)


def _decoder_layers(hf: Any) -> torch.nn.ModuleList:
    n = int(hf.config.num_hidden_layers)
    for module in hf.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise RuntimeError(f"no list of {n} decoder layers in {type(hf).__name__}")


def default_targets(hf: Any) -> list[str]:
    """The names of every linear projection inside the decoder layers (attention and MLP)."""
    from transformers.pytorch_utils import Conv1D  # GPT-2's projections

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in _decoder_layers(hf).named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D))
    }
    return sorted(names)


@contextlib.contextmanager
def _steered(hf: Any, steer: PreventiveSteer | None) -> Iterator[None]:
    if steer is None:
        yield
        return
    p = next(hf.parameters())
    add = (steer.strength * steer.vector.vectors[steer.layer]).to(p.device, p.dtype)

    def hook(_mod: Any, _inp: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            return (out[0] + add, *out[1:])
        return out + add

    handle = _decoder_layers(hf)[steer.layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _check_fits(model: LoadedModel, steer: PreventiveSteer | None) -> None:
    if steer is not None:
        from persona_explorer.vectors.persona_vector import check_fits

        check_fits(steer.vector, model.n_layers, model.d_model, model.model_id)


# --------------------------------------------------------------------------- training


def _micro_batch(rows: Sequence[_Encoded], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Left-padded ids, mask, positions, the kept logit columns and their targets."""
    from persona_explorer.engine import positions_from_mask
    from persona_explorer.steering.generation import left_pad

    ids, mask = left_pad([r.ids for r in rows], pad_id)
    width = ids.shape[1]
    labels = torch.full_like(ids, IGNORE)
    for b, r in enumerate(rows):
        labels[b, width - len(r.labels) :] = torch.tensor(r.labels)
    # Column c predicts c + 1; only columns that predict a label need logits (the unembedding
    # over a 49k vocabulary is a fifth of the work).
    learned = (labels[:, 1:] != IGNORE).any(0).nonzero().flatten()
    keep = torch.arange(int(learned.min()), width - 1)
    return ids, mask, positions_from_mask(mask), keep, labels[:, keep + 1]


def _batch_loss(peft_model: Any, batch: Sequence[_Encoded], model: LoadedModel) -> float:
    """Forward and backward of one batch, a few samples per lock hold; the mean token loss."""
    total = sum(sum(1 for x in r.labels if x != IGNORE) for r in batch)
    loss_sum = 0.0
    for start in range(0, len(batch), LOCK_SAMPLES):
        ids, mask, pos, keep, targets = (
            t.to(model.device)
            for t in _micro_batch(batch[start : start + LOCK_SAMPLES], model.pad_token_id)
        )
        with model.compute_lock:
            out = peft_model(
                input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep
            )
            loss = torch.nn.functional.cross_entropy(
                out.logits.float().flatten(0, 1),
                targets.flatten(),
                ignore_index=IGNORE,
                reduction="sum",
            )
            (loss / total).backward()
        loss_sum += float(loss.detach())
    return loss_sum / total


def _lora(hf: Any, cfg: FinetuneConfig, targets: list[str]) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        fan_in_fan_out=getattr(hf.config, "model_type", "") == "gpt2",
    )
    return get_peft_model(hf, lora)


def finetune(
    model: LoadedModel,
    samples: Sequence[Sample],
    cfg: FinetuneConfig,
    out_dir: str | Path,
    *,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    problems: Sequence[RowProblem] = (),
    source: str | None = None,
) -> FinetuneResult:
    """Train a LoRA adapter on ``samples``, save it to ``out_dir`` (which must not exist or be
    empty) and return the merged tuned model with the losses.

    ``progress(step, total_steps, loss)`` after each optimizer step. ``should_stop`` is asked
    before each step; a stopped run still saves and merges what it learned (``stopped=True``).
    ``problems``: rows already skipped while reading (reported with those found here);
    ``source``: the data file's name, recorded in the settings.
    """
    import peft
    import transformers

    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty: pick a new adapter directory.")
    _check_fits(model, cfg.steer)
    started = time.perf_counter()
    all_problems = list(problems)
    encoded: list[_Encoded] = []
    used: list[Sample] = []
    for sample in samples:
        item = encode_sample(model, sample, cfg)
        if isinstance(item, RowProblem):
            all_problems.append(item)
        else:
            encoded.append(item)
            used.append(sample)
    if not encoded:
        raise InputError("No sample can be trained on: " + "; ".join(map(str, all_problems[:3])))
    steps_per_epoch = -(-len(encoded) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    losses: list[float] = []
    epoch_losses: list[float] = []
    stopped = False
    shuffle = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        hf = _fresh_hf(model)
        targets = list(cfg.target_modules) if cfg.target_modules else default_targets(hf)
        try:
            peft_model = _lora(hf, cfg, targets)
        except ValueError as exc:  # peft: a target module that the model does not have
            raise InputError(f"LoRA cannot target {targets}: {exc}") from exc
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
        peft_model.train()
        with _steered(hf, cfg.steer):
            for _epoch in range(cfg.epochs):
                order = torch.randperm(len(encoded), generator=shuffle).tolist()
                this_epoch: list[float] = []
                for start in range(0, len(order), cfg.batch_size):
                    if should_stop is not None and should_stop():
                        stopped = True
                        break
                    batch = [encoded[i] for i in order[start : start + cfg.batch_size]]
                    loss = _batch_loss(peft_model, batch, model)
                    with model.compute_lock:
                        opt.step()
                    opt.zero_grad(set_to_none=True)
                    losses.append(loss)
                    this_epoch.append(loss)
                    if progress is not None:
                        progress(len(losses), total, loss)
                if this_epoch:
                    epoch_losses.append(sum(this_epoch) / len(this_epoch))
                if stopped:
                    break
    peft_model.eval()
    # peft records the local path the config came from; the model id is what matters here.
    peft_model.peft_config["default"].base_model_name_or_path = model.model_id
    settings: dict[str, Any] = {
        "format": "persona-explorer-lora",
        "version": FORMAT_VERSION,
        "name": out.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": _model_shape(model),
        "config": {**cfg.as_json(), "target_modules": targets},
        "data": {
            "source": source,
            "sha256": data_sha256(used),
            "n_samples": len(used),
            "skipped": len(all_problems),
        },
        "losses": losses,
        "epoch_losses": epoch_losses,
        "steps": len(losses),
        "stopped": stopped,
        "versions": {
            "peft": peft.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }

    def write(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
        settings["seconds"] = round(time.perf_counter() - started, 3)
        (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, ensure_ascii=False))

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        out.rmdir()  # empty (checked above): atomic_write renames into a free name
    atomic_write(out, write, directory=True)
    merged = peft_model.merge_and_unload()
    tuned = _wrap(model, merged, out)
    return FinetuneResult(
        adapter_dir=out,
        losses=losses,
        epoch_losses=epoch_losses,
        steps=len(losses),
        seconds=time.perf_counter() - started,
        n_samples=len(used),
        problems=all_problems,
        settings=settings,
        model=tuned,
        stopped=stopped,
    )


def _model_shape(model: LoadedModel) -> dict[str, Any]:
    return {
        "model_id": model.model_id,
        "architecture": model.architecture,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "vocab_size": int(model.hf_model.config.vocab_size),
    }


def _wrap(base: LoadedModel, merged: Any, adapter_dir: Path) -> LoadedModel:
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
    if size > MAX_JSON_BYTES:
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
    if settings.get("format") != "persona-explorer-lora":
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
    if not 0 < alpha <= 16 * MAX_RANK:
        raise InputError(f"{path / ADAPTER_CONFIG}: lora_alpha {alpha:g} is out of range.")
    return LoraConfig(
        r=check_int(raw.get("r"), "LoRA rank", 1, MAX_RANK),
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=target_list,
        bias="none",
        fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)),
        use_rslora=bool(raw.get("use_rslora", False)),
        task_type="CAUSAL_LM",
    )


def _check_base(path: Path, base: LoadedModel) -> None:
    if not (path / SETTINGS_FILE).exists():
        return  # a plain peft adapter: the tensor shapes below still have to fit
    made = adapter_settings(path).get("base_model")
    if not isinstance(made, dict):
        raise InputError(f"{path / SETTINGS_FILE} does not say which model it was made for.")
    have = _model_shape(base)
    if any(made.get(k) != have[k] for k in ("architecture", "n_layers", "d_model", "vocab_size")):
        raise InputError(
            f"This adapter was made for {made.get('model_id')!r} ({made.get('n_layers')} layers, "
            f"d_model {made.get('d_model')}); the loaded model {base.model_id!r} has "
            f"{base.n_layers} layers and d_model {base.d_model}. Load it on the model it was "
            "trained on."
        )
    if made.get("model_id") != base.model_id:
        raise InputError(
            f"This adapter was made for {made.get('model_id')!r}, but {base.model_id!r} is "
            "loaded: an adapter changes one model's weights and means nothing on another's."
        )


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
        hf = _fresh_hf(base)
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
    return _wrap(base, peft_model.merge_and_unload(), path)
