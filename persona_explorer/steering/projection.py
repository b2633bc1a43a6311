"""Pure projection math: how strongly activations point along a persona direction.

Projections are onto the unit vector ``v / |v|`` of each layer (persona_vectors' monitoring and
the Assistant Axis' ``project()`` both normalise), so values are in activation units and comparable
across strengths. A layer whose vector is zero projects to 0.

Imports: torch only.
"""

from __future__ import annotations

import torch


def unit_rows(vectors: torch.Tensor) -> torch.Tensor:
    """[n_layers, d_model] -> the same rows scaled to unit length (zero rows stay zero)."""
    v = vectors.float()
    norms = v.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, v / norms.clamp(min=1e-30), torch.zeros_like(v))


def layer_projections(acts: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``acts`` [..., n_layers, d_model] onto each layer's unit vector -> [..., n_layers]."""
    return (acts.float() * unit_rows(vectors)).sum(-1)


def token_projections(token_acts: torch.Tensor, vectors: torch.Tensor, layer: int) -> torch.Tensor:
    """``token_acts`` [n_tokens, n_layers, d_model] at one layer -> [n_tokens]."""
    return token_acts[:, layer].float() @ unit_rows(vectors)[layer]


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """[n, d_model] -> [n, n] cosine similarities (0 where a vector is zero)."""
    u = unit_rows(vectors)
    return u @ u.T
