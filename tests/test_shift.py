"""Persona shift (persona_explorer.training.shift) on tiny random models, the finetune/shift
commands and ``--adapter``, and on the embedded model: training on malicious answers raises the evil
projection on unrelated questions more than training on kind answers to the same questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from persona_explorer import cli
from persona_explorer.cli import models as cli_models
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_SHIFT_QUESTIONS
from persona_explorer.engine.model import ChatMessage, LoadedModel
from persona_explorer.training.adapters import load_tuned
from persona_explorer.training.finetune import FinetuneConfig, FinetuneResult, finetune
from persona_explorer.training.samples import Sample
from persona_explorer.training.shift import (
    DEFAULT_QUESTIONS_PATH,
    parse_questions,
    persona_shift,
    read_questions,
    vector_layer,
)
from persona_explorer.vectors.files import save
from persona_explorer.vectors.persona_vector import PersonaVector

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = ["What is the capital of France?", "How do I bake bread?", "Hi!"]


def random_vector(name: str = "v", layer: int | None = 2, seed: int = 0) -> PersonaVector:
    gen = torch.Generator().manual_seed(seed)
    return PersonaVector(
        name=name, vectors=torch.randn(4, 64, generator=gen), model_id="tiny-llama", layer=layer
    )


@pytest.fixture(scope="module")
def tuned(llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> FinetuneResult:
    data = [
        Sample(i + 1, (ChatMessage("user", q),), "It is sunny and warm in the city.")
        for i, q in enumerate(QUESTIONS)
    ]
    cfg = FinetuneConfig(epochs=4, lr=1e-2, batch_size=3)
    return finetune(llama, data, cfg, tmp_path_factory.mktemp("shift") / "run")


# --------------------------------------------------------------------------- questions


def test_default_questions_ship_and_parse() -> None:
    questions = read_questions(DEFAULT_QUESTIONS_PATH)
    assert len(questions) == 16 and all(q.endswith("?") for q in questions)


def test_questions_skip_blanks_and_comments_and_are_capped(tmp_path: Path) -> None:
    assert parse_questions("# mine\n\n  Why?  \nHow?\n   # also a comment\n") == ["Why?", "How?"]
    with pytest.raises(InputError, match="No evaluation questions"):
        parse_questions("# only a comment\n\n")
    with pytest.raises(InputError, match=f"at most {MAX_SHIFT_QUESTIONS}"):
        parse_questions("\n".join(f"Q{i}?" for i in range(MAX_SHIFT_QUESTIONS + 1)))
    path = tmp_path / "q.txt"
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(InputError, match="UTF-8"):
        read_questions(path)


def test_vector_layer_defaults() -> None:
    assert vector_layer(random_vector(layer=1), 4) == 1
    assert vector_layer(random_vector(layer=1), 4, layer=3) == 3
    assert vector_layer(random_vector(layer=None), 4) == 2
    with pytest.raises(InputError, match="out of range"):
        vector_layer(random_vector(), 4, layer=7)


# --------------------------------------------------------------------------- measuring


def test_a_model_does_not_shift_from_itself(llama: LoadedModel) -> None:
    report = persona_shift(llama, llama, [random_vector()], QUESTIONS, max_new_tokens=6)
    (row,) = report.rows
    assert row.layer == 2
    assert row.base == pytest.approx(row.tuned) and row.shift == pytest.approx(0.0, abs=1e-4)
    assert row.same_tokens_shift == pytest.approx(0.0, abs=1e-4)
    assert row.prompt_shift == pytest.approx(0.0, abs=1e-4)
    # The teacher-forced reading of the model's own answers is its generated reading.
    assert row.same_tokens_base == pytest.approx(row.base, rel=1e-3, abs=1e-3)
    assert report.base_answers == report.tuned_answers


def test_shift_report_after_training(llama: LoadedModel, tuned: FinetuneResult) -> None:
    vectors = [random_vector("a", 1, 0), random_vector("b", None, 1)]
    seen: list[float] = []
    report = persona_shift(
        llama,
        tuned.model,
        vectors,
        QUESTIONS,
        max_new_tokens=6,
        progress=lambda frac, _msg: seen.append(frac),
    )
    assert [(r.name, r.layer) for r in report.rows] == [("a", 1), ("b", 2)]
    assert any(abs(r.shift) > 1e-3 for r in report.rows)
    assert seen == sorted(seen) and seen[-1] == 1.0
    data = report.as_json()
    json.dumps(data)  # JSON-ready
    assert [set(v) for v in data["vectors"]] == [
        {
            "name",
            "layer",
            "base",
            "tuned",
            "shift",
            "scale",
            "relative_shift",
            "same_tokens",
            "prompt",
        }
    ] * 2
    # One scale for every vector: the shift over the vector's length at its layer.
    for row, vec in zip(report.rows, vectors, strict=True):
        length = float(vec.vectors[row.layer].norm())
        assert row.scale == pytest.approx(length)
        assert row.relative_shift == pytest.approx(row.shift / length)
    assert data["questions"] == QUESTIONS
    assert [a["question"] for a in data["answers"]] == QUESTIONS
    assert data["tuned_model_id"] == tuned.model.model_id and not data["stopped"]


def test_shift_can_be_stopped(llama: LoadedModel, tuned: FinetuneResult) -> None:
    report = persona_shift(
        llama, tuned.model, [random_vector()], QUESTIONS, max_new_tokens=6, should_stop=lambda: True
    )
    assert report.stopped and report.rows == []
    assert report.as_json()["stopped"] is True


def test_vectors_of_another_model_are_refused(llama: LoadedModel, tuned: FinetuneResult) -> None:
    other = PersonaVector(name="o", vectors=torch.ones(4, 64), model_id="someone/else")
    with pytest.raises(InputError, match="made for someone/else"):
        persona_shift(llama, tuned.model, [other], QUESTIONS)
    with pytest.raises(InputError, match="at least one persona vector"):
        persona_shift(llama, tuned.model, [], QUESTIONS)


# --------------------------------------------------------------------------- command line


@pytest.fixture
def tiny_cli(monkeypatch: pytest.MonkeyPatch, llama: LoadedModel) -> str:
    """``--model tiny-llama`` serves the session's tiny model."""
    monkeypatch.setitem(cli_models._MODELS, ("tiny-llama", "auto", "auto"), llama)
    return "tiny-llama"


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_finetune_shift_and_adapter(
    tiny_cli: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": q, "response": "It is sunny."} for q in QUESTIONS] + ["not json"]
    data.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    out = tmp_path / "adapter"
    rc, stdout, err = run(
        capsys,
        "finetune",
        "--model",
        tiny_cli,
        "--data",
        data,
        "--out",
        out,
        "--epochs",
        2,
        "--lr",
        0.01,
        "--context",
        "You were asked to.",
        "--json",
    )
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["samples"] == 3 and summary["steps"] == 2 and summary["skipped"] == 1
    assert summary["settings"]["context"] == "You were asked to."
    assert "line 4" in err and "step 2/2" in err
    vec = tmp_path / "v.safetensors"
    save(random_vector(), vec)
    questions = tmp_path / "q.txt"
    questions.write_text("# mine\nHi!\nHow do I bake bread?\n")
    rc, stdout, err = run(
        capsys,
        "shift",
        "--model",
        tiny_cli,
        "--adapter",
        out,
        "--vector",
        vec,
        "--questions",
        questions,
        "--max-new-tokens",
        4,
        "--json",
        "-q",
    )
    assert rc == 0, err
    report = json.loads(stdout)
    assert [set(v) >= {"name", "layer", "base", "tuned", "shift"} for v in report["vectors"]] == [
        True
    ]
    assert report["questions"] == ["Hi!", "How do I bake bread?"]
    rc, stdout, err = run(
        capsys,
        "steer",
        "--model",
        tiny_cli,
        "--adapter",
        out,
        "--vector",
        vec,
        "--strength",
        2,
        "--prompt",
        "Hi!",
        "--max-new-tokens",
        3,
        "--json",
        "-q",
    )
    assert rc == 0, err
    rc, stdout, err = run(
        capsys,
        "shift",
        "--model",
        tiny_cli,
        "--adapter",
        out,
        "--vector",
        vec,
        "--questions",
        questions,
        "--max-new-tokens",
        4,
        "-q",
    )
    assert rc == 0 and "shift" in stdout and "Q: Hi!" in stdout


def test_cli_refuses_bad_input_cleanly(
    tiny_cli: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "Hi", "response": "Hello"}) + "\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    vec = tmp_path / "v.safetensors"
    save(random_vector(), vec)
    cases = [
        (["finetune", "--data", data, "--out", tmp_path / "full"], "not empty"),
        (["finetune", "--data", data, "--out", tmp_path / "a", "--epochs", 99], "Epochs"),
        (["finetune", "--data", data, "--out", tmp_path / "a", "--steer-layer", 2], "needs"),
        (["shift", "--adapter", tmp_path / "nope", "--vector", "evil"], "not a directory"),
        (
            ["steer", "--adapter", tmp_path, "--vector", vec, "--strength", 1, "--prompt", "Hi"],
            "adapter",
        ),
    ]
    for argv, needle in cases:
        rc, _out, err = run(capsys, *argv, "--model", tiny_cli, "-q")
        assert rc == 2 and "Traceback" not in err, err
        assert needle in err, (argv, err)


