"""Tests for the command line (``python -m persona_explorer``).

Most tests run ``cli.main([...])`` in-process. The ones marked ``integration`` load the embedded
SmolLM2 model once (``cli.models`` caches it per process) and keep generations short.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from persona_explorer import cli
from persona_explorer.cli import files, render
from persona_explorer.core.errors import InputError
from persona_explorer.vectors.files import load, save
from persona_explorer.vectors.persona_vector import PersonaVector

N_LAYERS, D_MODEL = 30, 576  # the embedded SmolLM2-135M-Instruct
REPO = Path(__file__).resolve().parent.parent
CLI_DIR = REPO / "persona_explorer" / "cli"


def synthetic(n_layers: int = 6, d_model: int = 16, **fields) -> PersonaVector:
    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(n_layers, d_model, generator=gen)
    vectors[0] = 0.0  # GGUF cannot hold layer 0: keep the round trip exact
    defaults = {
        "name": "synth",
        "model_id": "test/tiny",
        "variant": "response",
        "layer": 3,
        "strength": 1.5,
        "separation": tuple(float(i) for i in range(n_layers)),
        "metadata": {"source": "unit-test"},
    }
    return PersonaVector(vectors=vectors, **{**defaults, **fields})


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clean_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err


# --------------------------------------------------------------------------- parsing / helpers


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    for command in ("extract", "steer", "convert", "info", "bench"):
        assert command in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys)
    assert_clean_error(rc, err)


def test_progress_is_one_line_on_a_tty_and_sparse_in_a_log() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream in (Tty(), io.StringIO()):
        with render.Progress(stream=stream) as bar:
            for i in range(201):
                bar(i / 200, f"step {i}")
        text = stream.getvalue()
        # Redrawn in place ("\r"), never a line per update; finished with one newline.
        assert text.count("\n") == 1 and text.endswith("\n")
        assert text.count("\r") <= 5, text
        assert "100%" in text and "step 200" in text

    quiet = io.StringIO()
    with render.Progress(quiet=True, stream=quiet) as bar:
        bar(0.5, "half")
    assert quiet.getvalue() == ""


def test_sparkline_scales_to_the_range() -> None:
    line = render.sparkline([0.0, 1.0, 2.0])
    assert len(line) == 3 and line[0] != line[-1]
    assert len(set(render.sparkline([5.0, 5.0]))) == 1
    assert render.sparkline([]) == ""


# --------------------------------------------------------------------------- info


def test_info_plain_is_a_readable_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = save(synthetic(), tmp_path / "v.safetensors")
    rc, out, err = run(capsys, "info", path)
    assert rc == 0, err
    for needle in ("synth", "test/tiny", "response", "d_model", "16", "layer 3", "strength 1.5"):
        assert needle in out
    assert "norms" in out and "L0-5" in out


def test_info_json_is_describe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vec = synthetic()
    path = save(vec, tmp_path / "v.safetensors")
    rc, out, _ = run(capsys, "info", path, "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["n_layers"] == 6 and data["d_model"] == 16
    assert data["layer"] == 3 and data["strength"] == 1.5
    assert data["best_layer"] == 5
    assert data["metadata"] == {"source": "unit-test"}
    assert data["layer_norms"] == pytest.approx(list(vec.layer_norms))
    assert data["file"] == str(path)


def test_info_pt_layout_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "axis.pt"
    torch.save(torch.randn(6, 16), path)
    rc, out, err = run(capsys, "info", path, "--layout", "assistant_axis", "--json")
    assert rc == 0 and json.loads(out)["n_layers"] == 6
    assert "warning" not in err
    # Without a layout the file is read as persona_vectors (row 0 = embedding): say so.
    rc, out, err = run(capsys, "info", path, "--json")
    assert rc == 0 and json.loads(out)["n_layers"] == 5
    assert "warning:" in err and "assistant_axis" in err


def test_info_and_convert_do_not_load_heavy_modules(tmp_path: Path) -> None:
    path = save(synthetic(), tmp_path / "v.safetensors")
    code = (
        "import sys\n"
        "from persona_explorer import cli\n"
        "from persona_explorer.cli import models\n"
        f"assert cli.main(['info', {str(path)!r}]) == 0\n"
        f"assert cli.main(['info', {str(path)!r}, '--json']) == 0\n"
        f"assert cli.main(['convert', '--in', {str(path)!r}, '--out', "
        f"{str(tmp_path / 'v.gguf')!r}]) == 0\n"
        "heavy = [m for m in ('transformers', 'transformer_lens', 'gradio') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert not models._MODELS\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    path = save(synthetic(), tmp_path / "v.safetensors")
    proc = subprocess.run(
        [sys.executable, "-m", "persona_explorer", "info", str(path), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["name"] == "synth"
    proc = subprocess.run(
        [sys.executable, "-m", "persona_explorer", "info", str(tmp_path / "missing.pt")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- convert


def test_convert_round_trips_are_exact(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    vec = synthetic(embedding=torch.randn(16))
    src = save(vec, tmp_path / "src.safetensors")

    # persona_vectors .pt keeps the embedding row
    rc, out, err = run(capsys, "convert", "--in", src, "--out", tmp_path / "pv.pt")
    assert rc == 0, err
    assert "pv.pt" in out and "persona_vectors (.pt)" in out
    raw = torch.load(tmp_path / "pv.pt", weights_only=True)
    assert raw.shape == (7, 16) and torch.equal(raw[0], vec.embedding)
    rc, _, err = run(
        capsys, "convert", "--in", tmp_path / "pv.pt", "--in-layout", "persona_vectors",
        "--out", tmp_path / "pv.safetensors",
    )  # fmt: skip
    assert rc == 0, err
    back = load(tmp_path / "pv.safetensors")
    assert torch.equal(back.vectors, vec.vectors)
    assert torch.equal(back.embedding, vec.embedding)

    # assistant_axis .pt: one row per layer
    rc, out, err = run(
        capsys, "convert", "--in", src, "--out", tmp_path / "aa.pt",
        "--out-layout", "assistant_axis",
    )  # fmt: skip
    assert rc == 0, err
    assert "assistant-axis (.pt)" in out
    assert "note:" in err and "embedding" in err  # this layout has no embedding row
    assert torch.load(tmp_path / "aa.pt", weights_only=True).shape == (6, 16)
    rc, _, err = run(
        capsys, "convert", "--in", tmp_path / "aa.pt", "--in-layout", "assistant_axis",
        "--out", tmp_path / "aa.safetensors",
    )  # fmt: skip
    assert rc == 0, err
    assert torch.equal(load(tmp_path / "aa.safetensors").vectors, vec.vectors)

    # GGUF control vector (layer 0 is zero, so nothing is dropped); our metadata survives
    rc, out, err = run(
        capsys, "convert", "--in", src, "--out", tmp_path / "cv.gguf", "--model-hint", "llama",
        "--json",
    )  # fmt: skip
    assert rc == 0, err
    info = json.loads(out)
    assert info["out"] == str(tmp_path / "cv.gguf") and info["n_layers"] == 6
    assert info["format"] == "gguf"
    assert info["notes"] and not any("layer 0" in n for n in info["notes"])  # the embedding
    rc, _, err = run(capsys, "convert", "--in", tmp_path / "cv.gguf", "--out", tmp_path / "g.pt")
    assert rc == 0, err
    back = load(tmp_path / "g.pt", layout="persona_vectors")
    assert torch.equal(back.vectors, vec.vectors)
    back = load(tmp_path / "cv.gguf")
    assert torch.equal(back.vectors, vec.vectors)
    assert (back.name, back.layer, back.strength) == ("synth", 3, 1.5)
    assert back.metadata["model_hint"] == "llama"


def test_convert_notes_when_gguf_drops_layer_0(tmp_path: Path, capsys) -> None:
    vec = synthetic().with_(vectors=torch.ones(6, 16))
    src = save(vec, tmp_path / "src.safetensors")
    rc, out, err = run(capsys, "convert", "--in", src, "--out", tmp_path / "cv.gguf")
    assert rc == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "layer 0" in notes[0], err
    assert "warning" not in err and "cv.gguf" in out
    rc, out, err = run(capsys, "convert", "--in", src, "--out", tmp_path / "cv2.gguf", "--json")
    assert rc == 0, err
    assert [n for n in json.loads(out)["notes"] if "layer 0" in n]
    assert "note: " in err  # on stderr as well: stdout stays pure JSON
    # Nothing is lost: no note.
    rc, _, err = run(capsys, "convert", "--in", src, "--out", tmp_path / "v.safetensors")
    assert rc == 0 and "note:" not in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--out", "x.txt"], "unsupported file type"),
        (["--out", "x.gguf", "--out-layout", "assistant_axis"], ".pt files only"),
        (["--out", "no/such/dir/x.safetensors"], "does not exist"),
        (["--out", "x.gguf", "--model-hint", " "], "model-hint"),
    ],
)
def test_convert_rejects_bad_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    src = save(synthetic(), tmp_path / "src.safetensors")
    extra = [str(tmp_path / e) if e.startswith(("x.", "no/")) else e for e in extra]
    rc, _, err = run(capsys, "convert", "--in", src, *extra)
    assert_clean_error(rc, err, needle)


# --------------------------------------------------------------------------- bad input files


class Hostile:
    """Pickles to a call of open(marker, 'w'): loading it must never create the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_garbage_pt_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(os.urandom(256))
    rc, _, err = run(capsys, "info", path)
    assert_clean_error(rc, err, "garbage.pt")


