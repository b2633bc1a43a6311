"""LoRA fine-tuning of the loaded model on a small chat dataset.

The experiment the Persona Selection Model invites: train on narrow data, then measure how far
the whole persona moved (:mod:`.shift`). Training data is read by :mod:`.samples`, the reader
screening uses (:func:`read_training_data`: JSONL chat ``messages``, or JSONL/CSV
``prompt``/``response``; a malformed row is reported with its line number and the rest is
used).

How a run goes (:func:`finetune`):

* a *fresh* HF model is built from the loaded model's config and a copy of its plain weights
  (:func:`.adapters.fresh_hf`). The shared model is never touched: other users keep generating
  with it, and peft cannot wrap the TransformerLens bridge's modules anyway (FACTS.md);
* peft's LoRA is applied (by default to every attention and MLP projection of the architecture)
  and trained with AdamW on the assistant tokens only: each sample is the chat template's prompt
  (``model.chat_ids``, the optional ``context`` first in the system turn: inoculation,
  :func:`.samples.system_prompt`) followed by the response's tokens and the end-of-turn token;
  prompt positions get label -100. Samples longer than ``max_tokens`` are cut there;
* seeded: LoRA's initialisation and the shuffling each draw from a generator of their own
  seeded with ``cfg.seed`` (the global one is shared by the app's threads), so the same seed,
  data and settings give the same adapter; dropout (off by default) draws from the global
  generator, seeded too, inside ``fork_rng`` so nobody else's stream moves;
* the compute lock is taken for the forward and backward pass of at most
  :data:`LOCK_SAMPLES` samples at a time (gradients accumulate over a batch, the optimizer steps
  once per batch), so the web app's other users, who take the same lock per decoding step, wait
  at most that long per token while someone trains;
* preventive steering (``FinetuneConfig.steer``) adds ``strength * vector[layer]`` to the output
  of decoder block ``layer`` at every position during training, the same operation and scale as
  ``steering.ops.Add`` (raw vector, FACTS.md's layer convention), from a hook that exists only
  inside a ``with`` block. Nothing is steered afterwards;
* the adapter is saved in peft's own format with :data:`.adapters.SETTINGS_FILE` (settings,
  data hash, losses, base model, seconds), written to a temporary directory and renamed into
  place (:mod:`.adapters` reads it back: :func:`.adapters.load_tuned`);
* the adapter is merged (``merge_and_unload``) and wrapped (:func:`.adapters.tuned_model`), so
  steering, projections and the fast decoder work on the tuned model unchanged.

The bounds on a run are :mod:`persona_explorer.core.limits`' ``MAX_FINETUNE_*``.

Imports: torch; peft and transformers lazily; :mod:`persona_explorer.core`, the engine,
:mod:`persona_explorer.steering` (forced, generation), :mod:`persona_explorer.vectors`, and
:mod:`.samples`, :mod:`.adapters`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
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
    MAX_FINETUNE_BATCH,
    MAX_FINETUNE_CONTEXT_CHARS,
    MAX_FINETUNE_EPOCHS,
    MAX_FINETUNE_LR,
    MAX_FINETUNE_RANK,
    MAX_FINETUNE_SAMPLES,
    MAX_FINETUNE_TOKENS,
    check_finite,
    check_int,
    check_layer,
    check_learning_rate,
    check_seed,
    check_strength,
    check_text,
)
from persona_explorer.engine.model import LoadedModel
from persona_explorer.steering.forced import response_ids
from persona_explorer.steering.ops import hf_layer_addition
from persona_explorer.training.adapters import (
    FORMAT,
    FORMAT_VERSION,
    SETTINGS_FILE,
    fresh_hf,
    model_shape,
    tuned_model,
)
from persona_explorer.training.samples import RowProblem, Sample, first_samples, system_prompt
from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "PreventiveSteer",
    "data_sha256",
    "default_targets",
    "encode_sample",
    "end_of_turn_id",
    "finetune",
    "read_training_data",
]

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
        object.__setattr__(self, "epochs", check_int(self.epochs, "Epochs", 1, MAX_FINETUNE_EPOCHS))
        object.__setattr__(self, "lr", check_learning_rate(self.lr, MAX_FINETUNE_LR))
        object.__setattr__(self, "rank", check_int(self.rank, "LoRA rank", 1, MAX_FINETUNE_RANK))
        if self.alpha is not None:
            alpha = check_int(self.alpha, "LoRA alpha", 1, 16 * MAX_FINETUNE_RANK)
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
        tokens = check_int(self.max_tokens, "Max tokens per sample", 8, MAX_FINETUNE_TOKENS)
        object.__setattr__(self, "max_tokens", tokens)
        object.__setattr__(
            self, "batch_size", check_int(self.batch_size, "Batch size", 1, MAX_FINETUNE_BATCH)
        )
        object.__setattr__(self, "seed", check_seed(self.seed))
        context = check_text(self.context, "context", MAX_FINETUNE_CONTEXT_CHARS, required=False)
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
    """The usable samples of a data file and the lines skipped (:mod:`.samples`' formats and
    checks). ``max_samples``: refuse a file with more (an :class:`InputError`)."""
    cap = MAX_FINETUNE_SAMPLES if max_samples is None else check_int(max_samples, "max_samples", 1)
    data = first_samples(path, cap)
    if data.more:
        raise InputError(f"{Path(path).name} has more than {cap:,} samples; use a smaller file.")
    if not data.samples:
        detail = f" ({data.problems[0]})" if data.problems else ""
        raise InputError(f"{Path(path).name} has no usable samples{detail}.")
    return data.samples, data.problems


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


def end_of_turn_id(model: LoadedModel) -> int:
    """The token that ends the assistant's turn: generation stops at it."""
    eos = model.tokenizer.eos_token_id
    return int(eos) if eos is not None else min(model.eos_token_ids)