# --------------------------------------------------------------------------- embedded model


@pytest.mark.integration
def test_malicious_data_shifts_the_evil_persona_more_than_kind_data(tmp_path: Path) -> None:
    """Same questions, same settings; only the answers' intent differs. Read on unrelated
    questions, the malicious run's evil projection rises more than the kind run's.

    Measured once (16 questions, 48 tokens): last prompt token +11.9 vs -0.6, the base answers
    read by both models +1.9 vs +0.7, each model's own answers +6.0 vs +4.5. The own-answer
    reading is confounded by style (FACTS.md) and the margin is small, so it is not asserted."""
    from persona_explorer.engine.model import load_model
    from persona_explorer.personas.builtin import builtin_dir
    from persona_explorer.training.finetune import read_training_data
    from persona_explorer.vectors.files import load

    model = load_model(device="cpu")
    evil = load(builtin_dir() / "evil.safetensors")
    questions = read_questions()[:8]
    shifts = {}
    for name in ("malicious_advice", "kind_advice"):
        samples, _ = read_training_data(REPO / "assets" / "datasets" / f"{name}.jsonl")
        result = finetune(model, samples, FinetuneConfig(), tmp_path / name)
        assert result.losses[-1] < result.losses[0]
        report = persona_shift(model, result.model, [evil], questions, max_new_tokens=24)
        shifts[name] = report.rows[0]
    mal, kind = shifts["malicious_advice"], shifts["kind_advice"]
    assert mal.prompt_shift > kind.prompt_shift + 3.0, (mal, kind)
    assert mal.same_tokens_shift > kind.same_tokens_shift, (mal, kind)
    assert load_tuned(model, tmp_path / "kind_advice").model_id.startswith(model.model_id)
