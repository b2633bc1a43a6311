"""Batched generation with per-row steering and activation capture from the same passes.

One call generates every row of a batch together (left-padded, KV-cached): a baseline row and
steered rows side by side, or many extraction rollouts. While it decodes, it records the residual
stream of every layer for every row: the prompt mean and last prompt token from the prompt pass,
and each response token's residual from the step that feeds it. Projections and persona vectors
come from these, never from extra generations.

Sampling uses the Gumbel-max trick. With ``shared_noise`` (side by side) every row draws the same
noise at each step, so rows that differ only by a zero-strength edit pick identical tokens, and
differences between rows come from steering rather than luck.

The prompt pass runs in chunks of at most :data:`PREFILL_CHUNK` positions, each under the
model's compute lock on its own: between chunks Stop is honoured and other requests take their
turn, so one long prompt holds the model for one chunk at a time, not for its whole length.
A prompt of one chunk or less runs exactly as a single pass.

Imports: torch, ``core`` (errors, limits), the engine (``decoder_for``, the model) and :mod:`.ops`.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    check_int,
    check_max_new_tokens,
    check_penalty,
    check_prompt_tokens,
    check_temperature,
    check_top_p,
)
from persona_explorer.engine import EMBED_LAYER, decoder_for
from persona_explorer.engine.model import LoadedModel
from persona_explorer.steering.ops import LayerEdit, RowPlan, all_position_edits, compile_plan

T = TypeVar("T")


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    # OpenAI-style, on each row's own answer so far: a token's logit drops by
    # frequency_penalty x its count and by presence_penalty once it has appeared. Steered small
    # models loop ("aye, aye, aye"); 0 leaves the logits untouched, bit for bit.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop_at_eos: bool = True
    shared_noise: bool = True
    # The policy cap on a templated prompt, in tokens (``Limits.max_prompt_tokens``, passed by
    # the app and the CLI); None: only the model's context length bounds it.
    max_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        # What would make sampling wrong; how much a user may ask for is checked where input
        # enters (limits.py).
        check_max_new_tokens(self.max_new_tokens)
        check_temperature(self.temperature)
        check_top_p(self.top_p)
        check_penalty(self.frequency_penalty, "frequency_penalty")
        check_penalty(self.presence_penalty, "presence_penalty")
        if self.max_prompt_tokens is not None:
            check_int(self.max_prompt_tokens, "max_prompt_tokens", 1)


@dataclass
class Capture:
    """Residual streams read during generation; layer axis = FACTS.md's convention."""

    prompt_mean: torch.Tensor  # [batch, n_layers, d_model] mean over real prompt tokens
    prompt_last: torch.Tensor  # [batch, n_layers, d_model] last prompt token
    response_sum: torch.Tensor  # [batch, n_layers, d_model] summed over response tokens
    response_count: torch.Tensor  # [batch]
    embed_prompt_mean: torch.Tensor  # [batch, d_model]
    embed_prompt_last: torch.Tensor  # [batch, d_model]
    embed_response_sum: torch.Tensor  # [batch, d_model]
    # [batch, n_tokens, n_layers, d_model] per response token (only when keep_tokens)
    response_tokens: torch.Tensor | None

    @property
    def response_mean(self) -> torch.Tensor:
        """[batch, n_layers, d_model]; zero for a row with an empty response."""
        return self.response_sum / self.response_count.clamp(min=1)[:, None, None]

    @property
    def embed_response_mean(self) -> torch.Tensor:
        return self.embed_response_sum / self.response_count.clamp(min=1)[:, None]


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # response token ids per row, without EOS
    finished: list[bool]  # row stopped at EOS (else at max_new_tokens)
    capture: Capture
    steps: int
    decoder: str


@dataclass(frozen=True)
class StreamUpdate:
    tokens: list[list[int]]  # response so far, per row
    step: int
    done: bool
    result: GenerationResult | None = None


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[batch, seq] ids and attention mask, padded on the left so every row ends together."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError("Every prompt needs at least one token.")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids, mask


_NUCLEUS_CANDIDATES = 512
# Prompt positions per forward of the prompt pass. Small enough that the lock changes hands
# about every half second on a 2-core CPU (the 135M model runs 256 positions of a 2,000-token
# prompt in 0.4-0.7 s; in one pass, other requests waited 6-7 s), large enough that the usual
# chat prompt is one chunk and runs exactly as before.
PREFILL_CHUNK = 256


def _gumbel(u: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))


