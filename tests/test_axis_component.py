"""Issue 26: a persona vector's component along the Assistant Axis, and the vector without it.

The math on plain tensors (:mod:`persona_explorer.vectors.axis_component`), then the Library's
and the Extract tab's handlers on a tiny random model, called directly (no server, no browser),
as ``tests/test_ui.py`` does.
"""

from __future__ import annotations

import math
from pathlib import Path

import gradio as gr
import pytest
import torch

from persona_explorer.axis.assistant_axis import QUANTILE_LEVELS, AxisData
from persona_explorer.axis.build import axis_on_disk
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_NAME_CHARS
from persona_explorer.engine.model import LoadedModel
from persona_explorer.ui.extract import handlers as extract_handlers
from persona_explorer.ui.extract import tab as extract
from persona_explorer.ui.library import axis as library_axis
from persona_explorer.ui.library import tab as library_tab
from persona_explorer.ui.library.similarity import builtin_axis_statement
from persona_explorer.ui.shared.catalog import add_to_session
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.vectors import files as vector_files
from persona_explorer.vectors.axis_component import (
    AXIS_REMOVED,
    axis_component,
    component_at,
    is_axis_removed,
    mean_abs_cosine,
    orthogonalise,
    remove_axis_component,
)
from persona_explorer.vectors.library import Library
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.test_ui import QUIET, extract_form
from tests.tiny_models import D_MODEL, N_LAYERS, tiny_app_context

