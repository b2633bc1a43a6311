from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_explorer.core.config import load_settings
from persona_explorer.core.limits import MAX_PERSONA_PAIRS, MAX_PERSONA_QUESTIONS
from persona_explorer.personas import data as persona_data
from persona_explorer.personas.data import (
    PERSONA_DATA_ENV,
    list_builtin,
    load_builtin,
    shared_data_dir,
)
from persona_explorer.personas.definitions import (
    DEFAULT_ASSISTANT_PROMPTS,
    EXTRACTION_QUESTION_COUNT,
    MAX_PROMPT_CHARS,
    PersonaDefinition,
    PersonaError,
    PromptPair,
    assistant_prefixed,
    custom_persona,
    format_system_prompt,
    load_persona,
    parse_persona,
)

DATA_DIR = shared_data_dir()
needs_data = pytest.mark.skipif(DATA_DIR is None, reason="assistant-axis persona data not found")


def _trait(n_pairs: int = 2, n_questions: int = 3) -> dict:
    return {
        "instruction": [{"pos": f"be wicked {i}", "neg": f"be kind {i}"} for i in range(n_pairs)],
        "questions": [f"question {i}?" for i in range(n_questions)],
        "eval_prompt": "Rate {question} / {answer}",
    }


def _write(tmp_path: Path, name: str, content: object) -> Path:
    path = tmp_path / f"{name}.json"
    text = content if isinstance(content, str) else json.dumps(content)
    path.write_text(text, encoding="utf-8")
    return path


def _files(kind_dir: str) -> list[Path]:
    assert DATA_DIR is not None
    return sorted((DATA_DIR / kind_dir / "instructions").glob("*.json"))


# --------------------------------------------------------------------------- shipped data


@needs_data
def test_every_shared_trait_file_loads() -> None:
    files = _files("traits")
    if "assistant-axis" in str(DATA_DIR):
        assert len(files) == 240
    assert files
    for path in files:
        d = load_persona(path)
        assert d.kind == "trait", path
        assert d.name == path.stem
        assert d.source == str(path)
        assert all(p.pos and p.neg for p in d.pairs), path
        assert len(d.questions) >= EXTRACTION_QUESTION_COUNT, path
        assert d.eval_prompt, path


@needs_data
def test_every_shared_role_file_loads() -> None:
    files = _files("roles")
    if "assistant-axis" in str(DATA_DIR):
        assert len(files) == 276
    assert files
    for path in files:
        d = load_persona(path)
        assert d.kind == "role", path
        assert all(p.neg is None for p in d.pairs), path
        if path.stem != "default":
            assert d.questions, path
            assert all(p.pos for p in d.pairs), path


@needs_data
def test_default_prompts_match_shipped_default_json() -> None:
    d = load_builtin("default", kind="role")
    assert tuple(p.pos for p in d.pairs) == DEFAULT_ASSISTANT_PROMPTS
    assert d.questions == ()
    assert "" in DEFAULT_ASSISTANT_PROMPTS
    assert any("{model_name}" in p for p in DEFAULT_ASSISTANT_PROMPTS)


@needs_data
def test_role_contrast_pairs_use_default_prompts() -> None:
    pirate = load_builtin("pirate", kind="role")
    pairs = pirate.contrast_pairs()
    assert len(pairs) == len(pirate.pairs)
    for i, (pos, neg) in enumerate(pairs):
        assert pos == pirate.pairs[i].pos
        assert neg == DEFAULT_ASSISTANT_PROMPTS[i % len(DEFAULT_ASSISTANT_PROMPTS)]
    filled = pirate.contrast_pairs(model_name="SmolLM2")
    assert "You are SmolLM2." in [neg for _, neg in filled]
    assert not any("{model_name}" in neg for _, neg in filled)


@needs_data
def test_trait_contrast_pairs_use_their_own_neg() -> None:
    evil = load_builtin("evil")
    assert evil.contrast_pairs() == tuple((p.pos, p.neg) for p in evil.pairs)
    assert len(evil.extraction_questions(EXTRACTION_QUESTION_COUNT)) == 20
    assert evil.extraction_questions() == evil.questions


