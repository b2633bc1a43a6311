"""Steering operations on the residual stream, per batch row.

An operation acts on the residual after decoder block ``layer``
(``blocks.{layer}.hook_resid_post``):

* :class:`Add` — ``h += strength * vector``. ``vector`` is the raw mean-difference vector, so
  strength 1 adds the average persona difference (as in persona_vectors).
* :class:`Cap` — ``h += max(0, floor - <h, d>) * d`` with ``d`` the unit direction: the projection
  never falls below ``floor`` (activation capping, Assistant Axis).

``positions``: ``"all"`` edits every position; ``"response"`` edits what persona_vectors calls
response positions: the last prompt token during the prompt pass, then each decoded token.

A batch mixes rows with different operations (the baseline row has none). :func:`compile_plan`
turns per-row operation lists into per-layer tensors, so one forward pass steers every row its own
way. Layers where every row's edit is exactly zero are skipped, so strength 0 is bit-identical to
no steering. :func:`all_position_edits` is the part of a plan that reaches positions before the
response (what a prompt chunk before the last, or a teacher-forced prompt, gets).

Imports: torch and ``core`` (errors, limits).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import check_finite, check_layer

Positions = Literal["all", "response"]
POSITIONS: tuple[Positions, ...] = ("all", "response")


class SteeringError(InputError):
    """An operation that cannot apply to the loaded model; the message says how to fix it."""


@dataclass(frozen=True)
class Add:
    layer: int
    vector: torch.Tensor  # [d_model]
    strength: float
    positions: Positions = "all"


@dataclass(frozen=True)
class Cap:
    layer: int
    direction: torch.Tensor  # [d_model], normalised when compiled
    floor: float
    positions: Positions = "all"


Op = Add | Cap
RowPlan = tuple[Op, ...]  # the operations for one batch row; () is the unsteered baseline


def check_positions(value: object) -> Positions:
    """``value`` as a positions choice ("all" or "response"), the one rule for every caller."""
    if value not in POSITIONS:
        raise SteeringError(f"positions must be 'all' or 'response', not {value!r}.")
    return value  # type: ignore[return-value]


def validate_op(op: Op, n_layers: int, d_model: int) -> None:
    """Refuse an operation that cannot apply to this model (how strong a user may steer is a
    policy, checked where input enters: ``limits.check_strength``)."""
    # A float or bool layer would be filed under a key no hook looks up: nothing would steer.
    if isinstance(op.layer, bool) or not isinstance(op.layer, int):
        raise SteeringError(f"Layer must be a whole number, not {op.layer!r}.")
    check_layer(op.layer, n_layers)
    check_positions(op.positions)
    vec = op.vector if isinstance(op, Add) else op.direction
    if vec.shape != (d_model,):
        raise SteeringError(f"Vector has shape {tuple(vec.shape)}; this model needs ({d_model},).")
    if not torch.isfinite(vec).all():
        raise SteeringError("The vector contains NaN or infinite values.")
    check_finite(
        op.strength if isinstance(op, Add) else op.floor,
        "Strength" if isinstance(op, Add) else "Floor",
    )
    if isinstance(op, Cap) and float(vec.norm()) == 0.0:
        raise SteeringError("A cap needs a non-zero direction.")


@dataclass
class _CapSlot:
    direction: torch.Tensor  # [batch, d_model], unit rows (zero for rows without this cap)
    floor: torch.Tensor  # [batch]
    active: torch.Tensor  # [batch] 1.0 where this row is capped
    response_only: bool


@dataclass
class LayerEdit:
    add_all: torch.Tensor | None = None  # [batch, d_model]
    add_response: torch.Tensor | None = None  # [batch, d_model]
    caps: list[_CapSlot] = field(default_factory=list)

    def apply(self, h: torch.Tensor, prompt_pass: bool) -> torch.Tensor:
        """``h``: [batch, seq, d_model]. In the prompt pass, response edits hit the last token."""
        if self.add_all is not None:
            h = h + self.add_all[:, None, :]
        if self.add_response is not None:
            if prompt_pass:
                h = h.clone()
                h[:, -1] += self.add_response
            else:
                h = h + self.add_response[:, None, :]
        for cap in self.caps:
            target = h[:, -1:] if (cap.response_only and prompt_pass) else h
            proj = (target * cap.direction[:, None, :]).sum(-1, keepdim=True)
            lift = (cap.floor[:, None, None] - proj).clamp(min=0) * cap.active[:, None, None]
            delta = lift * cap.direction[:, None, :]
            if cap.response_only and prompt_pass:
                h = h.clone()
                h[:, -1:] += delta
            else:
                h = h + delta
        return h


def compile_plan(
    plans: Sequence[RowPlan],
    n_layers: int,
    d_model: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[int, LayerEdit]:
    """Per-layer edit tensors for a batch whose row ``b`` follows ``plans[b]``."""
    batch = len(plans)
    edits: dict[int, LayerEdit] = {}
    for row, plan in enumerate(plans):
        for op in plan:
            validate_op(op, n_layers, d_model)
            edit = edits.setdefault(op.layer, LayerEdit())
            if isinstance(op, Add):
                if op.strength == 0.0:
                    continue
                delta = (op.strength * op.vector.to(torch.float32)).to(device, dtype)
                if not torch.isfinite(delta).all():
                    raise SteeringError(
                        f"Strength {op.strength:g} times this vector overflows {dtype}: "
                        "use a smaller strength."
                    )
                attr = "add_all" if op.positions == "all" else "add_response"
                current = getattr(edit, attr)
                if current is None:
                    current = torch.zeros(batch, d_model, device=device, dtype=dtype)
                    setattr(edit, attr, current)
                current[row] += delta
            else:
                unit = op.direction.to(torch.float32)
                unit = (unit / unit.norm()).to(device, dtype)
                slot = _CapSlot(
                    direction=torch.zeros(batch, d_model, device=device, dtype=dtype),
                    floor=torch.zeros(batch, device=device, dtype=dtype),
                    active=torch.zeros(batch, device=device, dtype=dtype),
                    response_only=op.positions == "response",
                )
                slot.direction[row] = unit
                slot.floor[row] = op.floor
                slot.active[row] = 1.0
                edit.caps.append(slot)
    return {
        layer: e
        for layer, e in edits.items()
        if e.add_all is not None or e.add_response is not None or e.caps
    }


def all_position_edits(edits: Mapping[int, LayerEdit]) -> dict[int, LayerEdit]:
    """What of ``edits`` applies at positions before the response: the ``positions="all"``
    additions and caps (layers left with nothing are dropped). A prompt chunk before the last
    gets these in generation, and a teacher-forced pass gives them to the positions before
    its steered ones; response-position edits touch only the prompt's last token on."""
    out: dict[int, LayerEdit] = {}
    for layer, edit in edits.items():
        caps = [cap for cap in edit.caps if not cap.response_only]
        if edit.add_all is not None or caps:
            out[layer] = LayerEdit(add_all=edit.add_all, caps=caps)
    return out