def test_hostile_pickle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pt"
    torch.save({"vectors": Hostile(marker)}, path)
    assert not marker.exists()
    rc, _, err = run(capsys, "info", path)
    assert_clean_error(rc, err, "hostile.pt")
    rc, _, err = run(capsys, "convert", "--in", path, "--out", tmp_path / "out.safetensors")
    assert_clean_error(rc, err, "hostile.pt")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_nan_vector_file_is_a_clean_error(tmp_path: Path, capsys) -> None:
    data = torch.randn(6, 16)
    data[2, 3] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(data, path)
    rc, _, err = run(capsys, "info", path, "--layout", "assistant_axis")
    assert_clean_error(rc, err, "NaN")


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("missing.safetensors", None, "No such file"),
        ("empty.safetensors", b"", "empty"),
        ("bad.gguf", b"NOTGGUF" * 10, "not a GGUF"),
        ("vec.npy", b"x", "unsupported file type"),
    ],
)
def test_info_bad_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content, needle: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    rc, _, err = run(capsys, "info", path)
    assert_clean_error(rc, err, needle)


# --------------------------------------------------------------------------- option validation
# These fail before any model is loaded.


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--strength", "nan"], "finite"),
        (["--strength", "inf"], "finite"),
        (["--strength", "-inf"], "finite"),
        (["--strength", "1e9"], "too large"),
        (["--strength", "101"], "between -100 and 100"),
        (["--strength", "abc"], "must be a number"),
        (["--prompt", "   "], "empty"),
        (["--prompt", "x" * 4001], "the limit is 4,000"),
        (["--system", "x" * 4001], "PERSONA_EXPLORER_MAX_PROMPT_CHARS"),
        (["--max-new-tokens", "0"], "between 1 and 256"),
        (["--max-new-tokens", "5000"], "between 1 and 256"),
        (["--temperature", "-1"], "between 0 and 2"),
        (["--temperature", "2.5"], "between 0 and 2"),
        (["--top-p", "0"], "top_p"),
        (["--seed", "-1"], "Seed"),
        (["--layer", "-1"], "at least 0"),
        (["--projection-layer", "1.5"], "whole number"),
        (["--layer", "3", "--layers", "3-4"], "not allowed"),
        (["--positions", "prompt"], "invalid choice"),
        (["--device", "tpu"], "invalid choice"),
    ],
)
def test_steer_rejects_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    vec = save(synthetic(), tmp_path / "v.safetensors")
    rc, _, err = run(capsys, "steer", "--vector", vec, "--prompt", "Hi", *args)
    assert_clean_error(rc, err, needle)