OWNER = "a" * 24


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def cosines(vectors: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(vectors.double(), axis.double(), dim=-1)


def persona(name: str = "pirate", seed: int = 1, **fields: object) -> PersonaVector:
    args: dict = {"vectors": rand(N_LAYERS, D_MODEL, seed=seed), "layer": 2, "strength": 3.0}
    return PersonaVector(name=name, **{"model_id": "test", **args, **fields})


# --------------------------------------------------------------------------- the math


def test_the_component_along_the_axis_is_cos_projection_and_share() -> None:
    a_hat = torch.zeros(D_MODEL)
    a_hat[0] = 1.0
    b = torch.zeros(D_MODEL)
    b[1] = 1.0
    v = 3 * a_hat + 4 * b  # |v| = 5, of which 3 lies along the axis
    c = axis_component(v, 2.5 * a_hat, layer=7)  # the axis's own length does not matter
    assert c.layer == 7 and c.norm == pytest.approx(5)
    assert c.cos == pytest.approx(0.6) and c.projection == pytest.approx(3)
    assert c.share == pytest.approx(0.36) and c.remaining_norm == pytest.approx(4)
    away = axis_component(-v, a_hat)
    assert away.cos == pytest.approx(-0.6) and away.projection == pytest.approx(-3)
    assert away.share == pytest.approx(0.36)


def test_removing_the_component_leaves_a_vector_orthogonal_to_the_axis() -> None:
    vectors, axis = rand(N_LAYERS, D_MODEL, seed=1), rand(N_LAYERS, D_MODEL, seed=2)
    # Make the vectors lean on the axis, as persona vectors do.
    vectors = vectors - 3 * axis
    assert cosines(vectors, axis).abs().min() > 0.5
    flat = orthogonalise(vectors, axis)
    assert flat.dtype == torch.float32 and flat.shape == vectors.shape
    assert cosines(flat, axis).abs().max() < 1e-6
    # Exactly the axis part went: |v⊥|² = |v|² (1 - cos²), and what is left is unchanged.
    for layer in range(N_LAYERS):
        c = axis_component(vectors[layer], axis[layer])
        assert float(flat[layer].norm()) == pytest.approx(c.remaining_norm, rel=1e-5)
    assert torch.allclose(orthogonalise(flat, axis), flat, atol=1e-5)  # idempotent


def test_a_vector_already_orthogonal_to_the_axis_is_unchanged() -> None:
    axis = torch.zeros(N_LAYERS, D_MODEL)
    axis[:, 0] = 2.0
    vectors = rand(N_LAYERS, D_MODEL, seed=3)
    vectors[:, 0] = 0.0
    assert torch.equal(orthogonalise(vectors, axis), vectors)
    vec = persona(vectors=vectors)
    assert component_at(vec, axis, 1).cos == 0.0
    assert torch.equal(remove_axis_component(vec, axis).vectors, vectors)


def test_a_zero_row_stays_zero_and_only_the_reading_of_it_is_refused() -> None:
    vectors = rand(N_LAYERS, D_MODEL, seed=4)
    vectors[0] = 0.0
    axis = rand(N_LAYERS, D_MODEL, seed=5)
    assert torch.equal(orthogonalise(vectors, axis)[0], torch.zeros(D_MODEL))
    with pytest.raises(InputError, match="all zeros at layer 0"):
        component_at(persona(vectors=vectors), axis, 0)


@pytest.mark.parametrize(
    ("vector", "axis", "words"),
    [
        (torch.zeros(D_MODEL), rand(D_MODEL), "all zeros"),
        (rand(D_MODEL), rand(D_MODEL + 1), "d_model"),
        (rand(D_MODEL), torch.zeros(D_MODEL), "Assistant Axis is all zeros"),
        (rand(D_MODEL), torch.full((D_MODEL,), math.nan), "NaN"),
        (rand(D_MODEL).int(), rand(D_MODEL), "floating-point"),
        ([1.0, 2.0], rand(2), "tensor"),
        (rand(D_MODEL), torch.empty(0), "d_model"),
    ],
)
def test_hostile_input_is_refused_with_a_clear_message(
    vector: object, axis: torch.Tensor, words: str
) -> None:
    with pytest.raises(InputError, match=words):
        axis_component(vector, axis)  # type: ignore[arg-type]


def test_vectors_and_axes_of_another_model_are_refused() -> None:
    vec = persona()
    with pytest.raises(InputError, match="d_model"):
        component_at(vec, rand(N_LAYERS, D_MODEL + 8), 1)
    with pytest.raises(InputError, match="layers"):
        remove_axis_component(vec, rand(N_LAYERS + 1, D_MODEL))
    with pytest.raises(InputError, match="out of range"):
        component_at(vec, rand(N_LAYERS, D_MODEL), N_LAYERS)
    with pytest.raises(InputError, match="one row per layer"):
        component_at(vec, rand(D_MODEL), 1)
    with pytest.raises(InputError, match="all zeros"):
        remove_axis_component(persona(vectors=torch.zeros(N_LAYERS, D_MODEL)), rand(4, D_MODEL))


def test_the_copy_says_what_it_was_derived_from_and_keeps_layer_and_strength(
    tmp_path: Path,
) -> None:
    axis = rand(N_LAYERS, D_MODEL, seed=6)
    meta = {"description": "Talks like a pirate.", "sweep": {"trait": 1.0}, "builtin": True}
    vec = persona(vectors=rand(N_LAYERS, D_MODEL, seed=7) - 2 * axis, metadata=meta)
    vec = vec.with_(embedding=rand(D_MODEL))
    copy = remove_axis_component(vec, axis, axis_model_id="embedded:tiny")
    assert copy.name == "pirate (axis removed)" and is_axis_removed(copy)
    assert not is_axis_removed(vec)
    assert (copy.layer, copy.strength, copy.variant) == (vec.layer, vec.strength, vec.variant)
    assert cosines(copy.vectors, axis).abs().max() < 1e-6
    derived = copy.metadata["derived"]
    assert derived["operation"] == AXIS_REMOVED and derived["from"] == "pirate"
    assert derived["axis_model_id"] == "embedded:tiny"
    before = component_at(vec, axis, 2)
    assert derived["removed"]["layer"] == 2
    assert derived["removed"]["cos"] == pytest.approx(before.cos, abs=1e-5)
    assert derived["norm_ratio"] == pytest.approx(before.remaining_norm / before.norm, abs=1e-5)
    # What measured the original does not hold for the copy; what describes the persona does.
    assert "sweep" not in copy.metadata and "builtin" not in copy.metadata
    assert copy.metadata["description"] == "Talks like a pirate."
    assert copy.embedding is None  # the axis has no row for the embedding output
    # Stored as every vector is, provenance included.
    back = vector_files.load(vector_files.save(copy, tmp_path / "copy.safetensors"))
    assert back.metadata["derived"] == derived and torch.equal(back.vectors, copy.vectors)
    with pytest.raises(InputError, match="already has no Assistant-Axis component"):
        remove_axis_component(copy, axis)


def test_a_long_name_is_shortened_to_fit_the_suffix() -> None:
    copy = remove_axis_component(persona(name="x" * MAX_NAME_CHARS), rand(N_LAYERS, D_MODEL))
    assert len(copy.name) == MAX_NAME_CHARS and copy.name.endswith(" (axis removed)")


def test_mean_abs_cosine_is_the_off_diagonal_mean() -> None:
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # Pairs: (1,2) 0, (1,3) and (2,3) 1/sqrt(2).
    assert mean_abs_cosine(rows) == pytest.approx(2 / math.sqrt(2) / 3)
    assert mean_abs_cosine(torch.tensor([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(1.0)
    with pytest.raises(InputError):
        mean_abs_cosine(torch.ones(1, 2))


def test_removing_a_shared_direction_lowers_the_cosines_between_vectors() -> None:
    axis = rand(D_MODEL, seed=8)
    rows = rand(5, D_MODEL, seed=9) * 0.3 - axis  # five "personas" leaning away from one axis
    flat = orthogonalise(rows, axis.expand_as(rows))
    assert mean_abs_cosine(rows) > 0.8 > 0.4 > mean_abs_cosine(flat)


# --------------------------------------------------------------------------- the app


def synthetic_axis(model: LoadedModel, seed: int = 0) -> AxisData:
    n, d = model.n_layers, model.d_model
    roles, default = rand(3, n, d, seed=seed), rand(n, d, seed=seed + 1)
    levels = torch.tensor(QUANTILE_LEVELS)[:, None].expand(len(QUANTILE_LEVELS), n)
    return AxisData(
        model_id=model.model_id,
        roles=("a", "b", "c"),
        role_vectors=roles,
        default_vector=default,
        axis=default - roles.mean(0),
        default_token_quantiles=levels.contiguous().float(),
    )


@pytest.fixture
def bare_ctx(llama: LoadedModel, tmp_path: Path, one_thread: None) -> AppContext:
    """No axis on disk and none loaded: a view must not build one."""
    return tiny_app_context(llama, tmp_path, {"tiny-pirate": 2.0, "tiny-evil": 3.0})


@pytest.fixture
def ctx(bare_ctx: AppContext) -> AppContext:
    bare_ctx._axis = synthetic_axis(bare_ctx.model)  # no minutes-long build for a tiny model
    return bare_ctx


def library(ctx: AppContext) -> library_tab.LibraryTab:
    with gr.Blocks():
        return library_tab.build(ctx, gr.State({}), gr.BrowserState(None))


def test_the_library_copies_a_vector_without_its_axis_component(ctx: AppContext) -> None:
    lib = library(ctx)
    assert lib.remove_axis is not None
    out = library_axis.remove_axis_copy(ctx, lib, "builtin:tiny-pirate", None)
    key = out[lib.selected]["value"]
    assert key.startswith("session:") and key in out[lib.state]
    copy = out[lib.state][key]
    assert copy.name == "tiny-pirate (axis removed)"
    assert cosines(copy.vectors, ctx.axis().axis).abs().max() < 1e-6
    assert copy.metadata["derived"]["from"] == "tiny-pirate"
    status = out[lib.status].replace("\\", "")  # Markdown escapes in the name
    assert "tiny-pirate (axis removed)" in status and "Save to library" in status
    # "Save to library" keeps it through the library's own (atomic, owned) save.
    saved = library_tab.save_vector(ctx, lib, key, out[lib.state], OWNER)
    entry = ctx.library.entry(saved[lib.selected]["value"].split(":", 1)[1])
    assert entry.info is not None and entry.info.metadata["derived"]["operation"] == AXIS_REMOVED
    stored = ctx.library.get(entry.id)
    assert torch.equal(stored.vectors, copy.vectors) and entry.owner is not None
    # A copy of the copy has nothing left to remove.
    with pytest.raises(gr.Error, match="already has no Assistant-Axis component"):
        library_axis.remove_axis_copy(ctx, lib, saved[lib.selected]["value"], saved[lib.state])


def test_the_library_action_is_wired_enabled_by_a_selection_and_refreshes_the_lists(
    ctx: AppContext,
) -> None:
    lib = library(ctx)
    assert lib.remove_axis is not None and lib.remove_axis.interactive is False
    assert library_tab.selection_updates(lib, "builtin:tiny-evil")[lib.remove_axis] == {
        "__type__": "update",
        "interactive": True,
    }
    assert len(lib.changed) == 5  # upload, rename, delete, save, and the axis-free copy


def test_the_library_shows_each_vectors_component_along_the_axis(ctx: AppContext) -> None:
    lib = library(ctx)
    keys = ["builtin:tiny-pirate", "builtin:tiny-evil"]
    shown = library_tab.draw_heatmap(ctx, lib, keys, 1, False, None)
    rows = shown[lib.axis_table]
    axis = ctx.axis().axis
    view = ctx.catalog.view(None)
    expected = component_at(view.load(view.resolve("tiny-pirate")), axis, 1)
    assert [r[0] for r in rows] == ["tiny-pirate", "tiny-evil"]
    assert rows[0][1:4] == [1, round(expected.cos, 3), round(expected.projection, 3)]
    assert rows[0][4] == f"{expected.share:.0%}"
    assert shown[lib.axis_note] == ""
    # Without the component: the heat map's cosines change and the note gives both means.
    flat = library_tab.draw_heatmap(ctx, lib, keys, 1, True, None)
    title = flat[lib.heatmap].layout.title.text.replace("<br>", " ")
    assert "without the Assistant-Axis component" in title
    assert "Mean |cos|" in flat[lib.axis_note] and "without" in flat[lib.axis_note]
    with pytest.raises(gr.Error, match="true or false"):
        library_tab.draw_heatmap(ctx, lib, keys, 1, "yes", None)
    line = library_axis.selected_axis_line(ctx, "builtin:tiny-pirate", None)
    at = component_at(view.load(view.resolve("tiny-pirate")), axis, 2)  # its recorded layer
    assert f"{at.cos:+.2f}" in line and "layer 2" in line


def test_without_an_axis_on_disk_the_library_says_so_and_never_builds_one(
    bare_ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a view started an axis build")

    monkeypatch.setattr("persona_explorer.axis.build.build_axis", no_build)
    assert axis_on_disk(bare_ctx.model, bare_ctx.settings.cache_dir) is None
    lib = library(bare_ctx)
    shown = library_tab.draw_heatmap(bare_ctx, lib, ["builtin:tiny-pirate"], 1, False, None)
    assert "Persona space" in shown[lib.axis_table][0][0]
    assert "Persona space" in library_axis.selected_axis_line(bare_ctx, "builtin:tiny-evil", None)
    with pytest.raises(gr.Error, match="Persona space"):
        library_axis.remove_axis_copy(bare_ctx, lib, "builtin:tiny-pirate", None)


def test_the_builtins_statement_gives_their_mean_cosine_with_and_without(
    ctx: AppContext,
) -> None:
    text = builtin_axis_statement(ctx.settings.builtin_vectors_dir, ctx.axis().axis, layer=1)
    assert "layer 1" in text and text.count("0.") >= 2


# --------------------------------------------------------------------------- Extract


def extract_tab(ctx: AppContext) -> extract.ExtractTab:
    with gr.Blocks():
        return extract.build(ctx, gr.State({}))


def test_extract_shows_the_vectors_component_along_the_axis(ctx: AppContext) -> None:
    ex = extract_tab(ctx)
    last = list(extract_handlers.run_extract(ctx, ex, extract_form(), None, **QUIET))[-1]
    vec = last[ex.state][last[ex.last]]
    c = component_at(vec, ctx.axis().axis, vec.layer)
    assert "Along the Assistant Axis" in last[ex.summary]
    assert f"cos **{c.cos:+.2f}**" in last[ex.summary] and f"{c.share:.0%}" in last[ex.summary]
    assert not is_axis_removed(vec)


def test_extract_can_keep_the_vector_without_its_axis_component(ctx: AppContext) -> None:
    ex = extract_tab(ctx)
    form = extract_form(remove_axis=True)
    last = list(extract_handlers.run_extract(ctx, ex, form, None, **QUIET))[-1]
    vec = last[ex.state][last[ex.last]]
    assert is_axis_removed(vec) and vec.name == "tiny shanty (axis removed)"
    assert cosines(vec.vectors, ctx.axis().axis).abs().max() < 1e-6
    assert "Assistant-Axis component removed" in last[ex.summary]
    # The download offered is the vector kept, and "Save to library" saves that one.
    assert is_axis_removed(vector_files.load(last[ex.download]["value"]))
    out = extract_handlers.save_extracted(ctx, ex, last[ex.last], last[ex.state], owner=OWNER)
    saved = ctx.catalog.view(out[ex.state]).resolve(out[ex.last])
    assert saved.where == "library" and saved.info is not None
    assert saved.info.metadata["derived"]["operation"] == AXIS_REMOVED
    with pytest.raises(gr.Error, match="remove_axis must be true or false"):
        list(extract_handlers.run_extract(ctx, ex, extract_form(remove_axis="yes"), None, **QUIET))


def test_the_extract_checkbox_is_an_input_of_the_extract_endpoint(ctx: AppContext) -> None:
    with gr.Blocks() as demo:
        ex = extract.build(ctx, gr.State({}))
    assert ex.remove_axis is not None and ex.remove_axis.value is False
    assert ex.remove_axis.label == "Remove the Assistant-Axis component"
    (fn,) = [f for f in demo.fns.values() if f.api_name == "extract"]
    ids = [getattr(c, "_id", c) for c in fn.inputs]
    assert ids.index(ex.remove_axis._id) == len(ids) - 2  # after sweep, before the session


def test_an_extraction_without_an_axis_on_disk_says_so(bare_ctx: AppContext) -> None:
    ex = extract_tab(bare_ctx)
    last = list(extract_handlers.run_extract(bare_ctx, ex, extract_form(), None, **QUIET))[-1]
    assert "no axis yet" in last[ex.summary]


def test_library_and_session_copies_go_through_the_shared_save(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    copy = remove_axis_component(persona(), rand(N_LAYERS, D_MODEL))
    session, key = add_to_session({}, copy, limit=4)
    entry = lib.save(session[key], owner=OWNER)
    assert lib.get(entry.id).metadata["derived"]["from"] == "pirate"
    assert not list((tmp_path / "lib").glob("*.tmp"))
