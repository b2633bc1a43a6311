"""Layer x strength sweeps (:mod:`persona_explorer.evaluate.sweep`) and the ``sweep`` command.

Unit tests on the tiny random Llama; integration tests on the embedded model check what a sweep
is for: trait expression rises with strength for a shipped vector, and coherence falls at an
extreme strength.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from persona_explorer import cli
from persona_explorer.core.config import REPO_ROOT
from persona_explorer.core.errors import InputError
from persona_explorer.engine.model import LoadedModel
from persona_explorer.evaluate.sweep import run_sweep
from persona_explorer.evaluate.sweep_checkpoint import SweepCheckpoint
from persona_explorer.evaluate.sweep_config import (
    Criteria,
    SweepConfig,
    default_grid,
    parse_numbers,
    read_prompts,
)
from persona_explorer.evaluate.sweep_result import (
    Cell,
    RowResult,
    recommend,
    repetition,
    with_recommendation,
)
from persona_explorer.vectors.files import load, save
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.tiny_models import D_MODEL, N_LAYERS, PROMPTS

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vector(model: LoadedModel, seed: int = 0) -> PersonaVector:
    gen = torch.Generator().manual_seed(seed)
    return PersonaVector(
        name="tiny",
        vectors=torch.randn(N_LAYERS, D_MODEL, generator=gen),
        model_id=model.model_id,
        layer=1,
        strength=2.0,
    )


# --------------------------------------------------------------------------- inputs


def test_numbers_and_prompts_are_parsed_and_refused_clearly(tmp_path: Path) -> None:
    assert parse_numbers("8, 12,15,12", "--layers", integer=True) == (8.0, 12.0, 15.0)
    assert parse_numbers("0;-1.5, 2e0", "--strengths") == (0.0, -1.5, 2.0)
    for bad, match in (("", "at least one"), ("1,x", "not a number"), ("nan", "finite")):
        with pytest.raises(InputError, match=match):
            parse_numbers(bad, "--strengths")
    with pytest.raises(InputError, match="whole number"):
        parse_numbers("1.5", "--layers", integer=True)
    with pytest.raises(InputError, match="at most"):
        parse_numbers(",".join(str(i) for i in range(40)), "--layers")

    txt = tmp_path / "p.txt"
    txt.write_text("First question?\n\n  Second one  \n", encoding="utf-8")
    assert read_prompts(txt) == ("First question?", "Second one")
    js = tmp_path / "p.json"
    js.write_text(json.dumps(["a", "b"]), encoding="utf-8")
    assert read_prompts(js) == ("a", "b")
    jl = tmp_path / "p.jsonl"
    jl.write_text('"a"\n{"prompt": "b"}\n', encoding="utf-8")
    assert read_prompts(jl) == ("a", "b")
    jl.write_text('"a"\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 2"):
        read_prompts(jl)
    js.write_text('{"not": "a list"}', encoding="utf-8")
    with pytest.raises(InputError, match="list"):
        read_prompts(js)
    txt.write_bytes(b"\xff\xfe bad")
    with pytest.raises(InputError, match="UTF-8"):
        read_prompts(txt)
    txt.write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="No prompts"):
        read_prompts(txt)
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (2 << 20))
    with pytest.raises(InputError, match="limited"):
        read_prompts(big)


def test_repetition_counts_repeated_trigrams() -> None:
    assert repetition([1, 2, 3, 4, 5]) == 0.0
    assert repetition([1, 2]) == 0.0
    assert repetition([7, 7, 7, 7, 7, 7]) == pytest.approx(1 - 1 / 4)
    assert repetition([1, 2, 3, 1, 2, 3]) == pytest.approx(1 - 3 / 4)


def test_default_grid_stays_inside_the_model() -> None:
    vec = PersonaVector(name="v", vectors=torch.ones(30, 4), layer=14, strength=3.0)
    assert default_grid(vec, 30) == ((8, 11, 14, 17), (0.0, 0.75, 1.5, 3.0, 6.0))
    edge = vec.with_(layer=29, strength=None)
    layers, strengths = default_grid(edge, 30)
    assert max(layers) == 29 and len(layers) == 3  # 32 clipped onto 29
    assert strengths == (0.0, 1.0, 2.0, 4.0, 8.0)


# --------------------------------------------------------------------------- recommendation


def cell(layer: int, strength: float, trait: float, coherence: float, rep: float = 0.0) -> Cell:
    return Cell(layer, strength, trait, None, None, coherence, rep, [])


def test_recommendation_takes_the_smallest_clear_strength_at_the_layer_with_most_room() -> None:
    base = cell(-1, 0.0, 0.0, 1.0, rep=0.1)
    grid = [
        cell(4, 0.0, 0.0, 1.0, 0.1),
        cell(4, 1.0, 0.1, 0.9),  # too weak
        cell(4, 2.0, 0.4, 0.6),  # qualifies
        cell(4, 4.0, 0.7, 0.4),  # qualifies, reaches 0.7
        cell(8, 1.0, 0.3, 0.8),  # qualifies
        cell(8, 2.0, 0.5, 0.5),  # qualifies, reaches 0.5
        cell(8, 4.0, 2.0, 0.1),  # incoherent: does not count
        cell(12, 1.0, 0.9, 0.9, rep=0.5),  # repeats itself: does not count
        cell(12, -2.0, 3.0, 0.9),  # negative strength: suppression, never recommended
    ]
    crit = Criteria(margin=0.25, min_coherence=0.3, max_repetition_rise=0.1)
    chosen, reason = recommend(grid, base, crit)
    assert chosen is not None and (chosen.layer, chosen.strength) == (4, 2.0)
    assert "Layer 4" in reason
    assert chosen.trait >= crit.margin and chosen.coherence >= crit.min_coherence  # type: ignore[operator]

    strict = Criteria(margin=0.25, min_coherence=0.95)
    none, why = recommend(grid, base, strict)
    assert none is None and "No cell" in why
    # One line per layer saying what failed there, and what to try next.
    assert "Layer 8: the trait rose by 0.25 only at strengths 1, 2, 4" in why
    assert "the text lost coherence (0.80 < 0.95)" in why
    assert why.splitlines()[-1] == "Next: sweep layer 8 at strengths 0.25, 0.5."


def test_criteria_and_configs_refuse_nonsense() -> None:
    for bad in ({"margin": 0}, {"min_coherence": 1.5}, {"max_repetition_rise": -1}):
        with pytest.raises(InputError):
            Criteria(**bad)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        SweepConfig(layers=(), strengths=(1.0,))
    with pytest.raises(InputError):
        SweepConfig(layers=(1,), strengths=(float("nan"),))
    cfg = SweepConfig(layers=(2, 1, 2), strengths=(0, 1, 1))
    assert cfg.layers == (2, 1) and cfg.strengths == (0.0, 1.0)


# --------------------------------------------------------------------------- the sweep


def test_sweep_grid_baseline_and_limits(llama: LoadedModel, tmp_path: Path) -> None:
    vec = tiny_vector(llama)
    cfg = SweepConfig(layers=(0, 2), strengths=(0, 1, 8), max_new_tokens=5, batch_size=4)
    seen: list[tuple[int, int]] = []
    result = run_sweep(
        llama, vec, PROMPTS, cfg, progress=lambda d, t, _m: seen.append((d, t)), checkpoint_dir=None
    )
    assert [(c.layer, c.strength) for c in result.grid] == [
        (la, s) for la in (0, 2) for s in (0.0, 1.0, 8.0)
    ]
    assert result.rows_total == len(PROMPTS) * 5 == result.rows_generated
    assert seen[-1] == (result.rows_total, result.rows_total)
    for c in result.grid:
        assert len(c.texts) == len(PROMPTS)
        assert c.trait is not None and c.coherence is not None and c.perplexity is not None
        if c.strength == 0:
            # Strength 0 adds nothing: exactly the baseline's answers and scores.
            assert c.texts == result.baseline.texts and c.trait == 0.0 and c.coherence == 1.0
    assert result.read_layer == vec.layer
    if result.recommended is not None:
        assert result.recommended in result.grid and result.recommended.strength > 0
    as_json = json.loads(json.dumps(result.as_json()))
    assert {"grid", "recommended", "baseline", "reason"} <= set(as_json)
    assert all({"layer", "strength", "trait", "coherence", "repetition", "texts"} <= set(c)
               for c in as_json["grid"])  # fmt: skip

    with pytest.raises(InputError, match="limit"):
        run_sweep(llama, vec, PROMPTS, cfg, max_rows=5)
    with pytest.raises(InputError, match="Layer"):
        run_sweep(llama, vec, PROMPTS, SweepConfig(layers=(N_LAYERS,), strengths=(1.0,)))
    wrong = PersonaVector(name="w", vectors=torch.ones(N_LAYERS, D_MODEL + 1))
    with pytest.raises(InputError):
        run_sweep(llama, wrong, PROMPTS, cfg)


def test_a_stopped_sweep_resumes_where_it_stopped(llama: LoadedModel, tmp_path: Path) -> None:
    vec = tiny_vector(llama, seed=1)
    cfg = SweepConfig(layers=(1,), strengths=(1.0, 3.0), max_new_tokens=4, batch_size=3)
    calls = {"n": 0}

    def stop_after_first_batch() -> bool:
        calls["n"] += 1
        return calls["n"] > 6  # lets the first batch generate and be scored, then stops

    first = run_sweep(
        llama, vec, PROMPTS, cfg, checkpoint_dir=tmp_path, should_stop=stop_after_first_batch
    )
    assert first.stopped and 0 < first.rows_generated < first.rows_total
    second = run_sweep(llama, vec, PROMPTS, cfg, checkpoint_dir=tmp_path)
    assert not second.stopped
    assert second.rows_generated == second.rows_total - first.rows_generated
    assert all(c.trait is not None for c in second.grid)
    third = run_sweep(llama, vec, PROMPTS, cfg, checkpoint_dir=tmp_path)  # all from the file
    assert third.rows_generated == 0
    assert [c.texts for c in third.grid] == [c.texts for c in second.grid]

    # Other prompts are another sweep; a damaged or hostile file is read up to the damage.
    other = run_sweep(llama, vec, PROMPTS[:1], cfg, checkpoint_dir=tmp_path)
    assert other.rows_generated == other.rows_total
    path = SweepCheckpoint.open(tmp_path, llama, vec, PROMPTS, cfg=cfg).path
    assert path is not None and path.is_file()
    lines = path.read_text(encoding="utf-8").splitlines(True)
    bad = json.loads(lines[2])
    bad["tokens"] = [10**9]
    path.write_text(lines[0] + lines[1] + json.dumps(bad) + "\n" + "".join(lines[3:]))
    fourth = run_sweep(llama, vec, PROMPTS, cfg, checkpoint_dir=tmp_path)
    assert fourth.rows_generated == fourth.rows_total - 1


def test_recommendation_is_recorded_in_the_vector(llama: LoadedModel, tmp_path: Path) -> None:
    vec = tiny_vector(llama, seed=2)
    cfg = SweepConfig(
        layers=(1, 2),
        strengths=(0.5, 2.0, 6.0),
        max_new_tokens=5,
        criteria=Criteria(margin=1e-6, min_coherence=1e-6, max_repetition_rise=1.0),
    )
    result = run_sweep(llama, vec, PROMPTS, cfg)
    assert result.recommended is not None  # the loosest criteria: some cell qualifies
    tuned = with_recommendation(vec, result)
    assert (tuned.layer, tuned.strength) == (result.recommended.layer, result.recommended.strength)
    back = load(save(tuned, tmp_path / "v.safetensors"))
    assert back.metadata["sweep"]["strength"] == result.recommended.strength
    assert back.metadata["sweep"]["read_layer"] == result.read_layer
    none = dataclass_replace_recommended(result)
    assert with_recommendation(vec, none) is vec


def dataclass_replace_recommended(result: object) -> object:
    import dataclasses

    return dataclasses.replace(result, recommended=None)  # type: ignore[type-var]


def test_checkpoint_rows_are_validated() -> None:
    good = RowResult(1, 2.0, 0, (1, 2), 0.5, -1.0, True).as_json()
    assert RowResult.from_json(good, vocab=10).tokens == (1, 2)
    for change in ({"tokens": [11]}, {"projection": "x"}, {"layer": "1"}, {"prompt": -1}):
        with pytest.raises((ValueError, KeyError, TypeError)):
            RowResult.from_json({**good, **change}, vocab=10)


# --------------------------------------------------------------------------- embedded model


@pytest.fixture(scope="module")
def smol() -> LoadedModel:
    from persona_explorer.engine.model import load_model

    return load_model(device="cpu")


@pytest.mark.integration
def test_trait_rises_with_strength_and_coherence_falls_at_the_extreme(smol: LoadedModel) -> None:
    from persona_explorer.personas.builtin import builtin_dir

    vec = load(builtin_dir() / "pirate.safetensors")
    assert vec.layer is not None and vec.strength is not None
    unit = vec.strength
    prompts = ("How do I keep my houseplants alive?", "What should I pack for a weekend trip?")
    cfg = SweepConfig(
        layers=(vec.layer,), strengths=(0.0, unit, 2 * unit, 8 * unit), max_new_tokens=24
    )
    result = run_sweep(smol, vec, prompts, cfg)
    traits = [c.trait for c in result.grid]
    assert traits[0] == 0.0
    assert traits[1] > 0.05 and traits[2] > traits[1]  # type: ignore[operator]
    coherence = [c.coherence for c in result.grid]
    assert coherence[3] < 0.5 * coherence[1]  # type: ignore[operator]


@pytest.mark.integration
def test_sweep_command_prints_the_grid_and_saves_the_recommendation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONA_EXPLORER_CACHE", str(tmp_path / "cache"))
    prompts = tmp_path / "p.txt"
    prompts.write_text("How do I boil an egg?\nName a good board game.\n", encoding="utf-8")
    out = tmp_path / "pirate.safetensors"
    args = ["sweep", "--vector", "pirate", "--prompts", str(prompts), "--layers", "14,22"]
    args += ["--strengths", "0,3", "--max-new-tokens", "8", "--margin", "0.01"]
    args += ["--min-coherence", "0.01", "--max-repetition-rise", "1", "--json", "-q"]
    rc = cli.main([*args, "--save", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    result = json.loads(stdout)
    assert [(c["layer"], c["strength"]) for c in result["grid"]] == [
        (14, 0.0), (14, 3.0), (22, 0.0), (22, 3.0)
    ]  # fmt: skip
    for c in result["grid"]:
        assert len(c["texts"]) == 2 and {"trait", "coherence", "repetition"} <= set(c)
    rec = result["recommended"]
    assert rec is not None and (rec["layer"], rec["strength"]) in [(14, 3.0), (22, 3.0)]
    assert result["saved"] == str(out)
    saved = load(out)
    assert (saved.layer, saved.strength) == (rec["layer"], rec["strength"])
    assert saved.metadata["sweep"]["layers"] == [14, 22]
    # The checkpoint makes the rerun instant.
    rc = cli.main(args)
    again = json.loads(capsys.readouterr()[0])
    assert rc == 0 and again["rows_generated"] == 0

    for bad, words in (
        (["--layers", "99"], "Layer"),
        (["--strengths", "abc"], "not a number"),
        (["--vector", "nosuch"], "built-in"),
    ):
        rc = cli.main([*args, *bad])
        assert rc == 2 and words in capsys.readouterr()[1]


@pytest.mark.integration
def test_extract_with_sweep_records_the_recommendation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONA_EXPLORER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "pirate.safetensors"
    args = ["extract", "--persona", "pirate", "--kind", "role", "--questions", "2"]
    args += ["--max-new-tokens", "12", "--sweep", "--json", "-q", "--out", str(out)]
    rc = cli.main(args)
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(stdout)
    sweep = summary["sweep"]
    assert sweep is not None and len(sweep["grid"]) == len(sweep["layers"]) * len(
        sweep["strengths"]
    )
    saved = load(out)
    if sweep["recommended"] is None:
        assert "sweep" not in saved.metadata and sweep["reason"]
    else:
        rec = sweep["recommended"]
        assert (saved.layer, saved.strength) == (rec["layer"], rec["strength"])
        assert saved.metadata["sweep"]["reason"] == sweep["reason"]


@pytest.mark.integration
def test_every_builtin_raises_its_trait_at_its_recorded_settings(smol: LoadedModel) -> None:
    """The shipped settings, on held-out prompts: the trait rises and the text does not loop."""
    from persona_explorer.dev.builtin_check import HELDOUT_PROMPTS
    from persona_explorer.personas.builtin import BUILTIN, builtin_dir

    prompts = read_prompts(HELDOUT_PROMPTS)[:3]
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Built-in personas", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line[:2] == "| "}
    for spec in BUILTIN:
        vec = load(builtin_dir() / f"{spec.name}.safetensors")
        assert vec.layer is not None and vec.strength is not None
        assert vec.metadata.get("method") == spec.method, spec.name
        assert vec.metadata["sweep"]["layer"] == vec.layer, spec.name
        # The test-prompt verdict is data, not a wish: the README must say when it failed.
        holds = vec.metadata["test"]["holds"]
        assert isinstance(holds, bool) and spec.name in rows, spec.name
        assert holds or "fails" in rows[spec.name], (spec.name, rows[spec.name])
        cfg = SweepConfig(
            layers=(vec.layer,), strengths=(0.0, vec.strength), max_new_tokens=32, read_layer=14
        )
        result = run_sweep(smol, vec, prompts, cfg)
        cell = result.grid[-1]
        assert cell.trait is not None and cell.trait > 0.1, (spec.name, cell.trait)
        assert cell.coherence is not None and cell.coherence > 0.2, (spec.name, cell.coherence)
        assert cell.repetition < result.baseline.repetition + 0.3, (spec.name, cell.texts)
