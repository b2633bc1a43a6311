"""The Persona space map: PCA math on synthetic role vectors, its figures, the tab's handlers on
a tiny model, and the map of the embedded model's shipped axis (integration)."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go
import pytest
import torch

from persona_explorer.axis.assistant_axis import (
    AxisData,
    assistant_axis,
    default_axis_layer,
    pc1_axis_cosine,
    pc1_variance,
    token_quantiles,
)
from persona_explorer.axis.persona_space import (
    N_COORDS,
    PersonaSpace,
    PlacedText,
    layer_map,
    map_summary,
    space_for,
)
from persona_explorer.core.errors import InputError
from persona_explorer.engine.model import LoadedModel
from persona_explorer.plots.persona_map import (
    MapArrow,
    MapPoint,
    pc1_layers_figure,
    persona_map_figure,
    variance_figure,
)
from persona_explorer.ui.persona_space import handlers
from persona_explorer.ui.persona_space import tab as tab_module
from persona_explorer.ui.persona_space.components import PersonaSpaceTab
from persona_explorer.ui.shared.context import AppContext
from tests.tiny_models import D_MODEL, N_LAYERS, tiny_app_context

N_ROLES, LAYERS, D = 7, 4, 12


def synthetic(
    seed: int = 0, n_roles: int = N_ROLES, n_layers: int = LAYERS, d: int = D
) -> AxisData:
    """Roles spread mostly along one planted direction, the default at its positive end."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(n_layers, d, generator=g)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    along = torch.linspace(-3, 2, n_roles)[:, None, None]
    roles = along * direction + 0.3 * torch.randn(n_roles, n_layers, d, generator=g)
    default = 4 * direction + 0.1 * torch.randn(n_layers, d, generator=g)
    return AxisData(
        model_id="synthetic",
        roles=tuple(f"role-{i}" for i in range(n_roles)),
        role_vectors=roles,
        default_vector=default,
        axis=assistant_axis(default, roles),
        default_token_quantiles=token_quantiles(torch.randn(40, n_layers, generator=g)),
    )


# --------------------------------------------------------------------------- the math


def test_layer_map_shapes_and_orthonormal_components() -> None:
    data = synthetic()
    m = layer_map(data, 1)
    assert m.role_coords.shape == (N_ROLES, N_COORDS) and m.assistant.shape == (N_COORDS,)
    assert m.role_axis.shape == (N_ROLES,)
    gram = m.components @ m.components.T
    assert torch.allclose(gram, torch.eye(N_COORDS), atol=1e-5)
    # Every role's coordinates are its centred vector projected on the components.
    for i in range(N_ROLES):
        assert torch.allclose(
            torch.tensor(m.place(data.role_vectors[i])), m.role_coords[i], atol=1e-4
        )


@pytest.mark.parametrize("seed", range(6))
def test_the_assistant_is_on_the_positive_side_of_every_component(seed: int) -> None:
    data = synthetic(seed)
    for layer in range(LAYERS):
        m = layer_map(data, layer)
        assert m.assistant[0] > 0
        assert (m.assistant >= 0).all()
        # PC1 of a planted line points at the Assistant: the flipped cosine is positive.
        assert float(m.components[0] @ m.axis) > 0


def test_variance_shares_are_at_most_one_and_decreasing() -> None:
    m = layer_map(synthetic(), 0)
    var = m.variance
    assert len(var) <= 10 and (var >= 0).all() and float(var.sum()) <= 1 + 1e-5
    assert all(a >= b - 1e-7 for a, b in zip(var.tolist(), var[1:].tolist(), strict=False))
    assert float(var[0]) > 0.5  # the planted direction dominates


def test_the_default_activation_lands_on_the_assistant() -> None:
    data = synthetic(3)
    space = PersonaSpace(data)
    for layer in range(LAYERS):
        m = space.layer(layer)
        assert torch.allclose(torch.tensor(m.place(data.default_vector)), m.assistant, atol=1e-4)
        assert m.axis_position(data.default_vector) == pytest.approx(1.0, abs=1e-4)
        assert m.axis_position(data.role_vectors[:, layer].mean(0)) == pytest.approx(0, abs=1e-4)
        # The roles' colours are the same normalised scale.
        assert float(m.role_axis.mean()) == pytest.approx(0.0, abs=1e-4)
        assert m.assistant_sd > 1