def _penalize(logits: torch.Tensor, counts: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The logits less each row's frequency and presence penalties (``counts``: [batch, vocab],
    how often each token already appears in that row's answer). Row by row only, so identical
    rows stay identical and a row's result does not depend on its neighbours."""
    out = logits.float()
    if cfg.frequency_penalty:
        out = out - cfg.frequency_penalty * counts
    if cfg.presence_penalty:
        out = out - cfg.presence_penalty * (counts > 0).float()
    return out


def _sample(logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator | None) -> torch.Tensor:
    """[batch, vocab] -> [batch] token ids, exactly distributed as softmax(logits / T) (nucleus).

    Gumbel-max over the nucleus. The nucleus is found among the top candidates rather than by
    sorting the whole vocabulary (a full sort of a 64 x 49k batch took 140 ms a step); a row whose
    candidates hold less than ``top_p`` of the mass falls back to the full sort, so it stays exact.
    With shared noise the Gumbel noise is indexed by token id: identical rows pick alike.
    """
    if cfg.temperature == 0.0 or gen is None:
        return logits.argmax(-1)
    scores = logits.float() / cfg.temperature
    batch, vocab = scores.shape
    rows = 1 if cfg.shared_noise else batch
    if cfg.top_p >= 1.0:
        u = torch.rand((rows, vocab), generator=gen, device="cpu").to(scores.device)
        return (scores + _gumbel(u)).argmax(-1)
    k = min(vocab, _NUCLEUS_CANDIDATES)
    top, idx = scores.topk(k, dim=-1)  # descending
    probs = (top - scores.logsumexp(-1, keepdim=True)).exp()
    cum = probs.cumsum(-1)
    if bool((cum[:, -1] < cfg.top_p).any()):
        top, idx = scores.sort(-1, descending=True)
        probs = top.softmax(-1)
        cum = probs.cumsum(-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    top = top.masked_fill((cum - probs) >= cfg.top_p, float("-inf"))
    if cfg.shared_noise:
        u = torch.rand((1, vocab), generator=gen, device="cpu").to(scores.device)
        noise = _gumbel(u).expand(batch, -1).gather(-1, idx)
    else:
        noise = _gumbel(torch.rand(top.shape, generator=gen, device="cpu").to(scores.device))
    return idx.gather(-1, (top + noise).argmax(-1, keepdim=True)).squeeze(-1)


class _Recorder:
    """The residual callback: applies steering edits, then records activations.

    The prompt pass may come in chunks (:meth:`begin_chunk` before each, :meth:`end_prompt`
    after the last): prompt means are summed over chunks and divided once at the end, and the
    last prompt token is read from the final chunk. With one chunk every number is computed by
    the same operations as a single pass.
    """

    def __init__(
        self,
        model: LoadedModel,
        edits: dict[int, LayerEdit],
        batch: int,
        prompt_mask: torch.Tensor,
        keep_tokens: bool,
    ) -> None:
        n, d, dev = model.n_layers, model.d_model, model.device
        self.edits = edits
        self.body_edits = all_position_edits(edits)
        self.prompt_mask = prompt_mask.to(dev, torch.float32)  # [batch, seq]
        self.chunk_mask = self.prompt_mask
        self.final_chunk = True
        self.prompt_seen = torch.zeros(batch, device=dev)  # real prompt tokens run so far
        z = torch.zeros
        self.cap = Capture(
            # prompt_mean and embed_prompt_mean hold sums until end_prompt().
            prompt_mean=z(batch, n, d, device=dev),
            prompt_last=z(batch, n, d, device=dev),
            response_sum=z(batch, n, d, device=dev),
            response_count=z(batch, device=dev),
            embed_prompt_mean=z(batch, d, device=dev),
            embed_prompt_last=z(batch, d, device=dev),
            embed_response_sum=z(batch, d, device=dev),
            response_tokens=None,
        )
        self.keep_tokens = keep_tokens
        self.token_rows: list[torch.Tensor] = []
        self.step_buf = z(batch, n, d, device=dev)
        self.step_embed = z(batch, d, device=dev)
        self.prompt_pass = True

    def begin_chunk(self, start: int, end: int, final: bool) -> None:
        """The next prompt pass runs positions ``[start, end)``; ``final``: the last one."""
        self.chunk_mask = self.prompt_mask[:, start:end]
        self.final_chunk = final
        self.prompt_seen += self.chunk_mask.sum(-1)

    def end_prompt(self) -> None:
        """Turn the prompt sums into means (over the tokens that ran, should Stop cut the prompt
        pass short) and switch to response tokens."""
        count = self.prompt_seen.clamp(min=1)
        self.cap.prompt_mean /= count[:, None, None]
        self.cap.embed_prompt_mean /= count[:, None]
        self.prompt_pass = False

    def __call__(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        edits = self.edits if self.final_chunk or not self.prompt_pass else self.body_edits
        edit = edits.get(layer)
        if edit is not None:
            h = edit.apply(h, prompt_pass=self.prompt_pass)
        if self.prompt_pass:
            hf = h.float()
            total = (hf * self.chunk_mask[..., None]).sum(1)
            if layer == EMBED_LAYER:
                self.cap.embed_prompt_mean += total
                if self.final_chunk:
                    self.cap.embed_prompt_last.copy_(hf[:, -1])
            else:
                self.cap.prompt_mean[:, layer] += total
                if self.final_chunk:
                    self.cap.prompt_last[:, layer] = hf[:, -1]
        elif layer == EMBED_LAYER:
            self.step_embed.copy_(h[:, -1])
        else:
            self.step_buf[:, layer] = h[:, -1]
        return h

    def end_step(self, counted: torch.Tensor) -> None:
        """Add this step's residuals (the fed token's) for rows where that token counts."""
        w = counted.to(self.step_buf.dtype)
        self.cap.response_sum += self.step_buf * w[:, None, None]
        self.cap.embed_response_sum += self.step_embed * w[:, None]
        self.cap.response_count += w
        if self.keep_tokens:
            self.token_rows.append(self.step_buf.clone())

    def finish(self) -> Capture:
        if self.keep_tokens:
            if self.token_rows:
                self.cap.response_tokens = torch.stack(self.token_rows, dim=1)
            else:
                b, n, d = self.step_buf.shape
                self.cap.response_tokens = self.step_buf.new_zeros(b, 0, n, d)
        return self.cap


class GenerationRun:
    """One :func:`generate_stream` call's state, advanced one part at a time: prompt chunks, then
    decoding steps, each a choice of tokens (:meth:`choose`), a forward pass (by the caller:
    alone, or in a step shared with other runs) and its bookkeeping (:meth:`absorb`).

    The caller holds the model's compute lock and inference mode around each part, never across
    a yield."""

    def __init__(
        self,
        model: LoadedModel,
        prompts: Sequence[Sequence[int]],
        plans: Sequence[RowPlan],
        cfg: SamplingConfig,
        keep_tokens: bool,
        should_stop: Callable[[], bool] | None,
        row_invariant: bool,
        prefill_chunk: int | None,
    ) -> None:
        if len(prompts) != len(plans):
            raise ValueError("One steering plan per prompt row is needed.")
        self.chunk = (
            PREFILL_CHUNK if prefill_chunk is None else check_int(prefill_chunk, "prefill_chunk", 1)
        )
        if prompts:  # checked before padding: a refused prompt allocates nothing
            check_prompt_tokens(
                max(len(p) for p in prompts),
                cfg.max_new_tokens,
                model.context_length,
                cfg.max_prompt_tokens,
            )
        self.model = model
        self.cfg = cfg
        self.should_stop = should_stop
        self.batch = batch = len(prompts)
        ids, mask = left_pad(prompts, model.pad_token_id)
        edits = compile_plan(
            plans, model.n_layers, model.d_model, device=model.device, dtype=model.dtype
        )
        self.rec = _Recorder(model, edits, batch, mask, keep_tokens)
        self.gen: torch.Generator | None = None
        if cfg.temperature > 0:
            self.gen = torch.Generator(device="cpu")
            self.gen.manual_seed(int(cfg.seed))
        self.eos = torch.tensor(sorted(model.eos_token_ids), dtype=torch.long, device=model.device)
        self.decoder = decoder_for(model)
        self.session = self.decoder.session(ids, mask, cfg.max_new_tokens, row_invariant)
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.penalized = bool(cfg.frequency_penalty or cfg.presence_penalty)
        self.counts: torch.Tensor | None = None  # [batch, vocab], made at the first step
        self.done = torch.zeros(batch, dtype=torch.bool, device=model.device)
        self.counted = self.done
        self.step = 0
        self.width = int(ids.shape[1])
        self.prefilled = 0  # prompt positions run so far
        self.stopped = False  # Stop came during the prompt pass
        self.stopping = False  # no more steps: EOS everywhere, Stop, or max_new_tokens
        self.logits: torch.Tensor | None = None

    @property
    def prompt_done(self) -> bool:
        return self.stopped or self.prefilled >= self.width

    def stop_asked(self) -> bool:
        return self.should_stop is not None and self.should_stop()

    def stop_between_chunks(self) -> bool:
        """Ask Stop before a prompt chunk other than the first (outside the compute lock: the
        caller's check may wait on other requests). True: the prompt pass ends here, with
        means over the chunks that ran (under inference mode)."""
        if self.prefilled == 0 or not self.stop_asked():
            return False
        self.stopped = True
        self.rec.end_prompt()
        self.stopping = True
        return True

    def prefill_next(self) -> None:
        """Run the next prompt chunk; the last one ends the prompt pass. Under the compute
        lock and inference mode."""
        start = self.prefilled
        end = min(start + self.chunk, self.width)
        self.rec.begin_chunk(start, end, final=end == self.width)
        self.logits = self.session.prefill(self.rec, start=start, end=end)
        self.prefilled = end
        if self.prompt_done:
            self.rec.end_prompt()
            self.stopping = self.cfg.max_new_tokens == 0

    def choose(self) -> torch.Tensor:
        """Sample this step's tokens from the last logits and record them; returns what to feed."""
        assert self.logits is not None
        logits = self.logits
        if self.penalized:
            if self.counts is None:
                self.counts = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
            logits = _penalize(logits, self.counts, self.cfg)
        nxt = _sample(logits, self.cfg, self.gen)
        if self.counts is not None:
            self.counts[torch.arange(self.batch, device=self.counts.device), nxt] += 1.0
        is_eos = torch.isin(nxt, self.eos) if self.cfg.stop_at_eos else torch.zeros_like(self.done)
        self.counted = ~self.done & ~is_eos
        for row in self.counted.nonzero().flatten().tolist():
            self.tokens[row].append(int(nxt[row]))
        self.done = self.done | is_eos
        self.step += 1
        return nxt

    def absorb(self, logits: torch.Tensor) -> None:
        """The fed token's pass ran (its residuals are in the recorder): keep the new logits.
        After the last token one more pass is still needed to read that token's residuals,
        which is why every chosen token is fed."""
        self.logits = logits
        self.rec.end_step(self.counted)
        self.stopping = bool(self.done.all()) or self.step >= self.cfg.max_new_tokens

    def stop_after_step(self) -> None:
        """Ask Stop after a step (outside the compute lock)."""
        if not self.stopping and self.stop_asked():
            self.stopping = True

    def update(self) -> StreamUpdate:
        return StreamUpdate(tokens=[list(t) for t in self.tokens], step=self.step, done=False)

    def finish(self) -> StreamUpdate:
        """The last update, with the result (under inference mode)."""
        result = GenerationResult(
            tokens=self.tokens,
            finished=self.done.tolist(),
            capture=self.rec.finish(),
            steps=self.step,
            decoder=self.decoder.name,
        )
        return StreamUpdate(
            tokens=[list(t) for t in self.tokens], step=self.step, done=True, result=result
        )

    def close(self) -> None:
        self.session.close()


class SharedStepper(Protocol):
    """What runs a :class:`GenerationRun` in a decoding batch shared with other requests
    (:mod:`.shared_batch`): ``accepts`` says whether it can take this run with the same bits as
    alone, ``run`` drives it to the end and yields its updates."""

    def accepts(self, run: GenerationRun) -> bool: ...

    def run(self, run: GenerationRun) -> Iterator[StreamUpdate]: ...


# The shared batch serving each model, where one was switched on (:func:`.shared_batch.serve`).
_SHARED: weakref.WeakKeyDictionary[LoadedModel, SharedStepper] = weakref.WeakKeyDictionary()


def _alone(run: GenerationRun) -> Iterator[StreamUpdate]:
    model = run.model
    # The lock and inference mode are taken per forward (a prompt chunk or a step), never across
    # a yield or a stop check: the consumer's code between updates (possibly on another thread,
    # as Gradio does) must not run inside inference mode, and other requests get their turn.
    while not run.prompt_done:
        with torch.inference_mode():
            if run.stop_between_chunks():
                break
        with model.compute_lock, torch.inference_mode():
            run.prefill_next()
    while not run.stopping:
        with model.compute_lock, torch.inference_mode():
            run.absorb(run.session.step(run.choose(), run.rec))
        run.stop_after_step()
        if not run.stopping:
            yield run.update()
    with torch.inference_mode():
        last = run.finish()
    yield last


def generate_stream(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    plans: Sequence[RowPlan],
    cfg: SamplingConfig = SamplingConfig(),
    *,
    keep_tokens: bool = True,
    should_stop: Callable[[], bool] | None = None,
    row_invariant: bool = True,
    prefill_chunk: int | None = None,
) -> Iterator[StreamUpdate]:
    """Generate every row together, yielding after each decoding step; the last update has
    ``done=True`` and the :class:`GenerationResult`.

    ``plans[b]`` steers row ``b``. ``row_invariant`` (default) makes identical rows give
    bit-identical results, as side by side needs; extraction turns it off for speed. With
    ``keep_tokens`` the capture keeps every response token's
    residual at every layer (for per-token views); otherwise only sums (cheap for big batches).

    A prompt longer than the model's context (less ``cfg.max_new_tokens``) or than
    ``cfg.max_prompt_tokens`` is refused with an :class:`InputError` before any work. The prompt
    pass runs in chunks of ``prefill_chunk`` positions (default :data:`PREFILL_CHUNK`);
    ``should_stop`` is asked between chunks and after every decoding step. Stopped during the
    prompt pass, the result has no tokens (``steps == 0``) and prompt means over the chunks that
    ran.

    Where the model serves a shared decoding batch (:mod:`.shared_batch`, the app's) and it can
    take this call (small, row-invariant), the call joins it: same updates, same bits, its
    steps computed together with other visitors'. Otherwise it runs alone on this thread.
    """
    run = GenerationRun(
        model, prompts, plans, cfg, keep_tokens, should_stop, row_invariant, prefill_chunk
    )
    try:
        shared = _SHARED.get(model)
        if shared is not None and shared.accepts(run):
            yield from shared.run(run)
        else:
            yield from _alone(run)
    finally:
        run.close()


def generate(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    plans: Sequence[RowPlan],
    cfg: SamplingConfig = SamplingConfig(),
    *,
    keep_tokens: bool = True,
    prefill_chunk: int | None = None,
) -> GenerationResult:
    """:func:`generate_stream` to its end: the :class:`GenerationResult`."""
    for update in generate_stream(
        model, prompts, plans, cfg, keep_tokens=keep_tokens, prefill_chunk=prefill_chunk
    ):
        if update.result is not None:
            return update.result
    raise RuntimeError("generation ended without a result")


@dataclass(frozen=True)
class SideBySideUpdate:
    """One update of :func:`side_by_side_stream`: the texts so far, and at the end the result."""

    texts: list[str]
    result: GenerationResult | None  # set on the last update only
    seconds: float
    stopped: bool  # ended by should_stop before EOS and max_new_tokens (last update only)


class _StopWatch:
    """Passes ``should_stop`` through and remembers whether it ever said stop."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self._should_stop = should_stop
        self.asked = False

    def __call__(self) -> bool:
        if not self.asked and self._should_stop():
            self.asked = True
        return self.asked


def side_by_side_stream(
    model: LoadedModel,
    prompt: Sequence[int],
    plans: Sequence[RowPlan],
    cfg: SamplingConfig,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[SideBySideUpdate]:
    """One prompt, one row per plan, in one row-invariant batch (the Steer tab's comparisons
    and capping): decoded texts after every step, then the result and whether Stop cut it."""
    watch = _StopWatch(should_stop) if should_stop is not None else None
    started = time.perf_counter()
    for update in generate_stream(
        model, [prompt] * len(plans), plans, cfg, keep_tokens=True, should_stop=watch
    ):
        texts = [model.decode(t) for t in update.tokens]
        res = update.result
        if res is None:
            yield SideBySideUpdate(texts, None, 0.0, False)
            continue
        # A stop asked together with the last token (or after every row's EOS) cut nothing.
        ran_out = all(res.finished) or res.steps >= cfg.max_new_tokens
        stopped = watch is not None and watch.asked and not ran_out
        yield SideBySideUpdate(texts, res, time.perf_counter() - started, stopped)


def texts_then_result(
    updates: Iterable[SideBySideUpdate],
    finish: Callable[[GenerationResult, float, bool], T],
) -> Iterator[tuple[list[str], T | None]]:
    """A side-by-side stream as its readers show it: the texts so far after every step, and
    with the last update ``finish(result, seconds, stopped)`` (the Steer tab's outputs, or
    capping's)."""
    for update in updates:
        if update.result is None:
            yield update.texts, None
        else:
            yield update.texts, finish(update.result, update.seconds, update.stopped)


def last_result(stream: Iterable[tuple[list[str], T | None]], what: str) -> T:
    """Run a :func:`texts_then_result` stream to its end and return what it finished with."""
    for _, out in stream:
        if out is not None:
            return out
    raise RuntimeError(f"{what} ended without a result")
