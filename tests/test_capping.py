"""Activation capping on the Assistant Axis: the engine on tiny models with a synthetic axis,
the figures, and the embedded model through the engine and the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
import torch

from persona_explorer import cli
from persona_explorer.axis.assistant_axis import QUANTILE_LEVELS, AxisData
from persona_explorer.axis.capping import (
    CapRequest,
    cap,
    cap_stream,
    lift_tolerance,
    lifted_share,
    parse_cap_layers,
)
from persona_explorer.core.errors import InputError
from persona_explorer.engine.model import LoadedModel
from persona_explorer.plots.capping import cap_layer_figure, cap_token_figure
from persona_explorer.steering.generation import SamplingConfig
from persona_explorer.steering.ops import Add, Cap
from persona_explorer.vectors.files import save
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.tiny_models import tiny_app_context

PROMPT = "What is the capital of France?"
TOKENS = 12


def synthetic_axis(model: LoadedModel, low: float, high: float, seed: int = 0) -> AxisData:
    """An axis of random directions whose floor at percentile p is ``low + (high-low)*p/100``
    at every layer (the quantile table is a straight line from ``low`` to ``high``)."""
    g = torch.Generator().manual_seed(seed)
    n, d = model.n_layers, model.d_model
    roles = torch.randn(3, n, d, generator=g)
    default = torch.randn(n, d, generator=g)
    levels = torch.tensor(QUANTILE_LEVELS) / 100
    table = (low + (high - low) * levels)[:, None].expand(len(QUANTILE_LEVELS), n).contiguous()
    return AxisData(
        model_id=model.model_id,
        roles=("a", "b", "c"),
        role_vectors=roles,
        default_vector=default,
        axis=torch.randn(n, d, generator=g),
        default_token_quantiles=table,
    )


def request(**overrides: object) -> CapRequest:
    args: dict = {
        "prompt": PROMPT,
        "sampling": SamplingConfig(max_new_tokens=TOKENS, stop_at_eos=False),
        "cap_layers": (1, 2),
    }
    args.update(overrides)
    return CapRequest(**args)


def test_a_floor_below_every_token_changes_nothing(llama: LoadedModel, one_thread: None) -> None:
    axis = synthetic_axis(llama, -1e4, -1e4 + 1)
    out = cap(llama, axis, request())
    base, capped = out.row("baseline"), out.row("capped")
    assert capped.tokens == base.tokens and len(base.tokens) == TOKENS
    assert capped.axis_projection == base.axis_projection  # bit-identical, not just close
    assert capped.token_projection == base.token_projection
    assert capped.cap_token_projection == base.cap_token_projection
    assert capped.cap_fired == [0.0, 0.0] and base.cap_fired is None
    assert out.cap.layers == (1, 2) and out.readout_layer == 2
    assert out.cap.floors == pytest.approx([-1e4 + 0.25] * 2)


def test_every_capped_token_is_at_or_above_the_floor(llama: LoadedModel, one_thread: None) -> None:
    # Floors at the baseline's median per-token projection: about half the tokens get lifted.
    probe = cap(llama, synthetic_axis(llama, -1e4, -1e4 + 1), request())
    values = torch.tensor(probe.row("baseline").cap_token_projection)  # [2, n]
    mid = float(values.median())
    spread = float(values.max() - values.min())
    axis = synthetic_axis(llama, mid - spread, mid + spread)  # percentile 50 -> mid
    out = cap(llama, axis, request(percentile=50))
    assert out.cap.floors == pytest.approx([mid, mid], abs=1e-5)
    capped = out.row("capped")
    for k, floor in enumerate(out.cap.floors):
        proj = torch.tensor(capped.cap_token_projection[k])
        assert len(proj) == TOKENS
        assert (proj >= floor - 1e-4).all(), (k, proj.min(), floor)
    assert capped.cap_fired is not None
    assert all(0.0 < share <= 1.0 for share in capped.cap_fired)
    # The mean of tokens that are all >= τ is >= τ.
    for layer, floor in zip((1, 2), out.cap.floors, strict=True):
        assert capped.axis_projection[layer] >= floor - 1e-4


def test_steered_and_capped_rows_combine_the_plans(llama: LoadedModel, one_thread: None) -> None:
    g = torch.Generator().manual_seed(3)
    vec = PersonaVector(
        "synth", torch.randn(llama.n_layers, llama.d_model, generator=g) * 4, model_id=""
    )
    low = synthetic_axis(llama, -1e4, -1e4 + 1)
    out = cap(llama, low, request(vector=vec, layers=(1,), strength=3.0))
    assert [r.key for r in out.rows] == ["baseline", "capped", "steered", "steered_capped"]
    assert [r.label for r in out.rows][-1] == "steered + capped"
    steered, both = out.row("steered"), out.row("steered_capped")
    assert steered.text != out.row("baseline").text  # the vector does something
    # A floor nobody reaches: steered + capped is exactly the steered row.
    assert both.tokens == steered.tokens and both.axis_projection == steered.axis_projection
    assert steered.cap_fired is None and both.cap_fired == [0.0, 0.0]

    high = synthetic_axis(llama, 50.0, 51.0)  # above every token: the cap always lifts
    out = cap(llama, high, request(vector=vec, layers=(1,), strength=3.0))
    both = out.row("steered_capped")
    assert both.cap_fired == [1.0, 1.0]
    for k, floor in enumerate(out.cap.floors):
        assert min(both.cap_token_projection[k]) >= floor - 1e-3
    assert out.combined and out.vector_name == "synth" and out.steer_layers == (1,)
    # The normalised scale: the roles' mean at 0 and the Assistant at 1, at every layer.
    assert out.normalised(out.roles_projection) == pytest.approx([0.0] * 4, abs=1e-6)
    assert out.normalised(out.default_projection) == pytest.approx([1.0] * 4, abs=1e-6)
    two = out.normalised([out.default_projection[1], out.roles_projection[2]], [1, 2])
    assert two == pytest.approx([1.0, 0.0], abs=1e-6)
    record = out.as_dict()
    json.dumps(record)  # JSON-friendly
    assert record["cap"]["layers"] == [1, 2] and len(record["rows"]) == 4


def test_the_cap_plan_adds_before_it_caps(llama: LoadedModel) -> None:
    """The steered + capped row's plan is the add ops then the cap ops (one row plan)."""
    from persona_explorer.axis.capping import _check

    vec = PersonaVector("synth", torch.ones(llama.n_layers, llama.d_model), model_id="")
    checked = _check(
        llama, synthetic_axis(llama, 0, 1), request(vector=vec, layers=(1, 2), strength=2.0)
    )
    plan = checked.plans["steered_capped"]
    assert [type(op) for op in plan] == [Add, Add, Cap, Cap]
    assert plan[:2] == checked.plans["steered"] and plan[2:] == checked.plans["capped"]
    assert checked.plans["baseline"] == ()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"percentile": 101}, "0 to 100"),
        ({"percentile": float("nan")}, "finite"),
        ({"cap_layers": (9,)}, "out of range"),
        ({"cap_layers": ()}, "at least one layer"),
        ({"readout_layer": -2}, "out of range"),
        ({"positions": "prompt"}, "positions"),
        ({"vector": PersonaVector("v", torch.ones(4, 64), model_id=""), "layers": ()}, "layer"),
        ({"vector": PersonaVector("v", torch.ones(4, 8), model_id=""), "layers": (1,)}, "d_model"),
    ],
)
def test_bad_requests_fail_before_anything_runs(
    llama: LoadedModel, overrides: dict, needle: str
) -> None:
    with pytest.raises(InputError, match=needle):
        cap_stream(llama, synthetic_axis(llama, 0, 1), request(**overrides))