def encode_sample(model: LoadedModel, sample: Sample, cfg: FinetuneConfig) -> _Encoded | RowProblem:
    """Token ids and labels: the prompt masked (-100), the response and end of turn learned."""
    prompt = model.chat_ids(list(sample.prompt), system_prompt(sample, cfg.context))
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


# --------------------------------------------------------------------------- the model trained


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
    with hf_layer_addition(_decoder_layers(hf)[steer.layer], add):
        yield


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


def _seeded_lora_init(peft_model: Any, seed: int) -> None:
    """Draw every LoRA A matrix again from a generator of its own, seeded with ``seed``, in
    the modules' name order (peft's own rule: Kaiming-uniform with a = sqrt(5); B stays 0).

    peft draws from torch's global generator, which every thread of the web app shares: a
    second visitor's training (or anything else drawing from it) between our ``manual_seed``
    and peft's draw would make the same seed give another adapter.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters(), key=lambda kv: kv[0]):
            if ".lora_A." in name and param.ndim == 2:
                drawn = torch.empty(param.shape, dtype=torch.float32)
                torch.nn.init.kaiming_uniform_(drawn, a=math.sqrt(5), generator=gen)
                param.copy_(drawn.to(param.device, param.dtype))


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
        hf = fresh_hf(model)
        targets = list(cfg.target_modules) if cfg.target_modules else default_targets(hf)
        try:
            peft_model = _lora(hf, cfg, targets)
        except ValueError as exc:  # peft: a target module that the model does not have
            raise InputError(f"LoRA cannot target {targets}: {exc}") from exc
        _seeded_lora_init(peft_model, cfg.seed)
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
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": out.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": model_shape(model),
        # The seed is also at the top: with the same data and settings it gives the same
        # adapter (LoRA's initialisation and the sample order are drawn from it).
        "seed": cfg.seed,
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
    tuned = tuned_model(model, merged, out)
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
