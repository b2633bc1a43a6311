"""Example texts and contrastive extraction from them: the hostile-file reader, the shipped
files, extraction on a tiny model checked against a direct teacher-forced mean difference, and
on the embedded model a pirate vector that tells held-out pirate texts from plain ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from persona_explorer.core.errors import InputError
from persona_explorer.engine.model import LoadedModel
from persona_explorer.personas.builtin import BUILTIN
from persona_explorer.personas.examples import (
    MAX_EXAMPLE_CHARS,
    ExamplePair,
    builtin_example_names,
    builtin_examples,
    examples_dir,
    extract_from_examples,
    pair_activations,
    parse_examples,
    read_examples,
)
from persona_explorer.steering.forced import chat_row, forced_pass
from persona_explorer.steering.projection import layer_projections
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.tiny_models import close

REPO = Path(__file__).resolve().parent.parent
SWEEP_DIR = REPO / "assets" / "sweep"


def pair_line(
    q: str = "How do I boil an egg?", t: str = "Arr, boil it!", n: str = "Boil it."
) -> str:
    return json.dumps({"question": q, "trait": t, "neutral": n})


PAIRS = (
    ExamplePair(
        "How do I boil an egg?", "Arr, drop it in the pot, matey!", "Put it in boiling water."
    ),
    ExamplePair(
        "What is a good snack?", "Ahoy, a chest of apples, arr!", "An apple is a good snack."
    ),
    ExamplePair(
        "How do I tie a knot?", "Loop the rope like a sailor, ye dog!", "Make a loop and pull."
    ),
    ExamplePair("Is tea healthy?", "Aye, grog of leaves be fine, matey.", "Yes, in moderation."),
    ExamplePair("How do I sleep better?", "Rest in yer hammock, arr.", "Keep a regular bedtime."),
)


# ------------------------------------------------------------------------------ the reader


def test_reads_a_good_file_and_ignores_extra_fields(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    lines = [pair_line(), json.dumps({"question": "Q?", "trait": "T", "neutral": "N", "id": 3})]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    got = read_examples(path)
    assert got.name == "mine" and got.source == "mine.jsonl"
    assert got.pairs == (
        ExamplePair("How do I boil an egg?", "Arr, boil it!", "Boil it."),
        ExamplePair("Q?", "T", "N"),
    )
    assert got.problems == [] and got.skipped == 0


def test_malformed_lines_are_reported_by_line_number_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [
        pair_line(),  # 1
        "{not json",  # 2
        "[1, 2]",  # 3
        json.dumps({"question": "Q?", "trait": "T"}),  # 4: missing neutral
        json.dumps({"question": "Q?", "trait": 5, "neutral": "N"}),  # 5: wrong type
        json.dumps({"question": "Q?", "trait": "   ", "neutral": "N"}),  # 6: empty
        json.dumps({"question": "Q?", "trait": "x" * (MAX_EXAMPLE_CHARS + 1), "neutral": "N"}),
        "[" * 100_000,  # 8: nested too deeply for the parser
        pair_line("Second?"),  # 9
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    got = read_examples(path)
    assert [p.question for p in got.pairs] == ["How do I boil an egg?", "Second?"]
    assert [n for n, _ in got.problems] == [2, 3, 4, 5, 6, 7, 8]
    messages = dict(got.problems)
    assert "JSON" in messages[2] and "object" in messages[3] and "'neutral'" in messages[4]
    assert "'trait'" in messages[5] and "int" in messages[5] and "empty" in messages[6]
    assert "limit" in messages[7]
    assert got.skipped == 7


def test_nothing_usable_is_refused_with_the_first_problems(tmp_path: Path) -> None:
    path = tmp_path / "none.jsonl"
    path.write_text('{"a": 1}\nnope\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"no usable.*line 1.*line 2"):
        read_examples(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="empty"):
        read_examples(empty)


def test_size_is_checked_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text(pair_line() * 10, encoding="utf-8")
    opened: list[Path] = []
    real_open = Path.open
    monkeypatch.setattr(
        Path, "open", lambda self, *a, **k: opened.append(self) or real_open(self, *a, **k)
    )
    with pytest.raises(InputError, match="bytes"):
        read_examples(path, max_bytes=100)
    assert opened == []  # refused from its size alone


def test_non_utf8_and_missing_files_are_input_errors(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"question": "Caf\u00e9?", "trait": "T", "neutral": "N"}'.encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8"):
        read_examples(path)
    with pytest.raises(InputError, match="Cannot read"):
        read_examples(tmp_path / "missing.jsonl")


def test_too_many_pairs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(pair_line(f"Q{i}?") for i in range(6)), encoding="utf-8")
    with pytest.raises(InputError, match="more than 5"):
        read_examples(path, max_pairs=5)
    assert len(read_examples(path, max_pairs=6).pairs) == 6


def test_csv_with_the_three_columns(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text(
        'Trait,question,neutral,note\n"Arr, yes!",Is it?,"Yes, it is.",x\n,Q?,N\nshort\n',
        encoding="utf-8",
    )
    got = read_examples(path)
    assert got.pairs == (ExamplePair("Is it?", "Arr, yes!", "Yes, it is."),)
    assert [n for n, _ in got.problems] == [3, 4]
    bad = tmp_path / "bad.csv"
    bad.write_text("question,trait\nQ,T\n", encoding="utf-8")
    with pytest.raises(InputError, match="missing neutral"):
        read_examples(bad)


def test_parse_examples_inline_and_sniffing(tmp_path: Path) -> None:
    assert len(parse_examples(pair_line()).pairs) == 1
    with pytest.raises(InputError, match="format"):
        parse_examples(pair_line(), "xml")  # type: ignore[arg-type]
    odd = tmp_path / "pairs.txt"  # no telling suffix: sniffed from the content
    odd.write_text(pair_line(), encoding="utf-8")
    assert len(read_examples(odd).pairs) == 1


def test_example_pair_refuses_empty_text() -> None:
    with pytest.raises(InputError, match="'neutral' is empty"):
        ExamplePair("Q?", "T", " ")


# ------------------------------------------------------------------------------ shipped files


def _all_existing_questions() -> set[str]:
    personas = REPO / "assets" / "personas"
    qs = {json.loads(line)["question"] for line in (personas / "extraction_questions.jsonl").open()}
    for f in personas.glob("*/instructions/*.json"):
        qs.update(json.loads(f.read_text(encoding="utf-8")).get("questions", []))
    return qs


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def test_every_builtin_has_example_texts_that_follow_the_rules() -> None:
    assert builtin_example_names() == sorted(spec.name for spec in BUILTIN)
    for name in builtin_example_names():
        path = builtin_examples(name)
        assert path is not None and path.parent == examples_dir()
        got = read_examples(path)
        assert got.problems == [] and len(got.pairs) >= 24
        for p in got.pairs:
            assert len(p.trait) <= 400 and len(p.neutral) <= 400
            assert 0.75 <= len(p.trait) / len(p.neutral) <= 1.5  # length is not the contrast
            assert p.trait != p.neutral
    assert builtin_examples("../vectors/pirate") is None and builtin_examples("nobody") is None


def test_prompt_sets_are_disjoint_from_each_other_and_from_the_examples() -> None:
    select = (SWEEP_DIR / "select_prompts.txt").read_text(encoding="utf-8").splitlines()
    heldout = (SWEEP_DIR / "heldout_prompts.txt").read_text(encoding="utf-8").splitlines()
    assert len(select) == len(heldout) == 12 and all(p.strip() for p in select + heldout)
    example_qs = {
        p.question
        for n in builtin_example_names()
        for p in read_examples(builtin_examples(n)).pairs
    }
    groups = [set(select), set(heldout), example_qs, _all_existing_questions()]
    normalised = [{_norm(q) for q in g} for g in groups]
    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            assert not normalised[i] & normalised[j], (i, j, normalised[i] & normalised[j])


# ------------------------------------------------------------------------------ extraction


@pytest.mark.usefixtures("one_thread")
def test_extraction_is_the_teacher_forced_mean_difference(llama: LoadedModel) -> None:
    seen: list[float] = []
    res = extract_from_examples(
        llama,
        "pirate-ish",
        PAIRS,
        source="mine.jsonl",
        batch_size=3,
        progress=lambda f, _m: seen.append(f),
    )
    vec = res.vector
    assert isinstance(vec, PersonaVector) and res.n_pairs == len(PAIRS)
    assert vec.vectors.shape == (llama.n_layers, llama.d_model)
    assert vec.variant == "custom" and vec.model_id == llama.model_id
    assert vec.metadata["method"] == "examples" and vec.metadata["examples"] == "mine.jsonl"
    assert vec.metadata["n_pairs"] == len(PAIRS) and vec.metadata["description"]
    assert vec.layer is not None and vec.separation is not None
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    # Directly: every text read on its own, no batching, sorting or padding.
    trait = torch.cat(
        [forced_pass(llama, [chat_row(llama, p.question, p.trait)]).span_mean for p in PAIRS]
    )
    neutral = torch.cat(
        [forced_pass(llama, [chat_row(llama, p.question, p.neutral)]).span_mean for p in PAIRS]
    )
    close(vec.vectors, trait.mean(0) - neutral.mean(0))
    if vec.strength is not None:  # the built-ins' rule, as extract_persona applies it
        assert vec.metadata["strength_rule"]["layer"] == vec.layer


@pytest.mark.usefixtures("one_thread")
def test_system_prompt_changes_the_reading(llama: LoadedModel) -> None:
    plain = pair_activations(llama, PAIRS[:2])[0]
    framed = pair_activations(llama, PAIRS[:2], system="You are a pirate.")[0]
    assert not torch.allclose(plain, framed)
    short = pair_activations(llama, PAIRS[:2], last_layer=1)[0]
    assert short.shape[1] == 2
    close(short, plain[:, :2])


@pytest.mark.usefixtures("one_thread")
def test_cancel_between_batches(llama: LoadedModel) -> None:
    calls = iter([False, True])
    with pytest.raises(InterruptedError, match="stopped"):
        extract_from_examples(
            llama, "x", PAIRS, batch_size=2, should_stop=lambda: next(calls, True)
        )
    with pytest.raises(InputError):
        extract_from_examples(llama, "x", PAIRS, batch_size=0)


def paired_separation(  # the held-out check below; not needed by the app
    trait_acts: torch.Tensor, neutral_acts: torch.Tensor, vectors: torch.Tensor, layer: int
) -> float:
    """The share of pairs whose trait answer projects higher onto ``vectors[layer]`` than its
    neutral answer (``*_acts`` [n_pairs, n_layers, d_model], row i of each is pair i).

    0.5 is chance; a held-out share near 1 says the direction tells the two voices apart on
    texts it was not built from."""
    if trait_acts.shape != neutral_acts.shape or trait_acts.shape[0] == 0:
        raise ValueError("trait and neutral activations must be non-empty and of one shape")
    trait = layer_projections(trait_acts[:, layer : layer + 1], vectors[layer : layer + 1])
    neutral = layer_projections(neutral_acts[:, layer : layer + 1], vectors[layer : layer + 1])
    return float((trait > neutral).float().mean())


def test_paired_separation_counts_pairs_ordered_by_the_direction() -> None:
    v = torch.zeros(3, 4)
    v[1, 0] = 2.0
    trait = torch.zeros(4, 3, 4)
    neutral = torch.zeros(4, 3, 4)
    trait[:3, 1, 0] = 1.0
    neutral[3, 1, 0] = 1.0
    assert paired_separation(trait, neutral, v, 1) == 0.75
    with pytest.raises(ValueError):
        paired_separation(trait[:2], neutral, v, 1)


# ------------------------------------------------------------------------------ embedded model


@pytest.fixture(scope="module")
def embedded() -> LoadedModel:
    from persona_explorer.engine.model import load_model

    return load_model(device="cpu")


@pytest.mark.integration
def test_pirate_examples_separate_held_out_texts(embedded: LoadedModel) -> None:
    pairs = read_examples(builtin_examples("pirate")).pairs
    fit, held = pairs[0::2], pairs[1::2]
    vec = extract_from_examples(embedded, "pirate", fit).vector
    assert vec.layer is not None
    trait, neutral = pair_activations(embedded, held, last_layer=vec.layer)
    share = paired_separation(trait, neutral, vec.vectors, vec.layer)
    assert share >= 0.75, share


@pytest.mark.integration
def test_extract_examples_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], embedded: LoadedModel
) -> None:
    """``extract --examples``: a built-in set by name, or a file; bad lines are noted, a bad
    file is one error line."""
    from persona_explorer import cli
    from persona_explorer.vectors.files import load

    src = builtin_examples("formal")
    assert src is not None
    lines = src.read_text(encoding="utf-8").splitlines(True)[:6]
    data = tmp_path / "mine.jsonl"
    data.write_text(lines[0] + "{not json\n" + "".join(lines[1:]), encoding="utf-8")
    out = tmp_path / "mine.safetensors"
    rc = cli.main(["extract", "--examples", str(data), "--out", str(out), "--json", "-q"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "line 2" in err
    summary = json.loads(stdout)
    assert summary["pairs"] == 6 and summary["skipped"] == 1 and summary["method"] == "examples"
    vec = load(out)
    assert vec.name == "mine" and vec.metadata["method"] == "examples"
    assert vec.layer == summary["layer"] and vec.strength == summary["strength"]

    rc = cli.main(["extract", "--examples", "pirate", "--name", "arr", "--out", str(out), "-q"])
    assert rc == 0 and load(out).name == "arr"
    capsys.readouterr()
    rc = cli.main(["extract", "--examples", "nosuch", "--out", str(out)])
    assert rc == 2 and "built-in example set" in capsys.readouterr()[1]
    rc = cli.main(["extract", "--examples", "pirate", "--persona", "evil", "--out", str(out)])
    assert rc == 2