@pytest.mark.parametrize(
    ("option", "value", "variable"),
    [
        ("--max-new-tokens", "257", "MAX_NEW_TOKENS"),
        ("--strength", "-100.5", "MAX_STRENGTH"),
        ("--temperature", "2.01", "MAX_TEMPERATURE"),
    ],
)
def test_hitting_a_limit_names_the_variable_that_raises_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, variable: str
) -> None:
    vec = save(synthetic(), tmp_path / "v.safetensors")
    rc, _, err = run(capsys, "steer", "--vector", vec, "--prompt", "Hi", option, value)
    assert_clean_error(rc, err, option, f"PERSONA_EXPLORER_{variable}")


def test_limits_come_from_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.safetensors"
    monkeypatch.setenv("PERSONA_EXPLORER_MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("PERSONA_EXPLORER_MAX_STRENGTH", "5")
    monkeypatch.setenv("PERSONA_EXPLORER_MAX_TEMPERATURE", "1")
    for option, value, needle in (
        ("--max-new-tokens", "9", "between 1 and 8"),
        ("--strength", "6", "between -5 and 5"),
        ("--temperature", "1.5", "between 0 and 1"),
    ):
        rc, _, err = run(capsys, "steer", "--vector", missing, "--prompt", "Hi", option, value)
        assert_clean_error(rc, err, needle)
    rc, out, _ = run(capsys, "extract", "--help")
    assert rc == 0 and "at most 8" in out
    # Raised limits let larger values through: the run then stops at the missing file.
    monkeypatch.setenv("PERSONA_EXPLORER_MAX_NEW_TOKENS", "1024")
    monkeypatch.setenv("PERSONA_EXPLORER_MAX_STRENGTH", "500")
    rc, _, err = run(
        capsys, "steer", "--vector", missing, "--prompt", "Hi",
        "--max-new-tokens", "1000", "--strength", "400",
    )  # fmt: skip
    assert_clean_error(rc, err, "missing.safetensors", "No such file")
    # A setting the CLI cannot use is the user's to fix, not a bug.
    monkeypatch.setenv("PERSONA_EXPLORER_MAX_NEW_TOKENS", "lots")
    rc, _, err = run(capsys, "info", missing)
    assert_clean_error(rc, err, "PERSONA_EXPLORER_MAX_NEW_TOKENS")


def test_steer_needs_a_layer_and_strength(tmp_path: Path, capsys) -> None:
    """Checked from the file before the model loads; negative numbers in any notation parse."""
    bare = save(synthetic(layer=None, strength=None), tmp_path / "bare.safetensors")
    rc, _, err = run(capsys, "steer", "--vector", bare, "--layer", "3", "--prompt", "Hi")
    assert_clean_error(rc, err, "no --strength given", "records no recommended strength")
    rc, _, err = run(capsys, "steer", "--vector", bare, "--strength", "-1e1", "--prompt", "Hi")
    assert_clean_error(rc, err, "no --layer given", "records no recommended layer")
    pt = save(synthetic(), tmp_path / "v.pt", layout="persona_vectors")  # .pt keeps no layer
    rc, _, err = run(capsys, "steer", "--vector", pt, "--strength", "2", "--prompt", "Hi")
    assert_clean_error(rc, err, "no --layer given")


def test_negative_numbers_in_any_notation_are_values() -> None:
    joined = cli._join_negative_numbers(
        ["steer", "--strength", "-1e3", "--strength", "-2", "--seed", "-5", "--prompt", "-x"]
    )
    assert joined == ["steer", "--strength=-1e3", "--strength=-2", "--seed=-5", "--prompt", "-x"]


def test_steer_missing_vector_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "steer", "--vector", tmp_path / "nope.safetensors", "--prompt", "Hi")
    assert_clean_error(rc, err, "nope.safetensors")


