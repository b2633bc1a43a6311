"""The built-ins' similarity panel, and that the teaching text about them is true."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

from persona_explorer.core.config import ASSETS_DIR
from persona_explorer.plots.common import fmt
from persona_explorer.ui.library.similarity import (
    builtin_similarity,
    builtin_similarity_figure,
    default_layer,
    statements_markdown,
)
from persona_explorer.ui.shared import teaching
from persona_explorer.vectors import files as vector_files
from persona_explorer.vectors.persona_vector import PersonaVector

BUILTINS = ASSETS_DIR / "vectors"
NAMES = ["evil", "formal", "optimistic", "pessimistic", "pirate", "poetic", "sarcastic",
         "sycophantic"]  # fmt: skip
# The layer the Library teaching text speaks of, and the range it says the picture holds over.
TEXT_LAYER = 20
TEXT_RANGE = range(10, 23)


@pytest.fixture(scope="module")
def at_layer() -> dict[int, dict[tuple[str, str], float]]:
    """Every layer's cosines of the shipped vectors, by name pair."""
    out = {}
    for layer in range(30):
        names, matrix, at = builtin_similarity(BUILTINS, layer)
        assert at == layer and names == NAMES
        out[layer] = {
            (a, b): matrix[i][j] for i, a in enumerate(names) for j, b in enumerate(names)
        }
    return out


def test_builtin_similarity_defaults_to_the_heat_map_layer() -> None:
    names, matrix, layer = builtin_similarity(BUILTINS)
    assert names == NAMES
    assert layer == default_layer(30) == TEXT_LAYER
    m = torch.tensor(matrix)
    assert torch.allclose(m, m.T, atol=1e-6)
    assert torch.allclose(m.diag(), torch.ones(len(NAMES)), atol=1e-5)


def test_builtin_statements_lead_with_the_real_top_pair() -> None:
    fig, statements = builtin_similarity_figure(BUILTINS)
    assert isinstance(fig.data[0], go.Heatmap)
    assert list(fig.data[0].x) == NAMES
    assert "layer 20" in fig.layout.title.text
    assert statements[0] == "pirate and sycophantic point much the same way (cosine 0.72)."
    assert "formal and pessimistic point in opposite directions (cosine −0.59)." in statements
    assert "optimistic and pessimistic are nearly unrelated (cosine 0.11)." in statements
    # The claim the old text made, and the numbers say is false:
    assert not any("optimistic and pessimistic point" in s and "opposite" in s for s in statements)


@pytest.mark.parametrize(
    ("a", "b", "printed"),
    [
        ("pirate", "sycophantic", "0.72"),
        ("pessimistic", "pirate", "0.65"),
        ("formal", "pessimistic", "−0.59"),
        ("formal", "pirate", "−0.54"),
        ("optimistic", "pessimistic", "0.11"),
    ],
)
def test_library_text_numbers_match_the_vectors(at_layer, a: str, b: str, printed: str) -> None:
    assert fmt(at_layer[TEXT_LAYER][a, b]) == printed
    text = " ".join(teaching.LIBRARY.split())
    assert f"*{a}*" in text and f"*{b}*" in text and f"({printed})" in text
    assert f"at layer {TEXT_LAYER}," in text


def test_library_text_claims_hold(at_layer) -> None:
    cos = at_layer[TEXT_LAYER]
    others = [n for n in NAMES if n != "formal"]
    # "formal points away from every other built-in at this layer"
    assert all(cos["formal", n] < 0 for n in others)
    # "Every pair without formal has a positive cosine here"
    assert all(cos[a, b] > 0 for a in others for b in others)
    # "From layer 10 to 22 the strongest pair and formal's opposition to pessimistic hold"
    for layer in TEXT_RANGE:
        c = at_layer[layer]
        assert c["pirate", "sycophantic"] >= 0.5, layer
        assert abs(c["optimistic", "pessimistic"]) < 0.2, layer
        assert c["formal", "pessimistic"] <= -0.2, layer
    assert "layer 10 to 22" in " ".join(teaching.LIBRARY.split())
    assert "(*optimistic* and *pessimistic*) point apart" not in teaching.LIBRARY


def test_extract_text_says_what_the_slider_does() -> None:
    text = " ".join(teaching.EXTRACT.split())
    assert "*Questions* slider" in text and "the first N" in text
    assert not re.search(r"\b\d+ questions\b", text)  # no count that can drift from the slider


def test_fewer_than_two_builtins(tmp_path: Path) -> None:
    fig, statements = builtin_similarity_figure(tmp_path)
    assert statements == [] and len(fig.data) == 0
    shutil.copy(BUILTINS / "evil.safetensors", tmp_path)
    fig, statements = builtin_similarity_figure(tmp_path)
    assert statements == [] and "Fewer than two" in fig.layout.annotations[0].text


def test_mismatched_shapes_are_refused(tmp_path: Path) -> None:
    shutil.copy(BUILTINS / "evil.safetensors", tmp_path)
    vector_files.save(PersonaVector("odd", torch.ones(4, 8)), tmp_path / "odd.safetensors")
    with pytest.raises(ValueError, match=r"another shape.*odd"):
        builtin_similarity(tmp_path)


def test_layer_is_checked() -> None:
    with pytest.raises(ValueError, match="out of range"):
        builtin_similarity(BUILTINS, 30)


def test_statements_markdown_escapes() -> None:
    out = statements_markdown(["<b>a</b> and *b* point much the same way (cosine 0.76)."])
    assert out.startswith("- ")
    assert "<b>" not in out and r"\*b\*" in out
