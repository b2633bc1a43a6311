"""Exporting a run: the JSON record and the projections CSV (formats: run_export's docstring).

Real runs on the tiny model check that everything arrives; hand-made outputs check the hard
cases (tokens with commas, quotes, line breaks, formula-like tokens, non-finite numbers).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace

import pytest
import torch

from persona_explorer.engine.model import LoadedModel
from persona_explorer.evaluate.compare import (
    CompareRequest,
    RowOutput,
    SteerOutput,
    SteerRow,
    compare,
)
from persona_explorer.evaluate.run_export import (
    CSV_COLUMNS,
    FORMAT,
    projections_csv,
    run_json,
    run_record,
)
from persona_explorer.steering import generation
from persona_explorer.steering.generation import SamplingConfig
from persona_explorer.vectors.persona_vector import PersonaVector

pytestmark = pytest.mark.usefixtures("one_thread")

N = 3  # layers of the hand-made outputs
TRICKY = ["a,b", 'say "hi"', "line\nbreak", "=1+1", "+x", "-y", "@sum", "\tcell", " plain", "é×"]


def persona(model: LoadedModel, name: str, seed: int) -> PersonaVector:
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(model.n_layers, model.d_model, generator=gen)
    return PersonaVector(name=name, vectors=rows, model_id=model.model_id)


@pytest.fixture(scope="module")
def real_run(llama: LoadedModel) -> SteerOutput:
    rows = (
        SteerRow(persona(llama, "pirate", 1), (1,), 3.0),
        SteerRow(persona(llama, "poet", 2), (2,), -2.0),
    )
    cfg = SamplingConfig(max_new_tokens=5, stop_at_eos=False, seed=7)
    return compare(llama, CompareRequest("Hi, there!", rows, system="Be brief.", sampling=cfg))


def made_row(label: str, tokens: list[str], strength: float = 0.0) -> RowOutput:
    values = [float(i) - 1.5 for i in range(len(tokens))]
    return RowOutput(
        label=label,
        strength=strength,
        text="".join(tokens),
        tokens=list(range(len(tokens))),
        token_strings=tokens,
        layer_projection=[0.5, -1.25, 2.0],
        token_projection=values,
        finished=False,
        vector_name="p",
        vector_model_id="m",
        layers=(1,) if strength else (),
        readout_layer=2,
        token_injected=0.75 if strength else 0.0,
        layer_injected=[0.0, 1.0, 0.75] if strength else [0.0] * N,
        baseline_layer_projection=[0.5, -1.25, 2.0],
        baseline_token_projection=[-1.5],
    )


def made_output(rows: list[RowOutput], stopped: bool = True) -> SteerOutput:
    return SteerOutput(
        rows=rows,
        layers=(1,),
        readout_layer=2,
        decoder="hf",
        seconds=0.5,
        new_tokens=sum(len(r.tokens) for r in rows),
        stopped=stopped,
        prompt='Hi, "you"\n=2',
        system=None,
        positions="all",
        sampling=SamplingConfig(),
        model_id="m",
    )


def defused(text: str) -> str:
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def parse_csv(text: str) -> list[dict[str, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    assert tuple(header) == CSV_COLUMNS
    return [dict(zip(header, line, strict=True)) for line in reader]


# --------------------------------------------------------------------------- JSON


def test_json_holds_the_whole_run(real_run: SteerOutput) -> None:
    out = real_run
    extra = {"persona": "pirate", "layers": [99], "note": ("a", 1), "who": "capitán ×2"}
    text = run_json(out, extra)
    record = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert record == run_record(out, extra)
    assert record["format"] == FORMAT and record["version"] == 1
    assert record["prompt"] == "Hi, there!" and record["system"] == "Be brief."
    assert record["stopped"] is False
    timing = record["timing"]
    assert timing["new_tokens"] == out.new_tokens == 15 and timing["decoder"] == out.decoder
    settings = record["settings"]
    assert settings["model_id"] == out.model_id and settings["positions"] == "all"
    assert settings["readout_layer"] == out.readout_layer == 2
    assert settings["layers"] == [1, 2]  # the run's own value wins over the caller's
    assert settings["strengths"] == [3.0, -2.0]
    assert settings["vectors"] == [
        {"name": "pirate", "model_id": out.model_id},
        {"name": "poet", "model_id": out.model_id},
    ]
    assert settings["sampling"]["max_new_tokens"] == 5 and settings["sampling"]["seed"] == 7
    assert settings["persona"] == "pirate" and settings["note"] == ["a", 1]
    assert [r["kind"] for r in record["rows"]] == ["baseline", "steered", "steered"]
    for got, row in zip(record["rows"], out.rows, strict=True):
        assert got["label"] == row.label and got["text"] == row.text
        assert got["tokens"] == row.token_strings and got["token_ids"] == row.tokens
        assert got["layer_projection"] == row.layer_projection  # exact: floats round-trip
        assert got["token_projection"] == row.token_projection
        assert got["baseline_layer_projection"] == row.baseline_layer_projection
        assert got["baseline_token_projection"] == row.baseline_token_projection
        assert got["layer_injected"] == row.layer_injected
        assert got["token_injected"] == row.token_injected
        assert got["layers"] == list(row.layers) and got["readout_layer"] == row.readout_layer
        assert got["finished"] is False and got["stopped"] is False
    assert "capitán ×2" in text  # ensure_ascii=False: labels stay readable


def test_json_of_a_stopped_run_and_of_bad_numbers() -> None:
    base = made_row("baseline", ["x"])
    nan_row = replace(made_row("s", ["y"], 1.0), layer_projection=[math.nan, math.inf, 1.0])
    record = json.loads(run_json(made_output([base, nan_row])))
    assert record["stopped"] is True
    assert [r["stopped"] for r in record["rows"]] == [True, True]
    assert record["rows"][1]["layer_projection"] == [None, None, 1.0]
    assert record["prompt"] == 'Hi, "you"\n=2'


def test_json_of_a_run_stopped_before_any_token(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation, "PREFILL_CHUNK", 4)
    req = CompareRequest("Hi, there!", (SteerRow(persona(llama, "pirate", 1), (1,), 3.0),))
    out = compare(llama, req, should_stop=lambda: True)
    record = json.loads(run_json(out, {}))
    assert record["stopped"] is True and record["timing"]["new_tokens"] == 0
    assert [r["tokens"] for r in record["rows"]] == [[], []]
    lines = parse_csv(projections_csv(out))
    assert len(lines) == 2 * llama.n_layers and {x["kind"] for x in lines} == {"layer"}


# --------------------------------------------------------------------------- CSV


def test_csv_has_a_line_per_layer_and_per_token(real_run: SteerOutput) -> None:
    out = real_run
    lines = parse_csv(projections_csv(out))
    n_layers = len(out.baseline.layer_projection)
    for index, row in enumerate(out.rows):
        mine = [x for x in lines if x["row"] == str(index)]
        layer_lines = [x for x in mine if x["kind"] == "layer"]
        token_lines = [x for x in mine if x["kind"] == "token"]
        assert len(mine) == len(layer_lines) + len(token_lines)
        assert [int(x["layer"]) for x in layer_lines] == list(range(n_layers))
        assert [float(x["projection"]) for x in layer_lines] == row.layer_projection
        base = [float(x["baseline_projection"]) for x in layer_lines]
        assert base == row.baseline_layer_projection
        assert [float(x["injected"]) for x in layer_lines] == row.layer_injected
        assert all(x["token_index"] == x["token"] == "" for x in layer_lines)
        assert [int(x["token_index"]) for x in token_lines] == list(range(len(row.tokens)))
        assert [x["token"] for x in token_lines] == [defused(t) for t in row.token_strings]
        assert [float(x["projection"]) for x in token_lines] == row.token_projection
        assert {int(x["layer"]) for x in token_lines} == {row.readout_layer}
        assert {float(x["injected"]) for x in token_lines} == {row.token_injected}
        mean = row.baseline_layer_projection[row.readout_layer]
        assert {float(x["baseline_projection"]) for x in token_lines} == {mean}
        assert {x["label"] for x in mine} == {row.label}
    assert len(lines) == len(out.rows) * n_layers + sum(len(r.tokens) for r in out.rows)


def test_csv_quotes_tricky_tokens_and_defuses_formulas() -> None:
    rows = [made_row("baseline", ["ok"]), made_row("-evil ×2", TRICKY, 2.0)]
    text = projections_csv(made_output(rows))
    tokens = [x["token"] for x in parse_csv(text) if x["kind"] == "token" and x["row"] == "1"]
    want = ["a,b", 'say "hi"', "line\nbreak", "'=1+1", "'+x", "'-y", "'@sum", "'\tcell"]
    assert tokens == [*want, " plain", "é×"]
    assert "'=1+1" in text and '"say ""hi"""' in text
    lines = parse_csv(text)
    assert {x["label"] for x in lines if x["row"] == "1"} == {"'-evil ×2"}
    # Numbers stay numbers, negative ones too.
    first = next(x for x in lines if x["row"] == "1" and x["kind"] == "token")
    assert first["projection"] == "-1.5" and first["injected"] == "0.75"


def test_csv_writes_non_finite_numbers_as_empty_cells() -> None:
    row = replace(made_row("s", ["y"], 1.0), layer_projection=[math.nan, -math.inf, 1.0])
    lines = parse_csv(projections_csv(made_output([made_row("baseline", ["x"]), row])))
    got = [x["projection"] for x in lines if x["row"] == "1" and x["kind"] == "layer"]
    assert got == ["", "", "1.0"]
