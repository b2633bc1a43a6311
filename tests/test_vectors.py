"""Tests for persona_explorer.vectors: the PersonaVector value, describe and check_fits."""

from __future__ import annotations

import json

import pytest
import torch

from persona_explorer.core.errors import InputError
from persona_explorer.vectors.persona_vector import (
    LAYER_CONVENTION,
    PersonaVector,
    VectorMismatchError,
    check_fits,
    describe,
)

N_LAYERS, D_MODEL = 8, 16


def planted(n_layers: int = N_LAYERS, d_model: int = D_MODEL) -> torch.Tensor:
    """Row l filled with the value l, so any off-by-one shows up as a wrong fill value."""
    return torch.arange(n_layers, dtype=torch.float32).unsqueeze(1).repeat(1, d_model)


def full_vec(**overrides) -> PersonaVector:
    gen = torch.Generator().manual_seed(0)
    fields = {
        "name": "evil",
        "vectors": torch.randn(N_LAYERS, D_MODEL, generator=gen),
        "model_id": "Qwen/Qwen2.5-0.5B-Instruct",
        "variant": "response",
        "layer": 5,
        "strength": 2.0,
        "separation": tuple(float(i) / 10 for i in range(N_LAYERS)),
        "embedding": torch.randn(D_MODEL, generator=gen),
        "metadata": {"counts": {"pos": 40, "neg": 40}, "description": "bleak answers"},
    }
    fields.update(overrides)
    return PersonaVector(**fields)


# --------------------------------------------------------------------------- value


def test_construction_normalises_to_contiguous_float32_copy():
    src = torch.randn(D_MODEL, N_LAYERS, dtype=torch.float64).T  # non-contiguous
    v = PersonaVector("x", src)
    assert v.vectors.dtype == torch.float32
    assert v.vectors.is_contiguous()
    assert v.vectors.device.type == "cpu"
    src.zero_()
    assert v.vectors.abs().sum() > 0, "must not alias the caller's tensor"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"vectors": torch.full((3, 4), float("nan"))}, "NaN"),
        ({"vectors": torch.tensor([[1.0, float("inf")]])}, "NaN or infinite"),
        ({"vectors": torch.tensor([[1e39]], dtype=torch.float64)}, "infinite"),
        ({"vectors": torch.ones(3, 4, dtype=torch.int64)}, "floating-point"),
        ({"vectors": torch.ones(4)}, "2-D"),
        ({"vectors": torch.ones(0, 4)}, "empty"),
        ({"layer": N_LAYERS}, "out of range"),
        ({"layer": -1}, "out of range"),
        ({"strength": float("nan")}, "finite"),
        ({"separation": (1.0, 2.0)}, "one per layer"),
        ({"separation": (float("nan"),) * N_LAYERS}, "NaN"),
        ({"embedding": torch.ones(D_MODEL + 1)}, "d_model"),
        ({"variant": "weird"}, "variant"),
        ({"name": ""}, "name"),
        ({"metadata": {"x": object()}}, "JSON"),
    ],
)
def test_construction_rejects_invalid(changes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        full_vec(**changes)


def test_properties_and_accessors():
    rows = planted()
    v = PersonaVector("p", rows, separation=[0, 1, 5, 2, 0, 0, 0, 0])
    assert (v.n_layers, v.d_model) == (N_LAYERS, D_MODEL)
    assert v.layer_norms[0] == 0.0
    assert v.layer_norms[3] == pytest.approx(3.0 * D_MODEL**0.5)
    assert v.best_layer == 2
    assert torch.equal(v.at(5), torch.full((D_MODEL,), 5.0))
    assert torch.linalg.vector_norm(v.unit(3)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="all zeros"):
        v.unit(0)
    with pytest.raises(IndexError):
        v.at(N_LAYERS)
    w = v.with_(layer=4, strength=1.5)
    assert (w.layer, w.strength, v.layer) == (4, 1.5, None)
    assert PersonaVector("p", rows).best_layer is None


def test_describe_fields():
    v = full_vec(vectors=planted())
    d = describe(v)
    json.dumps(d)  # must be JSON-ready
    assert d["n_layers"] == N_LAYERS and d["d_model"] == D_MODEL
    assert d["layer_norms"][0] == 0.0 and len(d["layer_norms"]) == N_LAYERS
    assert d["name"] == "evil" and d["model_id"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert d["variant"] == "response" and d["layer"] == 5 and d["strength"] == 2.0
    assert d["separation"] == list(v.separation)
    assert d["layer_convention"] == LAYER_CONVENTION == "resid_post"
    assert d["metadata"]["counts"] == {"pos": 40, "neg": 40}
    assert d["best_layer"] == N_LAYERS - 1


# --------------------------------------------------------------------------- check_fits


def test_check_fits_shape_message():
    v = full_vec(vectors=torch.ones(24, 896), embedding=None, separation=None)
    with pytest.raises(VectorMismatchError) as info:
        check_fits(v, 30, 576, model_id="SmolLM2")
    msg = str(info.value)
    assert "24 layers and d_model 896" in msg
    assert "30 layers and d_model 576" in msg
    assert "Qwen/Qwen2.5-0.5B-Instruct" in msg and "SmolLM2" in msg


def test_check_fits_model_ids():
    v = full_vec()
    check_fits(v, N_LAYERS, D_MODEL)
    check_fits(v, N_LAYERS, D_MODEL, model_id="Qwen/Qwen2.5-0.5B-Instruct")
    check_fits(v.with_(model_id=""), N_LAYERS, D_MODEL, model_id="anything")
    smol = v.with_(model_id="embedded:SmolLM2-135M-Instruct")
    check_fits(smol, N_LAYERS, D_MODEL, model_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(VectorMismatchError, match=r"made for Qwen/Qwen2\.5-0\.5B-Instruct"):
        check_fits(v, N_LAYERS, D_MODEL, model_id="meta-llama/Llama-3.2-1B")


def test_mismatch_is_an_input_error():
    with pytest.raises(InputError):
        check_fits(full_vec(), N_LAYERS + 1, D_MODEL)
