"""The Assistant Axis (Lu et al., 2026): pure math on role activations, and its file.

Role vectors are mean response activations per role; the axis is mean(default Assistant) −
mean(role vectors) at every layer. A capping floor τ is a percentile of the default Assistant's
per-token projections, kept as a table of quantiles (:meth:`AxisData.floors`, the one floor
method). Nothing here runs a model: :mod:`.build` does the rollouts.

Imports: torch, safetensors, ``core`` and ``steering.ops`` (a cap plan is steering operations).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from persona_explorer.core.errors import InputError
from persona_explorer.core.fileio import atomic_write
from persona_explorer.core.limits import check_finite, check_layer
from persona_explorer.steering.ops import Cap, Positions, RowPlan

# 0, 5, ..., 100: enough to interpolate any percentile a cap floor might use.
QUANTILE_LEVELS: tuple[float, ...] = tuple(float(p) for p in range(0, 101, 5))
FORMAT = "persona-explorer-axis"
FORMAT_VERSION = 1
# The embedded model's file is ~2 MB (275 roles would be ~20 MB); 2 GB of floats means a broken
# or hostile file, not an axis.
MAX_AXIS_FILE_BYTES = 512 * 1024 * 1024
MAX_ROLES = 10_000
MAX_LAYERS = 1_000
MAX_D_MODEL = 65_536


DEFAULT_CAP_PERCENTILE = 25.0


def default_axis_layer(n_layers: int) -> int:
    """The layer axis projections are read at by default: the middle of the stack.

    On the embedded model the roles separate best from the default at layers 15-27 and
    cos(PC1, axis) is high from layer 8 up (FACTS.md); the middle is inside both ranges, and
    for any depth it avoids the first layers (where the axis is mostly token identity) and the
    last ones (where it is mostly the next-token prediction).
    """
    return n_layers // 2


def default_cap_layers(n_layers: int) -> tuple[int, ...]:
    """The window of layers capping acts on by default: an eighth of the stack (at least 2
    layers), starting at the middle; the paper capped 8 of Qwen3-32B's 64 layers in its
    middle-to-late range. 15-18 on the embedded model's 30 layers."""
    width = max(2, round(n_layers / 8))
    start = min(n_layers // 2, max(0, n_layers - width))
    return tuple(range(start, min(n_layers, start + width)))


def check_percentile(value: object, what: str = "Cap percentile") -> float:
    """A percentile in [0, 100] (a NaN or a string is refused with a clear message)."""
    try:
        p = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number from 0 to 100, not {value!r}.") from None
    check_finite(p, what)
    if not 0 <= p <= 100:
        raise InputError(f"{what} must be from 0 to 100, not {p:g}.")
    return p


class AxisFileError(InputError):
    """An axis file is missing, malformed or does not fit the shapes it claims."""


def assistant_axis(default_mean: torch.Tensor, role_vectors: torch.Tensor) -> torch.Tensor:
    """mean(default) − mean(roles) per layer: [n_layers, d] and [n_roles, n_layers, d]."""
    if default_mean.shape != role_vectors.shape[1:]:
        raise ValueError(f"shapes differ: {tuple(default_mean.shape)} vs {role_vectors.shape}")
    return default_mean.float() - role_vectors.float().mean(0)


def project(acts: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """⟨h, â⟩ per layer: ``acts`` [..., n_layers, d], ``axis`` [n_layers, d] -> [..., n_layers]."""
    unit = axis.float() / axis.float().norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return (acts.float() * unit).sum(-1)


def normalised_projection(
    proj: torch.Tensor, roles_mean_proj: torch.Tensor, default_proj: torch.Tensor
) -> torch.Tensor:
    """0 = the roles' mean, 1 = the default Assistant, per layer (last axis = layers).

    Raw projections grow with depth (the residual norm rises ~25x through the embedded model),
    so only this scale makes layers comparable.
    """
    span = default_proj - roles_mean_proj
    span = torch.where(span.abs() < 1e-12, torch.full_like(span, 1e-12), span)
    return (proj - roles_mean_proj) / span


def pca(data: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of ``data`` [n, d] -> (components [k, d], explained variance ratio [k], coords [n, k]).

    Components are unit rows; the sign of each is arbitrary, as with any SVD.
    """
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError("pca needs [n >= 2, d] data")
    x = data.double() - data.double().mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = max(1, min(k, vh.shape[0]))
    var = s**2
    total = var.sum().clamp(min=1e-300)
    comps = vh[:k]
    return comps.float(), (var[:k] / total).float(), (x @ comps.T).float()


def pc1_axis_cosine(role_vectors: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """|cos(PC1 of the role vectors, axis)| per layer -> [n_layers] (PC1's sign is arbitrary)."""
    out = []
    for layer in range(axis.shape[0]):
        comps, _, _ = pca(role_vectors[:, layer], 1)
        a = axis[layer].float()
        out.append((comps[0] @ a).abs() / a.norm().clamp(min=1e-12))
    return torch.stack(out)


def pc1_variance(role_vectors: torch.Tensor) -> torch.Tensor:
    """Share of the role vectors' variance along PC1, per layer -> [n_layers]."""
    return torch.stack([pca(role_vectors[:, i], 1)[1][0] for i in range(role_vectors.shape[1])])


def token_quantiles(
    token_projections: torch.Tensor, levels: Sequence[float] = QUANTILE_LEVELS
) -> torch.Tensor:
    """``token_projections`` [n_tokens, n_layers] -> [len(levels), n_layers]."""
    q = torch.tensor([p / 100 for p in levels], dtype=torch.float64)
    return torch.quantile(token_projections.double(), q, dim=0).float().contiguous()


def _interpolate_quantiles(table: torch.Tensor, percentile: float) -> torch.Tensor:
    if not 0 <= percentile <= 100:
        raise ValueError("percentile must be in [0, 100]")
    step = 100 / (table.shape[0] - 1)
    pos = percentile / step
    lo = min(math.floor(pos), table.shape[0] - 1)
    hi = min(lo + 1, table.shape[0] - 1)
    w = pos - lo
    return table[lo] * (1 - w) + table[hi] * w


@dataclass(frozen=True)
class AxisData:
    model_id: str
    roles: tuple[str, ...]
    role_vectors: torch.Tensor  # [n_roles, n_layers, d_model]
    default_vector: torch.Tensor  # [n_layers, d_model]
    axis: torch.Tensor  # [n_layers, d_model]
    default_token_quantiles: torch.Tensor  # [len(QUANTILE_LEVELS), n_layers]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role_vectors.ndim != 3:
            raise AxisFileError("role_vectors must be [n_roles, n_layers, d_model]")
        n_roles, n_layers, d = self.role_vectors.shape
        if len(self.roles) != n_roles:
            raise AxisFileError(f"{len(self.roles)} role names for {n_roles} role vectors")
        for name, t, shape in (
            ("default_vector", self.default_vector, (n_layers, d)),
            ("axis", self.axis, (n_layers, d)),
            (
                "default_token_quantiles",
                self.default_token_quantiles,
                (len(QUANTILE_LEVELS), n_layers),
            ),
        ):
            if tuple(t.shape) != shape:
                raise AxisFileError(f"{name} has shape {tuple(t.shape)}, expected {shape}")

    @property
    def n_layers(self) -> int:
        return int(self.axis.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.axis.shape[1])

    def floors(self, percentile: float = 25) -> torch.Tensor:
        """τ per layer: the percentile of the default's per-token projections (interpolated)."""
        return _interpolate_quantiles(self.default_token_quantiles, percentile)

    def cap_plan(
        self,
        layers: Sequence[int] | None = None,
        percentile: float = DEFAULT_CAP_PERCENTILE,
        positions: Positions = "all",
    ) -> RowPlan:
        """Activation capping as steering operations: at each of ``layers`` (default
        :func:`default_cap_layers`), keep the projection on the axis at or above τ, the
        ``percentile`` of the default Assistant's per-token projections there."""
        chosen = default_cap_layers(self.n_layers) if layers is None else tuple(layers)
        if not chosen:
            raise InputError("Capping needs at least one layer.")
        floors = self.floors(check_percentile(percentile))
        return tuple(
            Cap(
                check_layer(layer, self.n_layers), self.axis[layer], float(floors[layer]), positions
            )
            for layer in chosen
        )

    def save(self, path: str | Path) -> Path:
        tensors = {
            "role_vectors": self.role_vectors.float().contiguous(),
            "default_vector": self.default_vector.float().contiguous(),
            "axis": self.axis.float().contiguous(),
            "default_token_quantiles": self.default_token_quantiles.float().contiguous(),
        }
        header = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "model_id": self.model_id,
            "roles": json.dumps(list(self.roles)),
            "metadata": json.dumps(self.metadata),
        }
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(target, lambda tmp: save_file(tensors, str(tmp), metadata=header))

    @classmethod
    def load(cls, path: str | Path) -> AxisData:
        p = Path(path)
        try:
            size = p.stat().st_size
        except OSError as exc:
            raise AxisFileError(f"cannot read axis file {p}: {exc.strerror}") from None
        if size > MAX_AXIS_FILE_BYTES:
            raise AxisFileError(f"{p} is {size} bytes, over the {MAX_AXIS_FILE_BYTES} limit")
        try:
            with safe_open(str(p), framework="pt") as f:
                header = f.metadata() or {}
                if header.get("format") != FORMAT:
                    raise AxisFileError(f"{p} is not an axis file")
                # Shapes are checked from the header before any tensor is read.
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
                _check_shapes(shapes, p)
                tensors = {k: f.get_tensor(k).float() for k in shapes}
            roles = json.loads(header.get("roles", "[]"))
            metadata = json.loads(header.get("metadata", "{}"))
        except AxisFileError:
            raise
        # safetensors raises its own SafetensorError (not an OSError) for a malformed header.
        except Exception as exc:
            raise AxisFileError(f"{p} is not a readable axis file: {exc}") from None
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AxisFileError(f"{p}: roles must be a list of names")
        if not isinstance(metadata, dict):
            raise AxisFileError(f"{p}: metadata must be a JSON object")
        for name, t in tensors.items():
            if not torch.isfinite(t).all():
                raise AxisFileError(f"{p}: {name} has non-finite values")
        return cls(
            model_id=str(header.get("model_id", "")),
            roles=tuple(roles),
            role_vectors=tensors["role_vectors"],
            default_vector=tensors["default_vector"],
            axis=tensors["axis"],
            default_token_quantiles=tensors["default_token_quantiles"],
            metadata=metadata,
        )


def _check_shapes(shapes: dict[str, tuple[int, ...]], p: Path) -> None:
    need = {"role_vectors", "default_vector", "axis", "default_token_quantiles"}
    if set(shapes) != need:
        raise AxisFileError(f"{p} holds {sorted(shapes)}, expected {sorted(need)}")
    rv = shapes["role_vectors"]
    if len(rv) != 3 or not (
        1 <= rv[0] <= MAX_ROLES and 1 <= rv[1] <= MAX_LAYERS and 1 <= rv[2] <= MAX_D_MODEL
    ):
        raise AxisFileError(f"{p}: role_vectors has an impossible shape {rv}")
    expected = {
        "default_vector": rv[1:],
        "axis": rv[1:],
        "default_token_quantiles": (len(QUANTILE_LEVELS), rv[1]),
    }
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise AxisFileError(f"{p}: {name} has shape {shapes[name]}, expected {shape}")