def test_an_axis_for_another_model_is_refused(llama: LoadedModel, gpt2: LoadedModel) -> None:
    wrong = synthetic_axis(llama, 0, 1)
    wrong = AxisData(
        "other", wrong.roles, wrong.role_vectors[:, :, :8], wrong.default_vector[:, :8],
        wrong.axis[:, :8], wrong.default_token_quantiles,
    )  # fmt: skip
    with pytest.raises(InputError, match="build the axis"):
        cap_stream(llama, wrong, request())


def test_stop_reports_what_was_made(llama: LoadedModel, one_thread: None) -> None:
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    out = cap(llama, synthetic_axis(llama, 0, 1), request(), should_stop=stop)
    assert out.stopped and 0 < len(out.row("baseline").tokens) < TOKENS


def test_lifted_share_and_tolerance() -> None:
    proj = torch.tensor([[1.0, 5.0], [1.0 + 1e-7, 6.0], [2.0, 5.0]])
    floors = torch.tensor([1.0, 5.0])
    tol = lift_tolerance(torch.full((3, 2), 10.0), torch.float32)
    assert lifted_share(proj, floors, tol) == pytest.approx([2 / 3, 2 / 3])
    assert lifted_share(torch.zeros(0, 2), floors, tol[:0]) == [0.0, 0.0]
    assert float(lift_tolerance(torch.tensor(100.0), torch.bfloat16)) > float(
        lift_tolerance(torch.tensor(100.0), torch.float32)
    )