@needs_data
def test_list_builtin() -> None:
    traits = list_builtin("trait")
    roles = list_builtin("role")
    assert "evil" in traits and traits == sorted(traits)
    assert "pirate" in roles and "default" not in roles
    assert "default" in list_builtin("role", include_default=True)
    with pytest.raises(ValueError, match="kind"):
        list_builtin("villain")  # type: ignore[arg-type]


@needs_data
def test_load_builtin_unknown_name_suggests() -> None:
    with pytest.raises(PersonaError, match=r"unknown trait 'evill'.*did you mean 'evil'"):
        load_builtin("evill")


@pytest.mark.parametrize("bad", ["../roles/instructions/pirate", "a/b", "", ".hidden", "x y"])
def test_load_builtin_rejects_path_like_names(bad: str) -> None:
    with pytest.raises(PersonaError, match="invalid trait name"):
        load_builtin(bad)


# --------------------------------------------------------------------------- lookup order


def test_the_setting_takes_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data" / "traits" / "instructions").mkdir(parents=True)
    _write(tmp_path / "data" / "traits" / "instructions", "mine", _trait())
    # The setting comes from the environment once, at the edge, and is passed in.
    monkeypatch.setenv(PERSONA_DATA_ENV, str(tmp_path))
    configured = load_settings().persona_data_dir
    # Pointing one level up (at the folder holding data/) works too.
    assert shared_data_dir(configured) == tmp_path / "data"
    assert list_builtin("trait", data_dir=configured) == ["mine"]
    assert list_builtin("role", data_dir=configured) == []
    assert load_builtin("mine", data_dir=configured).name == "mine"
    # Below the edge nothing reads the environment: without the setting, the shipped data.
    assert shared_data_dir() == DATA_DIR
    assert "mine" not in list_builtin("trait")


def test_an_unusable_setting_is_skipped(tmp_path: Path) -> None:
    found = shared_data_dir(tmp_path / "nowhere")
    assert found is None or found != tmp_path / "nowhere"


def test_no_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(persona_data, "shared_data_dir", lambda configured=None: None)
    assert list_builtin("trait") == []
    with pytest.raises(PersonaError, match=PERSONA_DATA_ENV):
        load_builtin("evil")


# --------------------------------------------------------------------------- invalid files


def test_valid_file_roundtrip(tmp_path: Path) -> None:
    d = load_persona(_write(tmp_path, "wicked", _trait()))
    assert d.kind == "trait"
    assert d.name == "wicked"
    assert d.pairs[0] == PromptPair("be wicked 0", "be kind 0")
    assert parse_persona(d.to_json(), d.name, d.source) == d


