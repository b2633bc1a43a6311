"""How the built-in persona vectors relate: their cosine heat map and sentences generated from it.

The Library tab shows this under its teaching text, so what the app says about which personas
point the same way (or apart) is computed from the vectors it ships, not asserted. No gradio
here: the tab places the figure and the Markdown.

Imports: :mod:`..builtin` (the file list), :mod:`..vector_files`, :mod:`..axis_component`,
:mod:`..projection` (torch), :mod:`..plots`, :mod:`.markup`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go
import torch

from persona_explorer.core.limits import check_layer
from persona_explorer.personas.builtin import builtin_vector_paths
from persona_explorer.plots import cosine_heatmap_figure, empty_figure, similarity_statements
from persona_explorer.steering.projection import cosine_matrix
from persona_explorer.ui.shared.markup import md
from persona_explorer.vectors.axis_component import mean_abs_cosine, orthogonalise
from persona_explorer.vectors.files import load

__all__ = [
    "builtin_axis_statement",
    "builtin_similarity",
    "builtin_similarity_figure",
    "default_layer",
    "statements_markdown",
]


def default_layer(n_layers: int) -> int:
    """The layer the Library heat map opens on (two thirds of the way up), so the panel and the
    heat map agree at first sight."""
    return (2 * n_layers) // 3


def builtin_similarity(
    directory: Path | str, layer: int | None = None
) -> tuple[list[str], list[list[float]], int]:
    """The names, the pairwise cosine matrix and the layer (``layer``, or
    :func:`default_layer`) of the ``.safetensors`` vectors in ``directory``, sorted by file name.

    Every vector must have the same shape; a ValueError says which does not. Fewer than two
    vectors give what there is (an empty or 1 x 1 matrix).
    """
    vectors = [load(p) for p in builtin_vector_paths(Path(directory))]
    if not vectors:
        return [], [], 0 if layer is None else int(layer)
    shape = (vectors[0].n_layers, vectors[0].d_model)
    odd = [v.name for v in vectors if (v.n_layers, v.d_model) != shape]
    if odd:
        raise ValueError(
            f"built-in vectors of another shape than {vectors[0].name}'s "
            f"{shape[0]} layers x {shape[1]}: {', '.join(odd)}"
        )
    at = default_layer(shape[0]) if layer is None else check_layer(layer, shape[0])
    matrix = cosine_matrix(torch.stack([v.vectors[at] for v in vectors]))
    return [v.name for v in vectors], matrix.tolist(), at


def builtin_similarity_figure(
    builtin_dir: Path | str, layer: int | None = None
) -> tuple[go.Figure, list[str]]:
    """The built-ins' cosine heat map at ``layer`` (default :func:`default_layer`) and the plain
    sentences :func:`~persona_explorer.plots.similarity_statements` makes of it."""
    names, matrix, at = builtin_similarity(builtin_dir, layer)
    if len(names) < 2:
        return empty_figure("Fewer than two built-in vectors: nothing to compare"), []
    figure = cosine_heatmap_figure(
        names, matrix, at, title=f"How the built-in personas relate, layer {at}"
    )
    return figure, similarity_statements(names, matrix)


def statements_markdown(statements: Sequence[str]) -> str:
    """The sentences as a Markdown list, escaped (names may be user text)."""
    return "\n".join(f"- {md(s, 400)}" for s in statements)


def builtin_axis_statement(
    directory: Path | str, axis: torch.Tensor, layer: int | None = None
) -> str:
    """A sentence on how much of the built-ins' similarity is their shared component along the
    Assistant Axis (``axis`` [n_layers, d_model]): their mean |cos| at ``layer`` (default
    :func:`default_layer`) as they are and without it. Empty for fewer than two vectors."""
    vectors = [load(p) for p in builtin_vector_paths(Path(directory))]
    if len(vectors) < 2:
        return ""
    at = default_layer(vectors[0].n_layers) if layer is None else layer
    rows = torch.stack([v.vectors[at] for v in vectors])
    flat = orthogonalise(rows, axis[at].expand_as(rows))
    return (
        f"- Part of what they share lies along one direction, the Assistant Axis (toward or away "
        f"from the default Assistant): their mean |cosine| at layer {at} is "
        f"{mean_abs_cosine(rows):.2f}, "
        f"and {mean_abs_cosine(flat):.2f} once each vector's component along the axis is "
        "removed (the heat map under *How similar are they?* shows either)."
    )