def test_parse_cap_layers() -> None:
    assert parse_cap_layers("", 30) is None and parse_cap_layers(None, 30) is None
    assert parse_cap_layers("15-18", 30) == (15, 16, 17, 18)
    assert parse_cap_layers(" 3, 1 ", 30) == (1, 3)
    with pytest.raises(InputError, match="out of range"):
        parse_cap_layers("28-31", 30)
    with pytest.raises(InputError, match="Cannot read"):
        parse_cap_layers("a-b", 30)


# --------------------------------------------------------------------------- figures


def test_the_layer_figure_draws_pairs_the_window_and_the_floors() -> None:
    n = 6
    fig = cap_layer_figure(
        {"uncapped": [0.0] * n, "steered": [1.0] * n},
        {"capped": [0.5] * n, "steered + capped": [1.5] * n},
        cap_layers=(2, 3),
        floors=(0.4, 0.6),
        readout_layer=3,
        landmarks={"the Assistant": 1.0},
    )
    names = [t.name for t in fig.data]
    for name in ("uncapped", "capped", "steered", "steered + capped"):
        assert name in names
    dashes = {t.name: t.line.dash for t in fig.data if t.name in ("uncapped", "capped")}
    assert dashes["uncapped"] == "dot" and dashes["capped"] in (None, "solid")
    floor_trace = next(t for t in fig.data if t.name == "floor τ")
    assert list(floor_trace.x) == [2, 3] and list(floor_trace.y) == [0.4, 0.6]
    notes = [a.text or "" for a in fig.layout.annotations]
    assert any("capped at 2–3" in t for t in notes) and "the Assistant" in notes
    with pytest.raises(ValueError, match="floors"):
        cap_layer_figure({"uncapped": [0.0] * n}, {"capped": [0.0] * n}, (2, 3), (0.4,))
    with pytest.raises(ValueError, match="match"):
        cap_layer_figure({"uncapped": [0.0] * n}, {"capped": [0.0] * 5}, (2,), (0.4,))


def test_the_token_figure_escapes_tokens_and_marks_the_floor() -> None:
    fig = cap_token_figure(
        [("uncapped", ["<b>hi", " there"], [0.1, -0.2], False), ("capped", ["a"], [0.5], True)],
        layer=3,
        floor=0.4,
    )
    assert [t.name for t in fig.data][:2] == ["uncapped", "capped"]
    assert "&lt;b&gt;hi" in fig.data[0].customdata[0]
    assert any("τ" in (a.text or "") for a in fig.layout.annotations)
    marked = cap_token_figure(
        [("capped", ["a"], [0.5], True)], 3, 0.05, y_title="Position", landmarks={"A": 1.0}
    )
    assert "A" in [a.text for a in marked.layout.annotations]
    assert marked.layout.yaxis.title.text == "Position"
    with pytest.raises(ValueError, match="tokens"):
        cap_token_figure([("x", ["a", "b"], [1.0], False)], layer=0, floor=None)


# --------------------------------------------------------------------------- the app's handler


