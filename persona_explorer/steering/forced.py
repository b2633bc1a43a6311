"""Teacher-forced reading: run given tokens through the model and average the residual over a span.

Generation (:mod:`.generation`) reads the residuals of the tokens the model *chose*. Screening a
training sample, or replaying a recorded conversation, needs the residuals of tokens someone
else wrote: the whole text is fed in one prompt pass (prompt and response together) and the
residual of each response position is the one the model would have had, had it produced that
token itself. Causal attention makes that exact: a position never sees what follows it.

A row is token ids and a span ``[start, end)`` of them (usually the response), or several spans
of the same ids (a replayed conversation reads each assistant turn of one text in one pass:
causal attention makes each span's residuals those of a pass of its own). :func:`forced_pass`
runs a batch of rows (left-padded like generation) in chunks of the prompt pass, each chunk under
the model's compute lock and in inference mode, and returns the mean residual over each span at
every layer, optionally every span token's residual at one layer. Between chunks other requests
take their turn and ``should_stop`` is honoured, as in generation.

Reading one layer needs only the blocks up to it. With ``last_layer``, a batch that fits in one
chunk stops right after that block (the residual callback raises, which every decoder allows:
the session is closed at once and its hooks removed); on the embedded model, reading layer 14 of
30 this way skips about half the work. A batch of several chunks runs every block, since the
next chunk continues the session's cache, but still reports only the layers asked for.

Rows that begin alike (every screened sample starts with the chat template and the same system
prompt: about a quarter of its tokens on the teaching set) share that prefix: where the decoder
can (``shares_prefix``), the batch is laid out ``prefix | padding | rest`` and the prefix runs
once, for one row, filling every row's cache. The rest of each row sees the same keys at the
same rotary positions as with left padding; the means agree within float rounding.

:func:`chat_row` builds a row from a chat: the prompt through ``model.chat_ids`` (the template,
ending with the assistant's turn header), then the response text tokenized on its own, exactly
the tokens the model would have had to produce. The template's end-of-turn token
(``<|im_end|>`` for SmolLM2) is not appended: it would come after the span, where causal attention
cannot let it change the span's residuals, and it is not part of what the response says.

Steering plans apply as in generation: ``positions="all"`` edits every position;
``positions="response"`` edits what generation edits, the last prompt token and every response
token, i.e. the positions from ``start - 1`` on. A teacher-forced span mean therefore equals the
response mean generation captures for the same tokens, within float rounding (a test checks it).
A row's ``steer_from`` moves where response edits begin: 0 edits every position (a replay, where
none of the text is generated, reads it as the steered model would).

Imports: torch, the engine (``decoder_for``, the model), :mod:`.generation` (padding and the
chunk size), :mod:`.ops`, ``core`` (errors, limits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import check_int, check_layer, check_prompt_tokens
from persona_explorer.engine import EMBED_LAYER, decoder_for
from persona_explorer.engine.model import ChatMessage, LoadedModel
from persona_explorer.steering.generation import PREFILL_CHUNK, left_pad
from persona_explorer.steering.ops import LayerEdit, RowPlan, all_position_edits, compile_plan

__all__ = [
    "ForcedResult",
    "ForcedRow",
    "chat_row",
    "forced_pass",
    "response_ids",
]


@dataclass(frozen=True)
class ForcedRow:
    """Token ids and the span ``[start, end)`` whose residuals are averaged.

    ``more_spans``: further spans of the same ids, each averaged on its own in the same pass
    (:class:`ForcedResult` lists a row's spans in the order of :attr:`spans`). ``steer_from``:
    the first position response edits reach; None: ``start - 1``, what generation edits."""

    ids: tuple[int, ...]
    start: int
    end: int
    more_spans: tuple[tuple[int, int], ...] = ()
    steer_from: int | None = None

    def __post_init__(self) -> None:
        if not self.ids:
            raise InputError("A teacher-forced row needs at least one token.")
        for lo, hi in self.spans:
            if not 0 <= lo <= hi <= len(self.ids):
                raise ValueError(f"span [{lo}, {hi}) is outside {len(self.ids)} tokens")
        if self.steer_from is not None and not 0 <= self.steer_from <= len(self.ids):
            raise ValueError(f"steer_from {self.steer_from} is outside {len(self.ids)} tokens")

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """Every span read: ``[start, end)`` first, then :attr:`more_spans`."""
        return ((self.start, self.end), *self.more_spans)

    @property
    def span_length(self) -> int:
        return self.end - self.start

    @property
    def steer_start(self) -> int:
        """Where response edits begin (``-1`` for a row with no prompt: every position)."""
        return self.start - 1 if self.steer_from is None else self.steer_from


@dataclass
class ForcedResult:
    """One entry per span: the rows in order, each row's :attr:`ForcedRow.spans` in order (with
    one span a row, the usual case, entry ``b`` is row ``b``)."""

    # [spans, layers, d_model] float32, layers = n_layers or last_layer + 1; zero for an empty span
    span_mean: torch.Tensor
    span_count: torch.Tensor  # [spans] tokens in each span
    # With token_layer: each span's residuals at that layer, [span_length, d_model] float32.
    span_tokens: list[torch.Tensor] | None
    stopped: bool  # should_stop cut the pass short: the means cover only the chunks that ran
    # With logprobs: each span's log-probability of every token given what precedes it,
    # [span_length] float32, under the model as steered by the row's plan.
    span_logprobs: list[torch.Tensor] | None = None

    def perplexity(self) -> list[float]:
        """exp(mean negative log-likelihood) of each span (needs ``logprobs``); an empty span
        has perplexity 1."""
        if self.span_logprobs is None:
            raise ValueError("this pass read no log-probabilities (logprobs=False)")
        return [float(torch.exp(-lp.mean())) if lp.numel() else 1.0 for lp in self.span_logprobs]


def response_ids(model: LoadedModel, text: str) -> list[int]:
    """The tokens of a response text on its own: no BOS, no end-of-turn token."""
    return [int(i) for i in model.tokenizer(text, add_special_tokens=False).input_ids]


def chat_row(
    model: LoadedModel,
    prompt: str | Sequence[ChatMessage],
    response: str | Sequence[int],
    system: str | None = None,
) -> ForcedRow:
    """The row for a chat prompt (and system prompt) answered by ``response`` (text or ids);
    the span is exactly the response's tokens."""
    head = model.chat_ids(prompt, system)
    tail = (
        response_ids(model, response) if isinstance(response, str) else [int(i) for i in response]
    )
    return ForcedRow(ids=tuple(head + tail), start=len(head), end=len(head) + len(tail))


