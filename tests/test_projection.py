"""Projection math on synthetic tensors: onto unit directions, zero vectors project to 0."""

from __future__ import annotations

import math

import torch

from persona_explorer.steering.projection import (
    cosine_matrix,
    layer_projections,
    token_projections,
    unit_rows,
)

N_LAYERS, D = 3, 4


def persona_rows() -> torch.Tensor:
    """Layer 0 along e0 (length 2), layer 1 zero, layer 2 along e1 + e2 (length sqrt 2)."""
    v = torch.zeros(N_LAYERS, D)
    v[0, 0] = 2.0
    v[2, 1] = v[2, 2] = 1.0
    return v


def test_unit_rows() -> None:
    u = unit_rows(persona_rows())
    assert torch.equal(u[0], torch.tensor([1.0, 0, 0, 0]))
    assert torch.equal(u[1], torch.zeros(D))  # a zero row stays zero, no NaN
    torch.testing.assert_close(u[2], torch.tensor([0, 1.0, 1.0, 0]) / math.sqrt(2))
    assert u.dtype == torch.float32
    assert unit_rows(persona_rows().double()).dtype == torch.float32


def test_layer_projections_by_hand() -> None:
    acts = torch.tensor(
        [
            [[3.0, 5, 0, 0], [9, 9, 9, 9], [0, 1, 3, 7]],
            [[-1.0, 0, 0, 2], [1, 1, 1, 1], [0, -2, 0, 0]],
        ]
    )  # [batch 2, n_layers, d]
    got = layer_projections(acts, persona_rows())
    expected = torch.tensor([[3.0, 0.0, 4 / math.sqrt(2)], [-1.0, 0.0, -2 / math.sqrt(2)]])
    torch.testing.assert_close(got, expected)
    # Only the direction counts, not the length of the persona vector ...
    torch.testing.assert_close(layer_projections(acts, 7.5 * persona_rows()), expected)
    # ... and the sign of the vector flips the sign of the projection.
    torch.testing.assert_close(layer_projections(acts, -persona_rows()), -expected)
    # Any leading shape: [n_layers, d] -> [n_layers], [a, b, n_layers, d] -> [a, b, n_layers].
    assert layer_projections(acts[0], persona_rows()).shape == (N_LAYERS,)
    assert layer_projections(acts[None].repeat(5, 1, 1, 1), persona_rows()).shape == (5, 2, 3)


def test_layer_projections_of_half_precision_acts_are_float32() -> None:
    acts = torch.randn(2, N_LAYERS, D, generator=torch.Generator().manual_seed(0))
    got = layer_projections(acts.half(), persona_rows())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, layer_projections(acts.half().float(), persona_rows()))


def test_token_projections() -> None:
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(6, N_LAYERS, D, generator=gen)  # [n_tokens, n_layers, d]
    v = persona_rows()
    torch.testing.assert_close(token_projections(tokens, v, 0), tokens[:, 0, 0])
    assert torch.equal(token_projections(tokens, v, 1), torch.zeros(6))
    torch.testing.assert_close(
        token_projections(tokens, v, 2), (tokens[:, 2, 1] + tokens[:, 2, 2]) / math.sqrt(2)
    )
    # Consistent with the per-layer view of the same tokens.
    for layer in range(N_LAYERS):
        torch.testing.assert_close(
            token_projections(tokens, v, layer), layer_projections(tokens, v)[:, layer]
        )
    assert token_projections(tokens[:0], v, 0).shape == (0,)


def test_cosine_matrix() -> None:
    v = torch.tensor([[1.0, 0, 0], [0, 3, 0], [2, 2, 0], [0, 0, 0], [-5, 0, 0]])
    got = cosine_matrix(v)
    s = 1 / math.sqrt(2)
    expected = torch.tensor(
        [
            [1, 0, s, 0, -1],
            [0, 1, s, 0, 0],
            [s, s, 1, 0, -s],
            [0, 0, 0, 0, 0],  # the zero vector: 0 everywhere, its diagonal included
            [-1, 0, -s, 0, 1],
        ]
    )
    torch.testing.assert_close(got, expected)
    assert torch.equal(got, got.T)
    assert not got.isnan().any()