INVALID_CASES: list[tuple[str, object, str]] = [
    ("not_object", [1, 2], r"expected a JSON object"),
    ("no_instruction", {"questions": ["q?"]}, r"missing field 'instruction'"),
    ("instruction_str", {"instruction": "be evil", "questions": ["q?"]}, r"'instruction' must"),
    ("instruction_empty", {"instruction": [], "questions": ["q?"]}, r"'instruction' is empty"),
    ("item_not_obj", {"instruction": ["be evil"], "questions": ["q?"]}, r"'instruction\[0\]'"),
    ("no_pos", {"instruction": [{"neg": "x"}], "questions": ["q?"]}, r"missing the string 'pos'"),
    (
        "pos_number",
        {"instruction": [{"pos": "a", "neg": "b"}, {"pos": 3, "neg": "c"}], "questions": ["q"]},
        r"'instruction\[1\]\.pos' must be a string, got the number 3",
    ),
    (
        "pos_empty",
        {"instruction": [{"pos": "  ", "neg": "b"}], "questions": ["q?"]},
        r"'instruction\[0\]\.pos' must be a non-empty string",
    ),
    (
        "neg_empty",
        {"instruction": [{"pos": "a", "neg": ""}], "questions": ["q?"]},
        r"'instruction\[0\]\.neg' must be a non-empty string",
    ),
    (
        "mixed",
        {"instruction": [{"pos": "a", "neg": "b"}, {"pos": "c"}], "questions": ["q?"]},
        r"'instruction\[0\]' has a 'neg' but 'instruction\[1\]' does not",
    ),
    (
        "typo_key",
        {"instruction": [{"pos": "a", "Neg": "b"}], "questions": ["q?"]},
        r"unexpected key\(s\) 'Neg'",
    ),
    ("no_questions", {"instruction": [{"pos": "a"}]}, r"missing field 'questions'"),
    (
        "questions_str",
        {"instruction": [{"pos": "a"}], "questions": "q?"},
        r"'questions' must be a list of strings, got the string",
    ),
    ("questions_empty", {"instruction": [{"pos": "a"}], "questions": []}, r"'questions' is empty"),
    (
        "question_blank",
        {"instruction": [{"pos": "a"}], "questions": ["ok?", ""]},
        r"'questions\[1\]' must be a non-empty string",
    ),
    (
        "question_null",
        {"instruction": [{"pos": "a"}], "questions": [None]},
        r"'questions\[0\]' must be a string, got null",
    ),
    (
        "eval_prompt_list",
        {"instruction": [{"pos": "a"}], "questions": ["q?"], "eval_prompt": ["x"]},
        r"'eval_prompt' must be a string",
    ),
    (
        "too_many_pairs",
        _trait(n_pairs=MAX_PERSONA_PAIRS + 1),
        rf"'instruction' has {MAX_PERSONA_PAIRS + 1} entries; the limit is {MAX_PERSONA_PAIRS}",
    ),
    (
        "too_many_questions",
        _trait(n_questions=MAX_PERSONA_QUESTIONS + 1),
        r"'questions' has 2,001 entries; the limit is 2,000",
    ),
    (
        "prompt_too_long",
        {"instruction": [{"pos": "x" * (MAX_PROMPT_CHARS + 1)}], "questions": ["q?"]},
        r"'instruction\[0\]\.pos' is 20,001 characters long; the limit is 20,000",
    ),
    (
        "question_too_long",
        {"instruction": [{"pos": "a"}], "questions": ["q" * (MAX_PROMPT_CHARS + 1)]},
        r"'questions\[0\]' is 20,001 characters long",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "pattern"), INVALID_CASES, ids=[c[0] for c in INVALID_CASES]
)
def test_invalid_file(tmp_path: Path, name: str, content: object, pattern: str) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(PersonaError, match=pattern) as info:
        load_persona(path)
    # Every message names the file it is about.
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "broken", '{\n  "instruction": [\n    {"pos": "a",}\n  ]\n}')
    with pytest.raises(PersonaError, match=r"invalid JSON at line 3, column \d+") as info:
        load_persona(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PersonaError, match="no such file"):
        load_persona(tmp_path / "absent.json")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin.json"
    path.write_bytes(b'{"instruction": [{"pos": "caf\xe9"}], "questions": ["q"]}')
    with pytest.raises(PersonaError, match="not valid UTF-8"):
        load_persona(path)


def test_empty_pos_and_no_questions_only_for_default(tmp_path: Path) -> None:
    content = {"instruction": [{"pos": ""}, {"pos": "You are {model_name}."}]}
    d = load_persona(_write(tmp_path, "default", content))
    assert d.pairs[0].pos == ""
    assert d.questions == ()
    assert d.to_json() == content
    with pytest.raises(PersonaError, match="non-empty"):
        load_persona(_write(tmp_path, "not_default", {**content, "questions": ["q?"]}))


def test_edited_file_is_reloaded(tmp_path: Path) -> None:
    path = _write(tmp_path, "changing", _trait(n_pairs=1))
    assert len(load_persona(path).pairs) == 1
    path.write_text(json.dumps(_trait(n_pairs=3, n_questions=4)), encoding="utf-8")
    assert len(load_persona(path).pairs) == 3


def test_parse_persona_without_source_names_the_persona() -> None:
    with pytest.raises(PersonaError, match=r"persona 'x': missing field 'instruction'"):
        parse_persona({}, "x")


# --------------------------------------------------------------------------- custom personas


def test_custom_trait_like() -> None:
    d = custom_persona(
        "pirate speak",
        ["  Talk like a pirate. ", "Arr."],
        ["Plain English.", "Speak normally."],
        ["Where is Paris?", "What is 2+2?"],
    )
    assert d.kind == "custom"
    assert d.source == "custom"
    assert d.has_neg
    assert d.pairs[0] == PromptPair("Talk like a pirate.", "Plain English.")
    assert d.contrast_pairs() == (
        ("Talk like a pirate.", "Plain English."),
        ("Arr.", "Speak normally."),
    )
    assert d.extraction_questions(1) == ("Where is Paris?",)