def test_per_layer_curves_match_the_axis_module() -> None:
    data = synthetic(1)
    space = PersonaSpace(data)
    assert space.pc1_axis_cosine == pytest.approx(
        pc1_axis_cosine(data.role_vectors, data.axis).tolist()
    )
    assert space.pc1_variance == pytest.approx(pc1_variance(data.role_vectors).tolist())
    for layer, cos in enumerate(space.pc1_axis_cosine):
        assert 0 <= cos <= 1 + 1e-6
        assert space.layer(layer).pc1_axis_cosine == pytest.approx(cos, abs=1e-5)


def test_maps_are_cached_per_axis_and_layer() -> None:
    data = synthetic()
    space = space_for(data)
    assert space_for(data) is space
    assert space.layer(2) is space.layer(2.0)  # type: ignore[arg-type]
    assert space_for(synthetic()) is not space  # another AxisData, another space


@pytest.mark.parametrize("bad", [-1, LAYERS, 1.5, "two", True])
def test_a_bad_layer_is_refused(bad: object) -> None:
    with pytest.raises(InputError):
        PersonaSpace(synthetic()).layer(bad)  # type: ignore[arg-type]


def test_nearest_roles_are_measured_in_the_full_space() -> None:
    data = synthetic()
    m = layer_map(data, 2)
    nearest = m.nearest_roles(data.role_vectors[4, 2] + 1e-3)
    assert nearest[0][0] == "role-4" and nearest[0][1] < 0.01
    assert len(nearest) == 3 and [d for _, d in nearest] == sorted(d for _, d in nearest)


def test_arrows_start_at_the_assistant_and_scale_as_asked() -> None:
    data = synthetic(2)
    m = layer_map(data, 1)
    g = torch.Generator().manual_seed(5)
    v = torch.randn(LAYERS, D, generator=g)
    raw = m.arrow("v", v, "extracted")
    assert raw.start == pytest.approx(m.assistant.tolist())
    delta = torch.tensor(raw.end) - torch.tensor(raw.start)
    assert torch.allclose(delta, v[1] @ m.components.T, atol=1e-4)
    spread = m.arrow("v", v * 1000, "spread")  # any norm: the same arrow
    same = m.arrow("v", v, "spread")
    assert spread.end == pytest.approx(same.end, rel=1e-4)
    length = float((torch.tensor(same.end) - torch.tensor(same.start)).norm())
    assert length == pytest.approx(m.spread * same.space_share, rel=1e-4)
    assert 0 <= raw.plane_share <= raw.space_share <= 1 + 1e-6
    # The axis itself points straight at the Assistant side with cosine 1.
    along = m.arrow("axis", data.axis)
    assert along.axis_cosine == pytest.approx(1.0, abs=1e-5)
    assert along.end[0] > along.start[0]
    with pytest.raises(InputError, match="zero"):
        m.arrow("zero", torch.zeros(D))
    with pytest.raises(InputError, match="Arrow length"):
        m.arrow("v", v, "huge")  # type: ignore[arg-type]


def test_map_summary_is_json_with_every_point() -> None:
    data = synthetic()
    space = PersonaSpace(data)
    m = space.layer(1)
    placed = PlacedText("hi", "hello", data.role_vectors[0], data.default_vector)
    out = map_summary(space, m, placed, [m.arrow("v", data.axis)])
    text = json.dumps(out)
    back = json.loads(text)
    assert back["layer"] == 1 and len(back["roles"]) == N_ROLES
    assert [p["kind"] for p in back["points"]] == ["prompt", "answer"]
    assert back["points"][1]["axis"] == pytest.approx(1.0, abs=1e-3)
    assert back["points"][1]["coords"] == pytest.approx(back["assistant"]["coords"], abs=1e-3)
    assert len(back["per_layer"]["pc1_axis_cosine"]) == LAYERS
    assert back["arrows"][0]["name"] == "v"


def test_two_roles_still_make_a_map() -> None:
    m = layer_map(synthetic(n_roles=2), 0)
    assert m.role_coords.shape == (2, N_COORDS) and torch.isfinite(m.role_coords).all()


# --------------------------------------------------------------------------- figures


def _figure(three_d: bool, **kwargs: object) -> go.Figure:
    m = layer_map(synthetic(), 1)
    args: dict = {
        "layer": 1,
        "variance": m.variance.tolist(),
        "points": [
            MapPoint("your prompt", m.place(synthetic().role_vectors[0]), "prompt", "<b>hi</b>"),
            MapPoint("its answer", m.assistant.tolist(), "answer", "an answer"),
        ],
        "arrows": [MapArrow("<i>pirate</i>", (1, 2, 3), (0, 1, 2), -0.5)],
        "three_d": three_d,
    }
    args.update(kwargs)
    return persona_map_figure(
        list(m.roles), m.role_coords.tolist(), m.role_axis.tolist(), m.assistant.tolist(), **args
    )