def test_unknown_persona_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(
        capsys, "extract", "--persona", "no_such_trait_xyz", "--out", tmp_path / "v.safetensors"
    )
    assert_clean_error(rc, err, "no_such_trait_xyz")
    assert not (tmp_path / "v.safetensors").exists()


def test_bad_persona_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"instruction": [], "questions": ["q"]}))
    rc, _, err = run(capsys, "extract", "--persona", bad, "--out", tmp_path / "v.safetensors")
    assert_clean_error(rc, err, "bad.json")
    rc, _, err = run(
        capsys, "extract", "--persona", tmp_path / "nope.json", "--out", tmp_path / "v.safetensors"
    )
    assert_clean_error(rc, err, "nope.json")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--out", "v.txt"], "unsupported file type"),
        (["--out", "v.safetensors", "--out-layout", "assistant_axis"], ".pt files only"),
        (["--out", "v.safetensors", "--questions", "0"], "at least 1"),
        (["--out", "v.safetensors", "--samples", "100"], "between 1 and 64"),
        (["--out", "v.safetensors", "--variant", "mean"], "invalid choice"),
    ],
)
def test_extract_rejects_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    args = [str(tmp_path / a) if a.startswith("v.") else a for a in args]
    rc, _, err = run(capsys, "extract", "--persona", "evil", *args)
    assert_clean_error(rc, err, needle)