@pytest.fixture
def app_ctx(
    llama: LoadedModel, tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> Any:
    from persona_explorer.ui.shared.context import AppContext

    # No build (minutes): a synthetic axis, its floor above every token.
    axis = synthetic_axis(llama, 50.0, 51.0)
    monkeypatch.setattr(AppContext, "axis", lambda self, progress=None: axis)
    return tiny_app_context(llama, tmp_path, {"tiny-pirate": 2.0}, "tiny-pirate", layer=1)


def test_the_steer_capped_endpoint_through_the_demo(app_ctx: Any) -> None:
    from persona_explorer.ui import build_demo

    demo = build_demo(app_ctx.settings, app_ctx.model)
    named = demo.get_api_info()["named_endpoints"]
    params = [p["parameter_name"] for p in named["/steer_capped"]["parameters"]]
    assert params[:3] == ["prompt", "combine", "persona"] and "cap_percentile" in params
    fn = next(f.fn for f in demo.fns.values() if f.api_name == "steer_capped")
    updates = list(fn("Hi!", True, "tiny-pirate", 1, 2.0, 25, "2-3", 4, progress=_no_progress))
    final = {getattr(k, "elem_id", None): v for k, v in updates[-1].items()}
    numbers = final["pe-cap-json"]
    assert [r["key"] for r in numbers["rows"]][-1] == "steered_capped"
    assert numbers["cap"]["layers"] == [2, 3]
    assert all(r["cap_fired"] == [1.0, 1.0] for r in numbers["rows"] if r["cap_fired"])
    assert "lifted 100% of the tokens at layer 2" in final["pe-cap-status"]
    assert final["pe-cap-steered-capped"] == numbers["rows"][3]["text"]
    with pytest.raises(gr.Error, match="out of range"):
        list(fn("Hi!", False, "", 0, 0.0, 25, "7", 4, progress=_no_progress))
    with pytest.raises(gr.Error, match="true or false"):
        list(fn("Hi!", "yes", "", 0, 0.0, 25, "", 4, progress=_no_progress))


def _no_progress(*args: object, **kwargs: object) -> None:
    return None


ROW_WORDS = ["uncapped", "capped", "steered", "steered + capped"]


def test_every_row_has_one_word_and_tau_is_in_the_plots_units(app_ctx: Any) -> None:
    """Issue 26: the legend said "baseline" where the box says "Uncapped", and the status
    listed τ in raw units while the plot drew it on the scale 0 = roles' mean, 1 = Assistant."""
    from persona_explorer.plots.capping import FLOOR_NAME
    from persona_explorer.ui import build_demo

    demo = build_demo(app_ctx.settings, app_ctx.model)
    ids = ("pe-cap-baseline", "pe-cap-capped", "pe-cap-steered", "pe-cap-steered-capped")
    boxes = {b.elem_id: b.label for b in demo.blocks.values() if getattr(b, "elem_id", "") in ids}
    assert [boxes[i].lower() for i in ids] == ROW_WORDS
    fn = next(f.fn for f in demo.fns.values() if f.api_name == "steer_capped")
    updates = list(fn("Hi!", True, "tiny-pirate", 1, 2.0, 25, "2-3", 4, progress=_no_progress))
    final = {getattr(k, "elem_id", None): v for k, v in updates[-1].items()}
    numbers = final["pe-cap-json"]
    assert [r["label"] for r in numbers["rows"]] == ROW_WORDS
    layer_fig, token_fig = final["pe-cap-plot"], final["pe-cap-token-plot"]
    named = [t.name for t in layer_fig.data if t.showlegend is not False]
    assert named == [*ROW_WORDS, FLOOR_NAME]
    assert [t.name for t in token_fig.data] == ROW_WORDS
    status = final["pe-cap-status"]
    assert "baseline" not in status.lower() and "baseline" not in layer_fig.to_json().lower()
    # τ as drawn: on the plot's scale, the same number on both plots and in the status.
    roles, default = numbers["roles_projection"], numbers["default_projection"]
    layers, raw = numbers["cap"]["layers"], numbers["cap"]["floors"]
    scaled = [(f - roles[x]) / (default[x] - roles[x]) for x, f in zip(layers, raw, strict=True)]
    floor = next(t for t in layer_fig.data if t.name == FLOOR_NAME)
    assert list(floor.y) == pytest.approx(scaled, abs=1e-6)
    (tau_line,) = [s for s in token_fig.layout.shapes if s.line.dash == "dash"]
    assert tau_line.y0 == pytest.approx(scaled[-1], abs=1e-6)  # the read-out is the last layer
    assert ", ".join(f"{v:.2f}" for v in scaled) in status.replace("−", "-")
    assert "0 = the roles' mean" in status


# --------------------------------------------------------------------------- embedded model


@pytest.fixture(scope="module")
def embedded() -> LoadedModel:
    from persona_explorer.engine.model import load_model

    return load_model(device="cpu")


ROLE_PLAY = "You are a pirate captain. Speak only like a pirate."


@pytest.mark.integration
def test_a_high_floor_changes_the_embedded_models_answer(embedded: LoadedModel) -> None:
    from persona_explorer.axis.build import axis_for
    from persona_explorer.core.config import load_settings

    axis = axis_for(embedded, load_settings().cache_dir)
    out = cap(
        embedded,
        axis,
        CapRequest(
            prompt="Tell me about your ship.",
            system=ROLE_PLAY,
            percentile=90,
            sampling=SamplingConfig(max_new_tokens=16),
        ),
    )
    base, capped = out.row("baseline"), out.row("capped")
    assert out.cap.layers == (15, 16, 17, 18)
    assert capped.text != base.text
    assert capped.cap_fired is not None and max(capped.cap_fired) > 0.3
    for k, (layer, floor) in enumerate(zip(out.cap.layers, out.cap.floors, strict=True)):
        tol = 1e-3 * max(1.0, abs(floor))
        assert min(capped.cap_token_projection[k]) >= floor - tol
        # The cap raises the answer's mean projection at every cap layer.
        assert capped.axis_projection[layer] > base.axis_projection[layer]


@pytest.mark.integration
def test_cli_cap_axis_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["steer", "--cap-axis", "--prompt", "Say hi.", "--max-new-tokens", "6", "--json"]
    assert cli.main(argv) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["prompt"] == "Say hi." and isinstance(record["capped"], str)
    assert record["cap"]["layers"] == [15, 16, 17, 18] and record["cap"]["percentile"] == 25
    assert len(record["cap"]["floors"]) == 4
    assert set(record["axis_projections"]) == {"baseline", "capped"}
    assert all(len(v) == 30 for v in record["axis_projections"].values())

    g = torch.Generator().manual_seed(5)
    vec = save(
        PersonaVector("rand", torch.randn(30, 576, generator=g) * 3), tmp_path / "v.safetensors"
    )
    argv = [
        "steer", "--vector", str(vec), "--layer", "12", "--strength", "4", "--cap-axis",
        "--cap-percentile", "60", "--cap-layers", "14-16", "--prompt", "Say hi.",
        "--max-new-tokens", "6", "--json",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    (record,) = json.loads(capsys.readouterr().out)
    # The Steer keys are still there, unchanged, beside the capping ones.
    assert {"baseline", "steered", "steered_all", "projections", "layers"} <= set(record)
    assert record["layers"] == [12]
    assert {"capped", "steered_capped", "cap", "axis_projections"} <= set(record)
    assert record["cap"]["layers"] == [14, 15, 16] and record["cap"]["percentile"] == 60
    assert set(record["axis_projections"]) == {"baseline", "capped", "steered", "steered_capped"}
    assert all(len(v) == 30 for v in record["axis_projections"].values())


def test_cli_needs_a_vector_unless_capping(tmp_path: Path, capsys) -> None:
    assert cli.main(["steer", "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err
    assert "--vector" in err and "--cap-axis" in err and "Traceback" not in err
    for bad, needle in (
        (["--cap-percentile", "120"], "0 to 100"),
        (["--cap-layers", "x"], "Cannot read"),
    ):
        assert cli.main(["steer", "--cap-axis", "--prompt", "Hi", *bad]) == 2
        assert needle in capsys.readouterr().err
    # The capping options mean nothing without --cap-axis: say so instead of ignoring them.
    assert cli.main(["steer", "--prompt", "Hi", "--cap-percentile", "30"]) == 2
    assert "--cap-axis" in capsys.readouterr().err


@pytest.mark.integration
def test_the_teaching_text_quotes_the_shipped_axis_floors() -> None:
    """The numbers "What am I looking at?" gives for why τ sits near the roles' mean (issue 26),
    measured on the shipped axis: τ on the plot's scale and raw, the median and 75th percentile
    tokens, and the Assistant's tokens' middle half against the roles-to-Assistant distance."""
    from persona_explorer.axis.assistant_axis import (
        default_cap_layers,
        normalised_projection,
        project,
    )
    from persona_explorer.axis.build import shipped_axis_path
    from persona_explorer.engine.model import EMBEDDED_MODEL_ID
    from persona_explorer.ui.shared.teaching import CAPPING

    data = AxisData.load(shipped_axis_path(EMBEDDED_MODEL_ID))
    layers = list(default_cap_layers(data.n_layers))
    roles = project(data.role_vectors, data.axis).mean(0)[layers]
    default = project(data.default_vector, data.axis)[layers]

    def scaled(percentile: float) -> list[float]:
        return normalised_projection(data.floors(percentile)[layers], roles, default).tolist()

    words = " ".join(CAPPING.split())
    assert f"layers {layers[0]}–{layers[-1]}" in words
    tau = ", ".join(f"{v:.2f}" for v in data.floors(25)[layers].tolist())
    assert f"(raw: {tau})" in words
    quoted = ", ".join(f"{v:.2f}".replace("-", "−") for v in scaled(25)[:-1])
    assert f"at {quoted} and {scaled(25)[-1]:.2f}" in words
    assert all(abs(v) < 0.35 for v in scaled(25))  # "at the roles' mean"
    assert all(0.75 <= v <= 1.0 for v in scaled(50))  # "the median token sits at 0.8–1"
    assert all(1.8 <= v <= 2.35 for v in scaled(75))  # "the 75th percentile near 2"
    spread = [b - a for a, b in zip(scaled(25), scaled(75), strict=True)]
    assert all(1.8 <= v <= 2.7 for v in spread)  # "about twice the distance"