def test_custom_role_like_uses_default_prompts() -> None:
    d = custom_persona("pirate", ["Talk like a pirate."] * 7, [], ["Hi?"])
    assert not d.has_neg
    negs = [neg for _, neg in d.contrast_pairs()]
    assert negs == [DEFAULT_ASSISTANT_PROMPTS[i % 5] for i in range(7)]
    assert [neg for _, neg in d.contrast_pairs(["Be you."])] == ["Be you."] * 7
    with pytest.raises(ValueError, match="default_prompts"):
        d.contrast_pairs([])


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (("x", ["a", "b"], ["c"], ["q"]), r"2 positive and 1 negative"),
        (("x", [], [], ["q"]), r"at least one positive"),
        (("x", ["a"], [], []), r"'questions' is empty"),
        (("x", ["a"], [], ["  "]), r"'questions\[0\]' must be a non-empty string"),
        (("x", "a single string", [], ["q"]), r"'pos_prompts' must be a list of strings"),
        (("x", ["a", 3], [], ["q"]), r"'pos_prompts\[1\]' must be a string"),
        (("x", ["a"], ["  "], ["q"]), r"'instruction\[0\]\.neg' must be a non-empty"),
        (("", ["a"], [], ["q"]), r"name must be a non-empty string"),
        (("default", [""], [], ["q"]), r"'instruction\[0\]\.pos' must be a non-empty"),
    ],
)
def test_custom_invalid(args: tuple, pattern: str) -> None:
    with pytest.raises(PersonaError, match=pattern) as info:
        custom_persona(*args)
    assert "custom persona" in str(info.value)


def test_custom_roundtrip() -> None:
    d = custom_persona("x", ["a", "b"], ["c", "d"], ["q1", "q2"], eval_prompt="judge {answer}")
    back = parse_persona(d.to_json(), d.name)
    assert back.kind == "trait"
    assert (back.pairs, back.questions, back.eval_prompt) == (d.pairs, d.questions, d.eval_prompt)
    role = custom_persona("y", ["a"], [], ["q"])
    assert role.to_json() == {"instruction": [{"pos": "a"}], "questions": ["q"]}
    assert parse_persona(role.to_json(), "y").kind == "role"


@needs_data
@pytest.mark.parametrize(("name", "kind"), [("evil", "trait"), ("pirate", "role")])
def test_builtin_roundtrip(name: str, kind: str) -> None:
    d = load_builtin(name, kind=kind)  # type: ignore[arg-type]
    assert d.to_json() == json.loads(Path(d.source).read_text(encoding="utf-8"))
    assert parse_persona(d.to_json(), d.name, d.source) == d


# --------------------------------------------------------------------------- helpers


def test_format_system_prompt_keeps_other_braces() -> None:
    text = "You are {model_name}. Use {braces} and {{double}}."
    assert format_system_prompt(text, "Smol") == "You are Smol. Use {braces} and {{double}}."


def test_assistant_prefixed() -> None:
    assert assistant_prefixed("Be bad.", "evil") == "You are an evil assistant. Be bad."
    assert assistant_prefixed("Be nice.", "helpful") == "You are a helpful assistant. Be nice."
    assert assistant_prefixed("", "helpful") == "You are a helpful assistant."


def test_extraction_questions_validation() -> None:
    d = custom_persona("x", ["a"], [], ["q1", "q2", "q3"])
    assert d.extraction_questions(0) == ()
    assert d.extraction_questions(10) == ("q1", "q2", "q3")
    with pytest.raises(ValueError):
        d.extraction_questions(-1)


def test_definition_is_hashable_and_normalises_lists() -> None:
    d = PersonaDefinition(
        name="x",
        kind="custom",
        pairs=[PromptPair("a", None)],  # type: ignore[arg-type]
        questions=["q"],  # type: ignore[arg-type]
    )
    assert isinstance(d.pairs, tuple) and isinstance(d.questions, tuple)
    hash(d)
    with pytest.raises(PersonaError, match="kind"):
        PersonaDefinition(name="x", kind="villain", pairs=(), questions=())  # type: ignore[arg-type]