class _Enough(Exception):
    """Raised by the reader after the last layer it needs, to end a one-chunk pass early."""


class _SpanReader:
    """The residual callback: steers, then sums each span's positions at the layers read."""

    def __init__(
        self,
        model: LoadedModel,
        edits: dict[int, LayerEdit],
        span_mask: torch.Tensor,
        steer_mask: torch.Tensor,
        token_layer: int | None,
        n_read: int,
    ) -> None:
        batch, spans = span_mask.shape[:2]
        self.edits = edits
        self.body = all_position_edits(edits)
        self.span_mask = span_mask.to(model.device, torch.float32)  # [batch, spans, width]
        self.steer_mask = steer_mask.to(model.device)  # [batch, width] bool
        self.steer_all = bool(steer_mask.all())  # every position gets the whole edit
        self.n_read = n_read  # layers 0 .. n_read - 1 are summed
        self.sums = torch.zeros(batch, spans, n_read, model.d_model, device=model.device)
        self.token_layer = token_layer
        self.token_parts: list[torch.Tensor] = []  # [batch, chunk, d] per chunk, at token_layer
        self.chunk = slice(0, 0)
        self.stop_early = False  # set for a one-chunk pass: nothing after n_read is needed
        self.in_prefix = False  # h is the one row of a shared prefix

    def __call__(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        if layer >= self.n_read:
            return h
        edit = self.edits.get(layer)
        # A shared prefix lies before every steered position (see _shared_prefix).
        if edit is not None and not self.in_prefix:
            # Response edits go where generation puts them: the last prompt token and each
            # response token (or from the row's steer_from on); everything else gets the
            # all-position part only.
            steered = edit.apply(h, prompt_pass=False)
            if self.steer_all:
                h = steered
            else:
                part = self.body.get(layer)
                body = h if part is None else part.apply(h, prompt_pass=False)
                h = torch.where(self.steer_mask[:, self.chunk, None], steered, body)
        if layer == EMBED_LAYER:
            return h
        mask = self.span_mask[:, :, self.chunk]
        if bool(mask.any()):
            # One batched matmul: no [batch, chunk, d] temporary, as (h * mask).sum(1) makes.
            self.sums[:, :, layer] += torch.matmul(mask, h.float())
        if layer == self.token_layer:
            # The shared prefix runs as one row; every row has the same residuals there.
            self.token_parts.append(h.float().expand(self.sums.shape[0], -1, -1).clone())
        if self.stop_early and layer == self.n_read - 1:
            raise _Enough
        return h


# Logits held at once by a pass that reads log-probabilities: batch x chunk x vocabulary numbers
# (2**24 float32 is 64 MB; with the log-softmax beside it, twice that).
LOGIT_BUDGET = 2**24


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position: logits [batch, chunk, vocab], targets [batch, chunk]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.to(logp.device)[..., None])[..., 0].cpu()