def test_the_2d_map_has_roles_assistant_points_and_arrows() -> None:
    fig = _figure(False)
    names = [t.name for t in fig.data]
    assert names[:3] == ["roles", "the axis", "Assistant"]
    assert "your prompt" in names and "its answer" in names
    assert all(isinstance(t, go.Scatter) for t in fig.data)
    roles = fig.data[0]
    assert len(roles.x) == N_ROLES and list(roles.text) == [f"role-{i}" for i in range(N_ROLES)]
    assert roles.marker.colorbar is not None and roles.marker.cmin == -roles.marker.cmax
    assert fig.data[2].marker.symbol == "star"
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    assert len(arrows) == 1 and arrows[0].axref == "x"
    # User text is escaped: plotly would render tags.
    dumped = fig.to_json()
    assert "<i>pirate" not in dumped and "&lt;i&gt;pirate" in dumped
    assert "<b>hi</b>" not in dumped
    assert fig.layout.yaxis.scaleanchor == "x"
    assert "PC1" in fig.layout.xaxis.title.text


def test_the_3d_view_uses_three_components() -> None:
    fig = _figure(True)
    assert all(isinstance(t, go.Scatter3d) for t in fig.data)
    assert len(fig.data[0].z) == N_ROLES
    assert "PC3" in fig.layout.scene.zaxis.title.text
    json.loads(fig.to_json())


def test_map_inputs_are_checked() -> None:
    two = {"layer": 0, "variance": [0.5, 0.2]}
    with pytest.raises(ValueError, match="role_axis"):
        persona_map_figure(["a", "b"], [[0, 0], [1, 1]], [0.0], [1, 1], **two)
    with pytest.raises(ValueError, match="coordinates"):
        persona_map_figure(
            ["a"], [[0, 0]], [0.0], [1, 1], layer=0, variance=[0.5, 0.2, 0.1], three_d=True
        )
    with pytest.raises(ValueError, match="finite"):
        persona_map_figure(["a"], [[0, float("nan")]], [0.0], [1, 1], **two)


def test_variance_and_per_layer_figures() -> None:
    space = PersonaSpace(synthetic())
    var = variance_figure(space.layer(0).variance.tolist(), 0)
    assert isinstance(var.data[0], go.Bar) and var.data[1].y[-1] <= 1 + 1e-6
    with pytest.raises(ValueError):
        variance_figure([0.8, 0.5], 0)
    fig = pc1_layers_figure(space.pc1_axis_cosine, space.pc1_variance, 2)
    assert [t.name for t in fig.data] == ["|cos(PC1, axis)|", "PC1's share of variance"]
    assert len(fig.data[0].y) == LAYERS
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert any(s.x0 == 2 and s.x1 == 2 for s in lines)  # the selected layer
    assert any(s.y0 == pytest.approx(0.6) for s in lines)  # the paper's threshold
    with pytest.raises(ValueError):
        pc1_layers_figure([0.5, 0.6], [0.3], 0)
    with pytest.raises(ValueError):
        pc1_layers_figure([0.5, 0.6], [0.3, 0.2], 5)


# --------------------------------------------------------------------------- the tab's handlers


@pytest.fixture
def ctx(llama: LoadedModel, tmp_path: Path, one_thread: None) -> AppContext:
    context = tiny_app_context(
        llama, tmp_path, {"tiny-pirate": 2.0, "tiny-evil": 2.0}, default_persona="tiny-pirate"
    )
    # A synthetic axis of the tiny model's shape: building a real one is axis_build's business.
    context._axis = synthetic(n_roles=6, n_layers=N_LAYERS, d=D_MODEL)
    return context


def _tab(ctx: AppContext) -> PersonaSpaceTab:
    with gr.Blocks():
        return tab_module.build(ctx, gr.State({}))


def _run(ctx: AppContext, tab: PersonaSpaceTab, **fields: object) -> list[dict]:
    form = handlers.PersonaMapForm(**{"layer": 2, **fields})  # type: ignore[arg-type]
    return list(handlers.run_map(ctx, tab, form, None, request=None, progress=lambda *a, **k: None))