@contextlib.contextmanager
def hf_layer_addition(layer: torch.nn.Module, add: torch.Tensor) -> Iterator[None]:
    """Add ``add`` [d_model] to the output of a plain HF decoder layer (the residual after it) at
    every position, while the block lasts; the hook is always removed.

    The one edit made outside the bridge and the decoders: fine-tuning trains a plain HF copy of
    the weights (peft cannot wrap the bridge's modules), and preventive steering adds the persona
    vector to that copy's residual stream during training."""

    def hook(_module: Any, _inputs: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            return (out[0] + add, *out[1:])
        return out + add

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def steering_hooks(
    model: Any, plans: Sequence[RowPlan], prompt_pass: bool = True
) -> Iterator[dict[int, LayerEdit]]:
    """Steer every forward of the model's TransformerLens bridge inside the ``with`` block.

    For research use with the bridge's own API (``run_with_cache``, ``generate``): the batch rows
    of those calls follow ``plans``. The hooks are removed on exit, also after an exception.

    The block holds the model's compute lock: the hooks sit on the shared bridge, so in a
    server every other request waits until the block ends instead of being steered by it. The
    lock is re-entrant, so the project's own generation functions still work inside the block.
    """
    bridge = model.bridge
    edits = compile_plan(
        plans, model.n_layers, model.d_model, device=model.device, dtype=model.dtype
    )

    def make(edit: LayerEdit) -> Any:
        def hook(h: torch.Tensor, hook: Any) -> torch.Tensor:
            return edit.apply(h, prompt_pass=prompt_pass and h.shape[1] > 1)

        return hook

    fwd_hooks = [(f"blocks.{layer}.hook_resid_post", make(e)) for layer, e in edits.items()]
    with model.compute_lock, bridge.hooks(fwd_hooks=fwd_hooks):
        yield edits


def add_plan(
    vector_rows: torch.Tensor,
    layers: Sequence[int],
    strength: float,
    positions: Positions = "all",
) -> RowPlan:
    """The usual steering: add ``strength * vectors[layer]`` at each of ``layers``."""
    return tuple(
        Add(int(layer), vector_rows[int(layer)], float(strength), positions) for layer in layers
    )
