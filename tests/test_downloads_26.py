"""Issue 26, "Taking work home": the Sweep grid, the Drift series and the Persona space
coordinates as JSON and CSV files that record how they were made (model, layers, vectors,
settings, the app's version), written in the app's capped export folder and safe to open in a
spreadsheet. The browser side is ``tests/test_app_downloads.py``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch

from persona_explorer.core.config import app_version
from persona_explorer.engine.model import LoadedModel
from persona_explorer.evaluate.sweep_config import SweepConfig
from persona_explorer.evaluate.sweep_result import Cell, SweepResult
from persona_explorer.ui.drift import downloads as drift_downloads
from persona_explorer.ui.persona_space import downloads as space_downloads
from persona_explorer.ui.persona_space.handlers import PersonaMapForm
from persona_explorer.ui.shared import downloads
from persona_explorer.ui.shared.context import AppContext, Exports
from persona_explorer.ui.sweep import downloads as sweep_downloads
from persona_explorer.ui.sweep.views import SweepRun
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.test_persona_space import synthetic
from tests.tiny_models import D_MODEL, N_LAYERS, tiny_app_context

PROVENANCE = ("model_id", "app_version", "layers", "vectors", "settings", "created")


@pytest.fixture
def ctx(llama: LoadedModel, tmp_path: Path, one_thread: None) -> AppContext:
    context = tiny_app_context(llama, tmp_path, {"tiny-pirate": 2.0}, default_persona="tiny-pirate")
    context._axis = synthetic(n_roles=6, n_layers=N_LAYERS, d=D_MODEL)
    return context


def read_pair(ctx: AppContext, paths: tuple) -> tuple[dict, list[dict]]:
    """Both files, checked to lie in the export folder and to carry the provenance."""
    json_path, csv_path = (Path(p) for p in paths)
    root = ctx.exports.root.resolve()
    for path in (json_path, csv_path):
        assert path.is_file() and root in path.resolve().parents
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["format"] == downloads.FORMAT and data["version"] == downloads.VERSION
    assert data["model_id"] == ctx.model.model_id
    assert data["app_version"] == app_version() != ""
    assert isinstance(data["layers"], list) and data["layers"]
    assert isinstance(data["vectors"], list) and isinstance(data["settings"], dict)
    assert data["created"].endswith("Z")
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text(encoding="utf-8"))))
    assert rows, "an empty table"
    header = list(rows[0])
    assert header[: len(data["columns"])] == data["columns"]
    assert tuple(header[len(data["columns"]) :]) == PROVENANCE
    assert len(rows) == len(data["rows"])
    for row in rows:
        assert row["model_id"] == data["model_id"]
        assert row["app_version"] == data["app_version"]
        assert json.loads(row["layers"]) == data["layers"]
        assert json.loads(row["vectors"]) == data["vectors"]
        assert json.loads(row["settings"]) == data["settings"]
    return data, rows


# --------------------------------------------------------------------------- the shared format


def test_csv_cells_are_escaped_and_numbers_stay_numbers(tmp_path: Path) -> None:
    prov = downloads.provenance(
        "test", model_id="=HYPERLINK(1)", layers=[3], vectors=[{"name": "@evil"}], settings={}
    )
    text = downloads.table_csv(
        prov, ("a", "b", "c", "d"), [["=1+1", -0.5, float("nan"), True], ["+x", None, 2, "ok"]]
    )
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[1][:4] == ["'=1+1", "-0.5", "", "true"]
    assert rows[2][:4] == ["'+x", "", "2", "ok"]
    assert rows[1][4] == "'=HYPERLINK(1)"  # the model id is text like any other
    assert json.loads(rows[1][7]) == [{"name": "@evil"}]  # inside JSON: starts with "["
    with pytest.raises(ValueError):
        downloads.table_csv(prov, ("a",), [[1, 2]])


def test_files_go_to_a_fresh_export_folder_under_fixed_names(tmp_path: Path) -> None:
    exports = Exports(tmp_path / "exports", "llama")
    (tmp_path / "exports").mkdir()
    prov = downloads.provenance("t", model_id="m", layers=[0], vectors=[], settings={"x": 1.0})
    a = downloads.write_pair(exports, "persona-test", prov, ("v",), [[float("inf")]])
    b = downloads.write_pair(exports, "persona-test", prov, ("v",), [[1.0]])
    assert a[0].parent != b[0].parent and a[0].parent.parent == exports.root
    assert [p.name for p in a] == ["persona-test.json", "persona-test.csv"]
    assert json.loads(a[0].read_text())["rows"] == [[None]]  # strict JSON
    for bad in ("../escape", "a/b", "", "UPPER", "x" * 80):
        with pytest.raises(ValueError):
            downloads.write_pair(exports, bad, prov, ("v",), [[1]])


# --------------------------------------------------------------------------- the sweep grid


def _cell(layer: int, strength: float, trait: float | None) -> Cell:
    return Cell(layer, strength, trait, 1.5, 3.0, 0.8, 0.05, ["=SUM(A1)", "b"], None, 0.1)


def test_the_sweep_grid_downloads_with_its_settings(ctx: AppContext) -> None:
    cfg = SweepConfig(layers=(1, 2), strengths=(2.0, 4.0), max_new_tokens=8)
    grid = [_cell(layer, s, 0.1 * layer * s) for layer in (1, 2) for s in (2.0, 4.0)]
    result = SweepResult(
        vector="tiny-pirate", read_layer=2, prompts=("Hi?",), config=cfg,
        baseline=_cell(-1, 0.0, None), grid=grid, recommended=grid[1], reason="because",
        stopped=False, seconds=1.0, rows_generated=5, rows_total=5,
    )  # fmt: skip
    vec = PersonaVector("tiny-pirate", torch.zeros(N_LAYERS, D_MODEL), model_id="tiny")
    assert sweep_downloads.sweep_downloads(ctx, None) == (None, None)
    paths = sweep_downloads.sweep_downloads(ctx, SweepRun("builtin:tiny-pirate", vec, result))
    data, rows = read_pair(ctx, paths)
    assert data["kind"] == "sweep-grid" and data["layers"] == [1, 2]
    assert data["vectors"] == [
        {"name": "tiny-pirate", "key": "builtin:tiny-pirate", "model_id": "tiny"}
    ]
    s = data["settings"]
    assert s["strengths"] == [2.0, 4.0] and s["max_new_tokens"] == 8 and s["read_layer"] == 2
    assert s["criteria"]["margin"] > 0 and s["prompts"] == ["Hi?"]
    assert [r["kind"] for r in rows] == ["baseline", "cell", "cell", "cell", "cell"]
    assert rows[0]["layer"] == "" and rows[0]["trait"] == ""
    assert [r["recommended"] for r in rows[1:]] == ["false", "true", "false", "false"]
    assert float(rows[2]["trait"]) == pytest.approx(0.4)
    assert data["result"]["grid"][0]["texts"][0] == "=SUM(A1)"  # JSON keeps the text as is


# --------------------------------------------------------------------------- the drift series


def _turn(turn: int, preview: str) -> dict:
    return {
        "turn": turn,
        "projection": [float(i) for i in range(N_LAYERS)],
        "normalised": [0.1 * i for i in range(N_LAYERS)],
        "personas": {"tiny-pirate": [-1.0] * N_LAYERS},
        "preview": preview,
        "settings": "steered: tiny-pirate, strength 2 at layer 1",
        "windowed": False,
    }


def test_the_chat_series_downloads_every_layer(ctx: AppContext) -> None:
    assert drift_downloads.chat_downloads(ctx, {}, 2) == (None, None)
    history = {
        "conversation": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Ahoy"},
            {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "Arr"},
        ],
        "turns": [_turn(1, "Ahoy"), _turn(2, "-Arr")],
    }
    data, rows = read_pair(ctx, drift_downloads.chat_downloads(ctx, history, 2))
    assert data["kind"] == "drift-chat" and data["layers"] == list(range(N_LAYERS))
    assert data["settings"]["plot_layer"] == 2
    assert data["vectors"] == [{"name": "tiny-pirate", "role": "projected onto"}]
    assert data["conversation"][1]["content"] == "Ahoy"
    assert len(rows) == 2 * N_LAYERS * 2  # turns x layers x (axis + one persona)
    axis = [r for r in rows if r["series"] == "axis" and r["layer"] == "3"]
    assert [float(r["projection"]) for r in axis] == [3.0, 3.0]
    assert axis[1]["preview"] == "'-Arr"  # not a formula
    # A history edited into nonsense gives no file (the chat says what is wrong).
    assert drift_downloads.chat_downloads(ctx, {"conversation": "x"}, 2) == (None, None)


def test_the_replay_series_downloads_what_the_session_keeps(ctx: AppContext) -> None:
    assert drift_downloads.replay_downloads(ctx, [], None) == (None, None)
    turns = [
        {
            "turn": t,
            "projection_by_layer": [1.0] * N_LAYERS,
            "normalised_by_layer": [0.5] * N_LAYERS,
            "personas_by_layer": {},
            "windowed": t == 2,
            "preview": f"turn {t}",
        }
        for t in (1, 2)
    ]
    kept = [
        {
            "label": "Therapy · capped here", "turns": turns, "window_tokens": 512,
            "total_turns": 2, "stopped": False, "source": "read now", "notes": [], "meta": {},
        }
    ]  # fmt: skip
    data, rows = read_pair(ctx, drift_downloads.replay_downloads(ctx, kept, 1))
    assert data["kind"] == "drift-replays" and data["settings"]["plot_layer"] == 1
    (replay,) = data["settings"]["replays"]
    assert replay["capped"] and replay["window_tokens"] == 512
    assert data["settings"]["capping_when_on"]["layers"]
    assert len(rows) == 2 * N_LAYERS
    assert {r["windowed"] for r in rows if r["turn"] == "2"} == {"true"}


# --------------------------------------------------------------------------- the persona space


def test_the_persona_space_coordinates_download(ctx: AppContext) -> None:
    form = PersonaMapForm(layer=2, view="2-D", personas=["tiny-pirate"], arrow_length="spread")
    data, rows = read_pair(ctx, space_downloads.map_downloads(ctx, form, None, None))
    assert data["kind"] == "persona-space" and data["layers"] == [2]
    assert [v["name"] for v in data["vectors"]] == ["tiny-pirate"]
    assert data["settings"]["arrow_length"] == "spread" and data["settings"]["placed"] is None
    kinds = [r["kind"] for r in rows]
    assert kinds.count("assistant") == 1 and kinds.count("role") == 6
    assert kinds.count("arrow") == 1
    (arrow,) = (r for r in rows if r["kind"] == "arrow")
    assert arrow["name"] == "tiny-pirate" and arrow["start_pc1"] != ""
    assistant = rows[0]
    assert float(assistant["pc1"]) >= 0 and float(assistant["axis"]) == 1.0
    assert data["map"]["layer"] == 2 and len(data["map"]["roles"]) == 6