def test_the_tab_places_a_prompt_and_its_answer(ctx: AppContext) -> None:
    tab = _tab(ctx)
    updates = _run(ctx, tab, prompt="Tell me a story.", max_new_tokens=6, personas=["tiny-pirate"])
    assert len(updates) >= 2  # the answer streams before the map
    final = updates[-1]
    placed = final[tab.placed]
    assert isinstance(placed, PlacedText) and placed.prompt_mean.shape == (N_LAYERS, D_MODEL)
    assert final[tab.answer] == placed.answer
    names = [t.name for t in final[tab.plot].data]
    assert "your prompt" in names and any("tiny-pirate" in n for n in names)
    coords = final[tab.coords]
    assert coords["layer"] == 2 and coords["points"][0]["kind"] == "prompt"
    assert "PC1 explains" in final[tab.summary]
    # Re-drawing at another layer reuses the placed points: nothing is generated.
    form = handlers.PersonaMapForm(layer=3, view="3-D", personas=[])
    again = handlers.replot(ctx, tab, form, None, placed=placed, progress=None)
    assert again[tab.coords]["layer"] == 3 and again[tab.coords]["points"]
    assert isinstance(again[tab.plot].data[0], go.Scatter3d)


def test_without_a_prompt_only_the_roles_are_drawn(ctx: AppContext) -> None:
    tab = _tab(ctx)
    (final,) = _run(ctx, tab)
    assert final[tab.placed] is None and final[tab.coords]["points"] == []
    assert "Place my prompt" in final[tab.summary]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"layer": N_LAYERS}, "out of range"),
        ({"view": "4-D"}, "View"),
        ({"arrow_length": "long"}, "Arrow length"),
        ({"personas": ["nobody"]}, "Unknown persona"),
        ({"personas": [f"p{i}" for i in range(7)]}, "at most"),
        ({"prompt": "hi", "max_new_tokens": 65}, "Max new tokens"),
        ({"prompt": "x" * 5000}, "prompt"),
    ],
)
def test_bad_input_is_a_clear_error(ctx: AppContext, fields: dict, message: str) -> None:
    tab = _tab(ctx)
    with pytest.raises(gr.Error, match=message):
        _run(ctx, tab, **fields)


def test_without_an_axis_file_the_tab_starts_with_a_placeholder(ctx: AppContext) -> None:
    tab = _tab(ctx)
    assert "Draw the map" in tab.plot.value["plot"]
    choices = [c[1] for c in tab.personas.choices]
    assert choices == ["builtin:tiny-evil", "builtin:tiny-pirate"]


# --------------------------------------------------------------------------- the embedded model


@pytest.mark.integration
def test_the_shipped_axis_makes_a_map_at_the_default_layer() -> None:
    from persona_explorer.axis.build import shipped_axis_path
    from persona_explorer.engine.model import EMBEDDED_MODEL_ID
    from persona_explorer.personas.builtin import builtin_dir
    from persona_explorer.vectors.files import load

    data = AxisData.load(shipped_axis_path(EMBEDDED_MODEL_ID))
    space = space_for(data)
    layer = default_axis_layer(data.n_layers)
    m = space.layer(layer)
    assert len(m.roles) >= 40 and m.assistant[0] > 0
    assert all(0 <= c <= 1 for c in space.pc1_axis_cosine)
    # What SOURCE.md measured: PC1 follows the axis in the middle of the stack.
    assert space.pc1_axis_cosine[layer] > 0.6
    assert 0.25 < space.pc1_variance[layer] < 0.6
    assert m.assistant_sd > 1.5
    assert float(m.role_axis.max()) < 1  # no role beyond the Assistant here
    pirate = load(builtin_dir() / "pirate.safetensors")
    assert m.arrow("pirate", pirate.vectors).axis_cosine < 0  # pirate pulls away from it
    fig = persona_map_figure(
        list(m.roles),
        m.role_coords.tolist(),
        m.role_axis.tolist(),
        m.assistant.tolist(),
        layer=layer,
        variance=m.variance.tolist(),
    )
    assert len(fig.data[0].x) == len(m.roles)