# Below this many shared tokens a separate pass for them saves less than it costs.
MIN_SHARED_PREFIX = 8


def _shared_prefix(
    rows: Sequence[ForcedRow], edits: dict[int, LayerEdit], logprobs: bool = False
) -> int:
    """How many leading tokens every row has in common and may run once for all.

    Only tokens before every span, and before every steered position, qualify; an edit that
    reaches every position (``positions="all"``) rules the prefix out, since the one shared
    pass cannot carry per-row edits. With ``logprobs`` the prefix also stops before the token
    that predicts each span's first token (the shared pass returns no logits). 0 when too short
    to pay off, or for a single row."""
    if len(rows) < 2 or any(
        e.add_all is not None or any(not c.response_only for c in e.caps) for e in edits.values()
    ):
        return 0
    limit = min(lo for r in rows for lo, _ in r.spans) - (1 if logprobs else 0)
    if edits:
        limit = min(limit, min(r.steer_start for r in rows))
    limit = min(limit, min(len(r.ids) for r in rows) - 1)
    first = rows[0].ids
    n = 0
    while n < limit and all(r.ids[n] == first[n] for r in rows):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def _pad(rows: Sequence[ForcedRow], shared: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask of the batch: left-padded, or with a shared prefix, ``prefix | padding |
    rest``. Rotary positions follow the mask, so a row's tokens get the same positions either
    way, and every token after the prefix sits in the same column as with left padding."""
    if not shared:
        return left_pad([r.ids for r in rows], pad_id)
    ids, mask = left_pad([r.ids[shared:] for r in rows], pad_id)
    head = torch.tensor(rows[0].ids[:shared], dtype=torch.long)
    return (
        torch.cat([head.expand(len(rows), -1), ids], dim=1),
        torch.cat([torch.ones(len(rows), shared, dtype=torch.long), mask], dim=1),
    )


def forced_pass(
    model: LoadedModel,
    rows: Sequence[ForcedRow],
    plans: Sequence[RowPlan] | None = None,
    *,
    token_layer: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    chunk: int | None = None,
    max_tokens: int | None = None,
    last_layer: int | None = None,
    logprobs: bool = False,
) -> ForcedResult:
    """Run ``rows`` together (one batch, left-padded) and average each span's residuals.

    ``plans[b]`` steers row ``b`` (None: no steering). ``token_layer``: also return each span's
    per-token residuals at that layer. The pass runs in chunks of ``chunk`` positions
    (default :data:`generation.PREFILL_CHUNK`), so memory grows with ``batch x chunk x width``
    at most, never ``width x width``; the caller bounds the batch. ``max_tokens``: the policy cap
    on a row's length (``Limits.max_prompt_tokens`` or a screening cap); the model's context
    length always applies. A refused row raises :class:`InputError` before any work.
    ``last_layer``: read layers ``0..last_layer`` only (``span_mean`` has ``last_layer + 1``
    layers); a one-chunk batch then skips the blocks after it (see the module doc).
    """
    if not rows:
        raise InputError("Nothing to read: no rows were given.")
    if plans is None:
        plans = [()] * len(rows)
    if len(plans) != len(rows):
        raise ValueError("One steering plan per row is needed.")
    if token_layer is not None:
        token_layer = check_layer(token_layer, model.n_layers, "Token layer")
    n_read = model.n_layers
    if last_layer is not None:
        n_read = check_layer(last_layer, model.n_layers, "Last layer") + 1
        if token_layer is not None and token_layer >= n_read:
            raise ValueError(f"token_layer {token_layer} is after last_layer {last_layer}")
    step = PREFILL_CHUNK if chunk is None else check_int(chunk, "chunk", 1)
    # Nothing is generated after the rows; max_new_tokens=0 leaves the whole context to them.
    check_prompt_tokens(
        max(len(r.ids) for r in rows), 0, model.context_length, max_tokens, "sample"
    )
    edits = compile_plan(
        plans, model.n_layers, model.d_model, device=model.device, dtype=model.dtype
    )
    decoder = decoder_for(model)
    shared = (
        _shared_prefix(rows, edits, logprobs) if getattr(decoder, "shares_prefix", False) else 0
    )
    ids, mask = _pad(rows, shared, model.pad_token_id)
    width = ids.shape[1]
    position = torch.arange(width)
    # Every position from the prefix on lies where left padding would put it (see _pad).
    pad = torch.tensor([width - len(r.ids) for r in rows])[:, None]
    # Rows with fewer spans than the most get empty ones ([0, 0): nothing is summed there).
    n_spans = max(len(r.spans) for r in rows)
    bounds = torch.tensor(
        [[*r.spans, *[(0, 0)] * (n_spans - len(r.spans))] for r in rows]
    )  # [batch, spans, 2]
    starts = pad[:, :, None] + bounds[:, :, :1]
    ends = pad[:, :, None] + bounds[:, :, 1:]
    span_mask = (position >= starts) & (position < ends)  # [batch, spans, width]
    # Generation steers the last prompt token with response edits too (see the module doc).
    steer_from = torch.tensor([r.steer_start for r in rows])[:, None]
    steer_mask = position >= (pad + steer_from).clamp(min=0)
    reader = _SpanReader(model, edits, span_mask, steer_mask, token_layer, n_read)
    session = decoder.session(ids, mask, 0, row_invariant=False)
    stopped = False
    try:
        if shared:
            reader.chunk, reader.in_prefix = slice(0, shared), True
            with model.compute_lock, torch.inference_mode():
                session.prefill_shared(shared, reader)  # type: ignore[attr-defined]
            reader.in_prefix = False
        # A pass that is not continued may end after the last layer read.
        reader.stop_early = width - shared <= step and n_read < model.n_layers and not logprobs
        if logprobs:
            vocab = int(model.hf_model.config.vocab_size)
            step = max(1, min(step, LOGIT_BUDGET // (len(rows) * vocab)))
            targets = torch.cat([ids[:, 1:], ids.new_zeros(len(rows), 1)], dim=1)
            # Column c's logits predict column c + 1: count them where c + 1 is in the span.
            predicts = torch.cat(
                [span_mask[:, :, 1:], span_mask.new_zeros(len(rows), n_spans, 1)], dim=2
            )
            picked = torch.zeros(len(rows), width)
        for begin in range(shared, width, step):
            if begin > shared and should_stop is not None and should_stop():
                stopped = True
                break
            end = min(begin + step, width)
            reader.chunk = slice(begin, end)
            # Per chunk, like generation: other requests get the model between chunks.
            with model.compute_lock, torch.inference_mode():
                try:
                    logits = session.prefill(reader, start=begin, end=end, all_logits=logprobs)
                except _Enough:
                    break  # only when stop_early: this was the one and only chunk
                if logprobs:
                    picked[:, begin:end] = _token_logprobs(logits, targets[:, begin:end])
    finally:
        session.close()
    # Each row's spans, in order: (row, span) pairs into the [batch, spans] grid.
    kept = [(b, j) for b, r in enumerate(rows) for j in range(len(r.spans))]
    with torch.inference_mode():
        counts = span_mask.sum(-1).to(reader.sums.device, torch.float32)
        means = reader.sums / counts.clamp(min=1)[:, :, None, None]
        if len(kept) == len(rows) * n_spans:  # every row has every span: no gaps to skip
            means, counts = means.flatten(0, 1), counts.flatten(0, 1)
        else:
            flat = torch.tensor([b * n_spans + j for b, j in kept], device=means.device)
            means, counts = means.flatten(0, 1)[flat], counts.flatten(0, 1)[flat]
        tokens = None
        if token_layer is not None and not stopped:
            full = torch.cat(reader.token_parts, dim=1)  # [batch, width, d]
            tokens = [full[b, span_mask[b, j].to(full.device)].clone() for b, j in kept]
        span_lp = None
        if logprobs and not stopped:
            span_lp = [picked[b, predicts[b, j]].clone() for b, j in kept]
    return ForcedResult(
        span_mean=means,
        span_count=counts,
        span_tokens=tokens,
        stopped=stopped,
        span_logprobs=span_lp,
    )