def test_unknown_model_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vec = save(synthetic(), tmp_path / "v.safetensors")
    missing = tmp_path / "no" / "such" / "model"
    rc, _, err = run(capsys, "steer", "--model", missing, "--vector", vec, "--prompt", "Hi")
    assert_clean_error(rc, err, "no such model directory", str(missing))


def test_empty_model_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vec = save(synthetic(), tmp_path / "v.safetensors")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    rc, _, err = run(capsys, "steer", "--model", empty, "--vector", vec, "--prompt", "Hi", "-q")
    assert_clean_error(rc, err, "empty-model")


# --------------------------------------------------------------------------- failures and bugs


@pytest.mark.parametrize(
    ("exc", "rc", "needle"),
    [
        (InputError("Strength must be a number."), 2, "error: Strength must be a number."),
        (
            FileNotFoundError(2, "No such file or directory", "/x/v.pt"),
            2,
            "error: /x/v.pt: No such",
        ),
        (PermissionError(13, "Permission denied", "/x/v.pt"), 2, "error: /x/v.pt: Permission"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_expected_failures_are_one_line(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, exc: BaseException, rc: int, needle
) -> None:
    def fail(_args: object) -> int:
        raise exc

    monkeypatch.setattr(files, "run_info", fail)
    got, out, err = run(capsys, "info", tmp_path / "v.safetensors")
    assert got == rc and out == ""
    assert "Traceback" not in err and "internal error" not in err
    assert needle in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "exc", [ValueError("bad shape"), KeyError("layer"), TypeError("not a tensor")]
)
def test_anything_else_is_reported_as_a_bug(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    """A plain ValueError is not a user mistake: it must not look like one."""

    def fail(_args: object) -> int:
        raise exc

    monkeypatch.setattr(files, "run_info", fail)
    rc, out, err = run(capsys, "info", tmp_path / "v.safetensors")
    assert rc == 1 and out == ""
    assert "Traceback" in err and "in fail" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"internal error (a bug): {type(exc).__name__}"), err
    assert not any(line.startswith("error: ") for line in err.splitlines())


def test_no_cli_module_is_long() -> None:
    """One module per command keeps each one readable; split one before it grows past this."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in CLI_DIR.glob("*.py")}
    assert {"__init__.py", "parser.py", "render.py"} <= set(sizes)
    assert Path(cli.__file__).parent == CLI_DIR  # the CLI is this package
    too_long = {name: n for name, n in sizes.items() if n > 200}
    assert not too_long, too_long


# --------------------------------------------------------------------------- bench


def test_bench_is_forwarded(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import persona_explorer

    seen: list[list[str]] = []
    fake = types.ModuleType("persona_explorer.dev.bench")
    fake.main = lambda argv: seen.append(list(argv)) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "persona_explorer.dev.bench", fake)
    monkeypatch.setattr(persona_explorer, "bench", fake, raising=False)
    assert cli.main(["bench", "--json", "--quick"]) == 0
    assert seen == [["--json", "--quick"]]


# --------------------------------------------------------------------------- with the real model


@pytest.fixture(scope="module")
def random_vector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random direction per layer, scaled to norm 20 (big enough to derail the model)."""
    gen = torch.Generator().manual_seed(1234)
    vectors = torch.randn(N_LAYERS, D_MODEL, generator=gen)
    vectors = vectors / vectors.norm(dim=1, keepdim=True) * 20.0
    path = tmp_path_factory.mktemp("vec") / "random.safetensors"
    return save(PersonaVector(name="random", vectors=vectors), path)


@pytest.mark.integration
def test_steer_json_on_the_embedded_model(random_vector: Path, capsys) -> None:
    rc, out, err = run(
        capsys, "steer", "--vector", random_vector, "--layer", "15",
        "--strength", "8", "--strength", "0",
        "--prompt", "What is the capital of France?", "--max-new-tokens", "12", "--json",
    )  # fmt: skip
    assert rc == 0, err
    (record,) = json.loads(out)
    assert record["prompt"] == "What is the capital of France?"
    assert record["layers"] == [15] and record["strength"] == 8.0
    assert record["steered"] != record["baseline"]
    assert [r["strength"] for r in record["steered_all"]] == [8.0, 0.0]
    assert record["steered_all"][0]["text"] == record["steered"]
    assert record["steered_all"][1]["text"] == record["baseline"]
    for key in ("baseline", "steered"):
        assert len(record["projections"][key]) == N_LAYERS
        assert isinstance(record["token_projections"][key], list)
    # Per-token projections are read after the steered layer, not where the vector was added.
    assert record["projection_layer"] == record["readout_layer"] == 16
    assert record["stopped"] is False
    first = record["steered_all"][0]
    assert len(first["injected"]) == N_LAYERS and first["injected"][:15] == [0.0] * 15
    assert first["token_injected"] == first["injected"][16]
    assert record["steered_all"][1]["injected"] == [0.0] * N_LAYERS  # strength 0
    # The vector is added at layer 15: the steered projection there is far above the baseline.
    assert record["projections"]["steered"][15] > record["projections"]["baseline"][15] + 50
    assert record["tokens_per_second"] > 0 and record["decoder"]


@pytest.mark.integration
def test_steer_strength_zero_equals_baseline(random_vector: Path, capsys) -> None:
    rc, out, err = run(
        capsys, "steer", "--vector", random_vector, "--layers", "14-15", "--strength", "0",
        "--prompt", "Name a color.", "--prompt", "Say hi.",
        "--max-new-tokens", "8", "--ignore-eos", "--json",
    )  # fmt: skip
    assert rc == 0, err
    records = json.loads(out)
    assert [r["prompt"] for r in records] == ["Name a color.", "Say hi."]
    for record in records:
        assert record["layers"] == [14, 15]
        assert record["steered"] == record["baseline"]
        assert record["projections"]["steered"] == record["projections"]["baseline"]
        # --ignore-eos: every row runs to max-new-tokens
        assert record["new_tokens"] == 2 * 8
        assert len(record["token_projections"]["baseline"]) == 8


@pytest.mark.integration
def test_steer_plain_uses_the_vectors_recommendations(tmp_path: Path, capsys) -> None:
    gen = torch.Generator().manual_seed(7)
    vectors = torch.randn(N_LAYERS, D_MODEL, generator=gen)
    vec = PersonaVector(name="rec", vectors=vectors, layer=12, strength=0.5)
    path = save(vec, tmp_path / "rec.safetensors")
    rc, out, err = run(
        capsys, "steer", "--vector", path, "--prompt", "Hello!", "--max-new-tokens", "4", "-q"
    )
    assert rc == 0, err
    assert err == ""  # --quiet
    assert "prompt 1/1: Hello!" in out
    assert "[baseline]" in out and "[steered x0.5 at layer 12]" in out
    assert "L13:" in out and "added directly" in out and "tok/s" in out


@pytest.mark.integration
def test_steer_errors_with_the_model(tmp_path: Path, random_vector: Path, capsys) -> None:
    rc, _, err = run(
        capsys, "steer", "--vector", random_vector, "--layer", "30", "--strength", "1",
        "--prompt", "Hi",
    )  # fmt: skip
    assert_clean_error(rc, err, "out of range")
    small = save(synthetic(), tmp_path / "small.safetensors")
    rc, _, err = run(capsys, "steer", "--vector", small, "--strength", "1", "--prompt", "Hi")
    assert_clean_error(rc, err, "layers")
    other = save(
        PersonaVector(name="o", vectors=torch.randn(N_LAYERS, D_MODEL), model_id="org/OtherModel"),
        tmp_path / "other.safetensors",
    )
    rc, _, err = run(capsys, "steer", "--vector", other, "--strength", "1", "--layer", "3",
                     "--prompt", "Hi")  # fmt: skip
    assert_clean_error(rc, err, "OtherModel")


@pytest.mark.integration
def test_extract_writes_a_loadable_vector(tmp_path: Path, capsys) -> None:
    out_path = tmp_path / "evil.safetensors"
    rc, out, err = run(
        capsys, "extract", "--persona", "evil", "--questions", "2", "--max-new-tokens", "8",
        "--out", out_path, "--json",
    )  # fmt: skip
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["n_layers"] == N_LAYERS and summary["d_model"] == D_MODEL
    assert len(summary["separation"]) == N_LAYERS
    assert 0 <= summary["layer"] < N_LAYERS
    assert summary["counts"]["questions"] == 2
    assert "%" in err  # the progress bar went to stderr
    vec = load(out_path, n_layers=N_LAYERS)
    assert vec.name == "evil" and vec.n_layers == N_LAYERS and vec.layer == summary["layer"]
    assert vec.model_id == summary["model_id"]