@pytest.mark.integration
def test_role_play_answers_land_lower_on_the_axis_than_plain_ones() -> None:
    from persona_explorer.axis.build import axis_for
    from persona_explorer.core.config import load_settings
    from persona_explorer.engine.model import load_model
    from persona_explorer.steering.generation import SamplingConfig, generate

    model = load_model(device="cpu")
    space = space_for(axis_for(model, load_settings().cache_dir))
    plain = [
        model.chat_ids(q)
        for q in (
            "Can you explain why the sky is blue?",
            "Give me some advice for my first day at a new job.",
            "How do I boil an egg?",
        )
    ]
    role = [
        model.chat_ids("Tell me about your day.", system="You are a pirate. Speak like one."),
        model.chat_ids(
            "What do you want from me?", system="You are a vampire lurking in the night."
        ),
        model.chat_ids("Pretend you are a dragon and describe your hoard."),
    ]
    rows = plain + role
    res = generate(
        model, rows, [()] * len(rows), SamplingConfig(max_new_tokens=32), keep_tokens=False
    )
    m = space.layer(default_axis_layer(model.n_layers))
    pos = [m.axis_position(a) for a in res.capture.response_mean]
    # Measured: plain -0.2 to 1.1, role-play -2.2 to -1.5 at layer 15; the margin is wide.
    assert sum(pos[:3]) / 3 > sum(pos[3:]) / 3 + 0.5, pos
    for a in res.capture.response_mean:
        assert all(abs(c) < 1e4 for c in m.place(a))


def test_the_endpoint_has_named_parameters_and_outputs(ctx: AppContext) -> None:
    from persona_explorer.ui import build_demo

    demo = build_demo(ctx.settings, ctx.model)
    endpoint = demo.get_api_info()["named_endpoints"]["/persona_map"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == [
        "layer", "view", "personas", "arrow_length", "prompt", "system_prompt", "max_new_tokens",
    ]  # fmt: skip
    labels = [r["label"] for r in endpoint["returns"]]
    assert labels == [
        "Persona space", "Variance explained", "PC1 and the axis", "Summary", "Coordinates",
        "The model's answer (greedy)",
    ]  # fmt: skip


def test_a_far_point_is_drawn_at_the_edge_in_its_direction() -> None:
    from persona_explorer.plots.persona_map import pull_in

    core = [[-1.0, -1.0], [1.0, 1.0]]
    assert pull_in([2.0, -1.5], core, factor=3.0) == ([2.0, -1.5], False)
    drawn, moved = pull_in([30.0, 15.0], core, factor=3.0)
    assert moved and drawn[0] == pytest.approx(3.0) and drawn[1] == pytest.approx(1.5)
    assert pull_in([1.1, -0.5], core) == ([1.1, -0.5], False)  # just outside: drawn where it is
    fig = _figure(False, points=[MapPoint("your prompt", [500.0, -300.0, 0.0], "prompt")])
    prompt = next(t for t in fig.data if "your prompt" in t.name)
    assert "off the map" in prompt.name and abs(prompt.x[0]) < 500
    assert "500" in prompt.hovertemplate  # the real coordinates stay in the hover text


def test_an_answer_far_from_the_roles_keeps_the_roles_scale() -> None:
    """Issue 26: the embedded model at layer 15, "What is your favourite season?". The roles
    span PC1 -9.2…7.4 and PC2 -5.0…5.4; the answer lies at PC1 -19.8 (5.1x the roles' spread
    from the nearest role) and the prompt at (141, -99). Both are drawn on the border, marked
    "(off the map)", and the map stays about the size of the roles' box."""
    roles = [[-9.2, -1.0], [7.4, 0.5], [0.0, -5.0], [1.0, 5.4], [-3.0, 2.0], [4.0, -2.0]]
    on_axis = [-0.9, 0.8, 0.0, 0.1, -0.4, 0.5]
    fig = persona_map_figure(
        [f"role-{i}" for i in range(len(roles))],
        roles,
        on_axis,
        [6.1, 1.05],
        layer=15,
        variance=[0.4, 0.2],
        points=[
            MapPoint("your prompt", [141.4, -99.3], "prompt"),
            MapPoint("its answer", [-19.8, 0.05], "answer"),
        ],
    )
    points = {t.name: t for t in fig.data if t.name.startswith(("your prompt", "its answer"))}
    assert set(points) == {"your prompt (off the map)", "its answer (off the map)"}
    width, height = 7.4 - -9.2, 5.4 - -5.0
    for t in points.values():
        # Drawn within a quarter of the roles' box of its edge: the roles fill most of the map.
        assert -9.2 - width / 4 <= t.x[0] <= 7.4 + width / 4, (t.name, t.x)
        assert -5.0 - height / 4 <= t.y[0] <= 5.4 + height / 4, (t.name, t.y)
        assert t.marker.symbol.endswith("-open")
    answer = points["its answer (off the map)"]
    assert answer.x[0] < -9.2 and abs(answer.y[0]) < 1  # still on its side, in its direction
    assert "19.80" in answer.hovertemplate  # its real place, on hover
