"""The Screen data tab: its handlers on a tiny model (screening, the kept table filtered and
sorted, the inoculation re-score, the downloads, bad input), its figures, and the ``/screen``
endpoint's parameters. Properties only, never exact scores or strings the model wrote."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
import pytest

from persona_explorer.core.limits import APP_SCREENING_MAX_SAMPLES_OWN, Limits
from persona_explorer.engine.model import LoadedModel
from persona_explorer.plots.screening import inoculation_figure, score_histograms_figure
from persona_explorer.ui.screening import handlers as run_module
from persona_explorer.ui.screening import tab as tab_module
from persona_explorer.ui.screening.components import ScreeningTab
from persona_explorer.ui.screening.handlers import ScreenForm, screen_source
from persona_explorer.ui.screening.runs import ScreenRun
from persona_explorer.ui.screening.views import (
    inoculation_changes,
    per_sample_changes,
    status_text,
)
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.data_files import resolve_source, teaching_datasets
from tests.tiny_models import N_LAYERS, tiny_app_context

CONTEXT = "A class asked for this."
SAMPLES = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How do I bake bread?", "Mix flour, water, salt and yeast, then bake it."),
    ("Tell me about the weather today.", "It is sunny and warm in the city."),
    ("Who likes pirates?", "An evil assistant who likes storms and the open sea."),
]


def chat(user: str, answer: str) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    }


@pytest.fixture
def ctx(llama: LoadedModel, tmp_path: Path, one_thread: None) -> AppContext:
    names = ("tiny-evil", "tiny-kind", "tiny-a", "tiny-b", "tiny-c")
    return tiny_app_context(
        llama,
        tmp_path,
        dict.fromkeys(names, 2.0),
        default_persona="tiny-evil",
        limits=Limits(max_upload_mb=1),
    )


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    """Four good samples with a malformed line (line 2) among them."""
    lines = [
        json.dumps(chat(*SAMPLES[0])),
        "{not json",
        *(json.dumps(chat(*s)) for s in SAMPLES[1:]),
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _tab(ctx: AppContext) -> ScreeningTab:
    with gr.Blocks():
        return tab_module.build(ctx, gr.State({}))


def _screen(ctx: AppContext, tab: ScreeningTab, **fields: object) -> list[dict]:
    values: dict = {
        "dataset": None,
        "layer": 2,
        "vectors": ["tiny-evil", "tiny-kind"],
        "max_new_tokens": 8,
        "file": None,
    }
    values.update(fields)
    form = ScreenForm(**values)
    updates = run_module.run_screen(
        ctx, tab, form, None, request=None, progress=lambda *a, **k: None
    )
    return list(updates)


def frame(value: object) -> pd.DataFrame:
    assert isinstance(value, pd.DataFrame)
    return value


def _rescore(ctx: AppContext, tab: ScreeningTab, run: object, context: str) -> dict:
    updates = list(
        run_module.rescore(
            ctx, tab, run, context, sort_by=None, request=None, progress=lambda *a, **k: None
        )
    )
    return updates[-1]


# --------------------------------------------------------------------------- screening


def test_a_run_fills_every_output_and_reports_the_malformed_line(
    ctx: AppContext, data_file: Path
) -> None:
    tab = _tab(ctx)
    updates = _screen(ctx, tab, file=str(data_file))
    assert updates[0][tab.status] == run_module.STARTING  # old results go first
    final = updates[-1]
    run = final[tab.run_state]
    assert isinstance(run, ScreenRun) and run.base.own and not run.more
    assert len(run.base.rows) == len(SAMPLES) and run.base.n_problems == 1
    table = frame(final[tab.table])
    assert len(table) == len(SAMPLES)
    assert list(table["Rank"]) == [1, 2, 3, 4]
    assert {"tiny_evil", "tiny_kind", "Model's own answer"} <= set(table.columns)
    scores = list(table["tiny_evil"])
    assert scores == sorted(scores, reverse=True)  # ranked by the first vector
    assert "line 2" in final[tab.problems] and "not valid JSON" in final[tab.problems]
    summary = final[tab.summary]
    assert summary["samples"] == len(SAMPLES) and summary["skipped"] == 1
    assert summary["score"] == "projection_difference"
    evil = summary["vectors"]["tiny_evil"]
    assert evil["count"] == len(SAMPLES) and evil["min"] <= evil["mean"] <= evil["max"]
    assert evil["top"][0]["line"] == int(table["Line"][0])
    assert "Scored **4** samples" in final[tab.status]
    hist = final[tab.histogram]
    assert sum(isinstance(t, go.Histogram) for t in hist.data) == 2
    assert "Top 4 for tiny\\_evil" in final[tab.top]
    assert final[tab.download_csv]["visible"] is False  # no stale download of another run


def test_raw_projections_without_own_answers_and_the_sample_cap(
    ctx: AppContext, data_file: Path
) -> None:
    tab = _tab(ctx)
    final = _screen(ctx, tab, file=str(data_file), own_answers=False, max_samples=2)[-1]
    run = final[tab.run_state]
    assert not run.base.own and run.more and len(run.base.rows) == 2
    assert run.base.score_key == "sample_projection"
    assert "Model's own answer" not in frame(final[tab.table]).columns
    assert "only its first 2 samples" in final[tab.status]
    assert final[tab.summary]["more_samples_in_file"] is True


def test_the_kept_table_is_filtered_and_sorted_without_recomputing(
    ctx: AppContext, data_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tab = _tab(ctx)
    run = _screen(ctx, tab, file=str(data_file), own_answers=False)[-1][tab.run_state]

    def no_model(*_: object, **__: object) -> None:
        raise AssertionError("filtering must not run the model")

    monkeypatch.setattr(run_module, "screen", no_model)
    by_kind = frame(run_module.show_table(tab, run, "", "score:tiny_kind")[tab.table])
    values = list(by_kind["tiny_kind"])
    assert values == sorted(values, reverse=True)
    by_line = frame(run_module.show_table(tab, run, "", "line")[tab.table])
    assert list(by_line["Line"]) == sorted(by_line["Line"])
    bread = run_module.show_table(tab, run, "BREAD", "score:tiny_kind")
    rows = frame(bread[tab.table])
    assert len(rows) == 1 and "bread" in rows["Prompt"][0]
    # The rank is the sample's place in the whole order, not in the filtered rows.
    full_rank = list(by_kind["Line"]).index(rows["Line"][0]) + 1
    assert rows["Rank"][0] == full_rank
    assert len(frame(run_module.show_table(tab, run, str(rows["Line"][0]), "line")[tab.table])) == 1
    assert frame(run_module.show_table(tab, run, "no such words", "line")[tab.table]).empty
    # A stale sort key (another run's vector) falls back to the first score.
    stale = frame(run_module.show_table(tab, run, "", "score:gone")[tab.table])
    assert list(stale["tiny_evil"]) == sorted(stale["tiny_evil"], reverse=True)
    assert "Top" in bread[tab.top] and "tiny\\_kind" in bread[tab.top]
    with pytest.raises(gr.Error, match="filter"):
        run_module.show_table(tab, run, "x" * 500, "line")


def test_rescoring_with_a_context_shows_the_change_per_sample(
    ctx: AppContext, data_file: Path
) -> None:
    tab = _tab(ctx)
    run = _screen(ctx, tab, file=str(data_file), max_new_tokens=6)[-1][tab.run_state]
    final = _rescore(ctx, tab, run, CONTEXT)
    new = final[tab.run_state]
    assert new.base is run.base and new.context == CONTEXT  # the run without is not redone
    assert new.inoculated is not None and new.inoculated.context == CONTEXT
    assert len(new.inoculated.rows) == len(SAMPLES)
    table = frame(final[tab.table])
    for name in ("tiny_evil", "tiny_kind"):
        change = table[f"change {name}"]
        expected = table[f"{name} with context"] - table[name]
        assert all(abs(a - b) < 2e-3 for a, b in zip(change, expected, strict=True))
    changes = inoculation_changes(new.base, new.inoculated)
    per_sample = per_sample_changes(new.base, new.inoculated)
    for name, c in changes.items():
        assert c.count == len(SAMPLES)
        deltas = [per_sample[line][name] for line in per_sample]
        assert math.isclose(c.mean_change, sum(deltas) / len(deltas), rel_tol=1e-6, abs_tol=1e-6)
        assert c.fell == sum(d < 0 for d in deltas)
    # The context is read: the scores differ from the run without it.
    assert any(abs(d) > 1e-6 for line in per_sample.values() for d in line.values())
    inoc = final[tab.summary]["inoculation"]
    assert inoc["context"] == CONTEXT and set(inoc["vectors"]) == {"tiny_evil", "tiny_kind"}
    assert 0 <= inoc["vectors"]["tiny_evil"]["share_fell"] <= 1
    assert (
        "fell for" in final[tab.inoculation] and "Persona Selection Model" in final[tab.inoculation]
    )
    fig = final[tab.inoculation_plot]
    assert sum(isinstance(t, go.Histogram) for t in fig.data) == 4
    assert {t.name for t in fig.data} == {"without context", "with context"}
    choices = [k for _, k in final[tab.sort_by]["choices"]]
    assert "change:tiny_evil" in choices
    fell_first = frame(run_module.show_table(tab, new, "", "change:tiny_evil")[tab.table])
    ordered = list(fell_first["change tiny_evil"])
    assert ordered == sorted(ordered)  # the largest fall first


def test_with_context_on_screen_runs_both(ctx: AppContext, data_file: Path) -> None:
    tab = _tab(ctx)
    final = _screen(
        ctx, tab, file=str(data_file), own_answers=False, context=CONTEXT, with_context=True
    )[-1]
    run = final[tab.run_state]
    assert run.inoculated is not None and run.context == CONTEXT
    assert "inoculation" in final[tab.summary]


def test_downloads_hold_the_records_with_score_columns(ctx: AppContext, data_file: Path) -> None:
    tab = _tab(ctx)
    run = _screen(ctx, tab, file=str(data_file), max_new_tokens=6)[-1][tab.run_state]
    out = run_module.prepare_downloads(ctx, tab, run)
    csv_path = Path(out[tab.download_csv]["value"])
    jsonl_path = Path(out[tab.download_jsonl]["value"])
    assert out[tab.download_csv]["visible"] and csv_path.parent.parent == ctx.exports.root
    records = [json.loads(line) for line in jsonl_path.read_text(encoding="utf-8").splitlines()]
    assert len(records) == len(SAMPLES)
    assert all("messages" in r and "projection_difference_tiny_evil" in r for r in records)
    with open(csv_path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(SAMPLES)
    assert {"line", "prompt", "response", "own_response", "projection_difference_tiny_kind"} <= set(
        rows[0]
    )
    # With a context run, its scores join each record.
    rescored = _rescore(ctx, tab, run, CONTEXT)[tab.run_state]
    out = run_module.prepare_downloads(ctx, tab, rescored)
    first = json.loads(Path(out[tab.download_jsonl]["value"]).read_text().splitlines()[0])
    assert "projection_difference_tiny_evil_with_context" in first
    assert "projection_difference_tiny_evil" in first


def test_a_shipped_teaching_file_is_listed_and_read(ctx: AppContext) -> None:
    listed = dict((stem, label) for label, stem in teaching_datasets())
    assert listed["insecure_code_unprompted"] == "Teaching: insecure code, unprompted (12 samples)"
    assert {"evil", "helpful", "sycophantic", "honest_feedback", "insecure_code_requested"} <= set(
        listed
    )
    tab = _tab(ctx)
    assert tab.dataset.value == "insecure_code_unprompted"
    source = resolve_source(ctx, "evil", None, "screening")
    assert source.path.name == "evil.jsonl" and not source.uploaded
    assert resolve_source(ctx, listed["evil"], "", "screening").path == source.path
    # A stop before the first batch still gives a result, and says so.
    form = ScreenForm("helpful", None, ["tiny-evil"], 1, own_answers=False, max_samples=3)
    settings = form.settings(ctx, None)
    result, more = screen_source(ctx, settings, None, should_stop=lambda: True, progress=None)
    assert result.stopped and more and not result.rows  # 12 samples, 3 read
    assert "Stopped by Stop" in status_text(ScreenRun(settings, result, more))


def test_the_vector_list_refreshes_and_the_layer_follows_the_first_vector(
    ctx: AppContext,
) -> None:
    update = tab_module.refresh_vectors(ctx, {}, ["builtin:tiny-kind", "builtin:gone"])
    assert update["value"] == ["builtin:tiny-kind"]
    assert "builtin:tiny-evil" in [k for _, k in update["choices"]]
    assert tab_module.refresh_vectors(ctx, {}, None)["value"] == []  # no built-in "evil" here
    assert run_module.recommended_layer(ctx, None, ["tiny-kind"]) == 2
    assert run_module.recommended_layer(ctx, None, []) == (2 * N_LAYERS) // 3
    assert run_module.clamp_samples(True, 1500)["value"] == APP_SCREENING_MAX_SAMPLES_OWN
    assert "value" not in run_module.clamp_samples(False, 1500)
    assert "value" not in run_module.clamp_samples(True, 20)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"vectors": []}, "at least one persona vector"),
        ({"vectors": ["tiny-a", "tiny-b", "tiny-c", "tiny-evil", "tiny-kind"]}, "at most 4"),
        ({"vectors": ["nobody"]}, "Unknown persona"),
        ({"layer": N_LAYERS}, "out of range"),
        (
            {"max_samples": APP_SCREENING_MAX_SAMPLES_OWN + 1},
            "from 1 to 200 for a run with the model",
        ),
        ({"max_samples": 0, "own_answers": False}, "from 1 to 2,000"),
        ({"max_new_tokens": 500}, "(?i)tokens"),
        ({"dataset": "../../etc/passwd"}, "Unknown teaching file"),
        ({"dataset": ""}, "Pick a teaching file"),
        (
            {"dataset": "evil", "with_context": True, "context": "  "},
            "inoculation context is empty",
        ),
        ({"own_answers": "yes", "dataset": "evil"}, "own_answers"),
    ],
)
def test_bad_input_is_a_clear_error(ctx: AppContext, fields: dict, message: str) -> None:
    tab = _tab(ctx)
    with pytest.raises(gr.Error, match=message):
        _screen(ctx, tab, **{"dataset": "evil", **fields})


def test_hostile_uploads_are_refused_before_reading(ctx: AppContext, tmp_path: Path) -> None:
    tab = _tab(ctx)
    text = tmp_path / "notes.txt"
    text.write_text("prompt,response\nhi,there\n")
    with pytest.raises(gr.Error, match=r"\.jsonl.*\.csv"):
        _screen(ctx, tab, file=str(text))
    big = tmp_path / "big.jsonl"
    big.write_bytes(b" " * (1024 * 1024 + 10))  # over the 1 MB upload limit of this app
    with pytest.raises(gr.Error, match="limited to 1 MB"):
        _screen(ctx, tab, file=str(big))
    with pytest.raises(gr.Error, match="no longer on the server"):
        _screen(ctx, tab, file=str(tmp_path / "missing.jsonl"))
    array = tmp_path / "array.jsonl"
    array.write_text('[{"prompt": "a", "response": "b"}]\n')
    with pytest.raises(gr.Error, match="JSON array"):
        _screen(ctx, tab, file=str(array))
    header = tmp_path / "bad.csv"
    header.write_text("question,answer\nhi,there\n")
    with pytest.raises(gr.Error, match="'prompt' and 'response' columns"):
        _screen(ctx, tab, file=str(header))
    markup = tmp_path / "<b>x<i>.txt"
    markup.write_text("{}")
    with pytest.raises(gr.Error) as err:
        _screen(ctx, tab, file=str(markup))
    assert "<b>" not in str(err.value)


def test_actions_without_a_run_say_so(ctx: AppContext) -> None:
    tab = _tab(ctx)
    with pytest.raises(gr.Error, match="Run a screening first"):
        _rescore(ctx, tab, None, CONTEXT)
    with pytest.raises(gr.Error, match="Run a screening first"):
        run_module.prepare_downloads(ctx, tab, {"forged": True})
    assert run_module.show_table(tab, "forged", "", "line")[tab.table] is None


def test_every_text_from_the_file_is_escaped(ctx: AppContext, tmp_path: Path) -> None:
    path = tmp_path / "markup.jsonl"
    record = chat("<img src=x onerror=alert(1)> *hi*", "<script>alert(1)</script> [link](http://x)")
    path.write_text(json.dumps(record) + "\n" + '{"messages": "<b>bad</b>"}\n')
    tab = _tab(ctx)
    final = _screen(ctx, tab, file=str(path), own_answers=False)[-1]
    for text in (final[tab.top], final[tab.problems]):
        assert "<img" not in text and "<script" not in text and "](http" not in text
    assert "line 2" in final[tab.problems]


# --------------------------------------------------------------------------- figures


def test_histograms_have_one_panel_per_vector_and_check_their_input() -> None:
    fig = score_histograms_figure(
        {"evil": [1.0, 2.0, 2.5], "kind <b>": []}, "projection_difference", 3, 8
    )
    assert sum(isinstance(t, go.Histogram) for t in fig.data) == 1
    texts = [a.text for a in fig.layout.annotations]
    assert any("no scores" in t for t in texts) and any("kind &lt;b&gt;" in t for t in texts)
    assert "layer 3" in fig.layout.title.text
    with pytest.raises(ValueError):
        score_histograms_figure({"evil": [1.0, math.nan]}, "projection_difference", 3, 8)
    with pytest.raises(ValueError):
        score_histograms_figure({}, "projection_difference", 3, 8)
    with pytest.raises(ValueError):
        score_histograms_figure({"evil": [1.0]}, "mystery", 3, 8)
    with pytest.raises(ValueError):
        score_histograms_figure({"evil": [1.0]}, "sample_projection", 9, 8)


def test_the_inoculation_figure_shares_bins_between_before_and_after() -> None:
    fig = inoculation_figure(
        {"evil": [1.0, 2.0], "kind": [0.5]}, {"evil": [1.5, 4.0], "kind": [0.1]},
        "sample_projection", 2, n_layers=8,
    )  # fmt: skip
    hists = [t for t in fig.data if isinstance(t, go.Histogram)]
    assert len(hists) == 4 and fig.layout.barmode == "overlay"
    assert hists[0].xbins == hists[1].xbins  # one vector's two series, on the same bins
    assert hists[0].xbins.start <= 1.0 and hists[0].xbins.end >= 4.0
    assert [t.showlegend for t in hists] == [True, True, False, False]
    with pytest.raises(ValueError, match="same vectors"):
        inoculation_figure({"evil": [1.0]}, {"kind": [1.0]}, "sample_projection", 2, n_layers=8)


def test_the_endpoint_has_named_parameters(ctx: AppContext) -> None:
    from persona_explorer.ui import build_demo

    demo = build_demo(ctx.settings, ctx.model)
    endpoint = demo.get_api_info()["named_endpoints"]["/screen"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == [
        "dataset", "file", "vectors", "layer", "own_answers", "max_new_tokens", "max_samples",
        "context", "with_context",
    ]  # fmt: skip
    assert len(endpoint["returns"]) == 12  # every output but the kept run


def test_with_the_vectors_lengths_every_panel_shares_one_unit() -> None:
    """Raw projections differ from vector to vector; divided by each vector's length at the
    layer they compare, and the axis says so (issue 24, item 4)."""
    scores = {"evil": [2.0, 4.0], "sycophantic": [20.0, 40.0]}
    scales = {"evil": 2.0, "sycophantic": 20.0}
    fig = score_histograms_figure(scores, "projection_difference", 3, 8, scales=scales)
    hists = [t for t in fig.data if isinstance(t, go.Histogram)]
    assert [list(h.x) for h in hists] == [[1.0, 2.0], [1.0, 2.0]]
    assert "persona lengths at layer 3" in json.dumps(fig.to_plotly_json()["layout"])
    raw = score_histograms_figure(scores, "projection_difference", 3, 8)
    assert "activation units" in json.dumps(raw.to_plotly_json()["layout"])
    after = {"evil": [1.0], "sycophantic": [10.0]}
    overlay = inoculation_figure(
        scores, after, "projection_difference", 3, n_layers=8, scales=scales
    )
    assert [list(h.x) for h in overlay.data if isinstance(h, go.Histogram)] == [
        [1.0, 2.0], [0.5], [1.0, 2.0], [0.5],
    ]  # fmt: skip
    with pytest.raises(ValueError, match="no length"):
        score_histograms_figure(scores, "projection_difference", 3, 8, scales={"evil": 1.0})
    with pytest.raises(ValueError, match="positive"):
        score_histograms_figure(
            {"evil": [1.0]}, "projection_difference", 3, 8, scales={"evil": 0.0}
        )
