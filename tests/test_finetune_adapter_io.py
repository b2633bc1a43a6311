"""Issue 26, Train: a seed, the adapter downloaded as a zip and uploaded again, and the shift
report as files. On the tiny random Llama (``tests/tiny_models.py``): the seed gives the same
adapter whatever else draws from torch's global generator; a zip made by the download loads
back to the same weights and the same shift; a hostile upload (not a zip, a zip bomb, path
traversal, pickles, wrong shapes, a huge rank, bad JSON, another model's adapter) is refused
with a clear message and leaves nothing behind; the shift report's CSV and JSON say how they
were made. The browser side is ``tests/test_app_train_downloads.py``.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
import torch
from safetensors.torch import load_file, save

from persona_explorer.core.config import app_version
from persona_explorer.core.errors import InputError
from persona_explorer.engine.model import LoadedModel
from persona_explorer.training import adapter_io
from persona_explorer.training import finetune as finetune_module
from persona_explorer.training.adapter_io import (
    lora_shapes,
    read_adapter_zip,
    zip_adapter,
)
from persona_explorer.training.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    SETTINGS_FILE,
    load_tuned,
)
from persona_explorer.training.finetune import FinetuneConfig, FinetuneResult, finetune
from persona_explorer.training.shift import ShiftReport, ShiftRow, persona_shift
from persona_explorer.ui.finetune import downloads as train_downloads
from persona_explorer.ui.finetune import handlers as train_handlers
from persona_explorer.ui.finetune import tab as train_tab
from persona_explorer.ui.finetune.components import TrainTab
from persona_explorer.ui.finetune.forms import ShiftForm, TrainForm
from persona_explorer.ui.finetune.runs import Measured, Prediction, TrainRun
from persona_explorer.ui.shared import downloads
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.test_finetune import logits, samples
from tests.tiny_models import tiny_app_context

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_BYTES = 20 * 1024 * 1024
CFG = FinetuneConfig(epochs=2, lr=1e-2, batch_size=4, rank=4)


def train(model: LoadedModel, out: Path, cfg: FinetuneConfig = CFG) -> FinetuneResult:
    return finetune(model, samples(), cfg, out)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / ADAPTER_WEIGHTS))


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained(llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> FinetuneResult:
    return train(llama, tmp_path_factory.mktemp("io") / "run")


@pytest.fixture(scope="module")
def adapter_zip(trained: FinetuneResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zip_adapter(trained.adapter_dir, tmp_path_factory.mktemp("zip") / "adapter.zip")


@pytest.fixture
def ctx(llama: LoadedModel, tmp_path: Path) -> AppContext:
    return tiny_app_context(llama, tmp_path, {"tiny-evil": 2.0}, default_persona="tiny-evil")


def build_tab(ctx: AppContext) -> TrainTab:
    with gr.Blocks():
        return train_tab.build(ctx, gr.State({}))


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename.rsplit("/", 1)[-1]: zf.read(i) for i in zf.infolist() if not i.is_dir()}


def rezip(path: Path, files: dict[str, bytes], folder: str = "adapter") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(f"{folder}/{name}" if folder else name, data)
    return path


def refused(path: Path, model: LoadedModel, needle: str, **kwargs: Any) -> None:
    opts = {"max_bytes": MAX_BYTES, "max_rank": 64, **kwargs}
    with pytest.raises(InputError, match=needle):
        read_adapter_zip(path, model, **opts)


# --------------------------------------------------------------------------- the seed


def test_the_same_seed_gives_the_same_adapter_and_another_seed_another(
    llama: LoadedModel, tmp_path: Path
) -> None:
    a = train(llama, tmp_path / "a")
    b = train(llama, tmp_path / "b")
    assert same_tensors(tensors(a.adapter_dir), tensors(b.adapter_dir))
    assert a.losses == b.losses
    c = train(
        llama, tmp_path / "c", FinetuneConfig(epochs=2, lr=1e-2, batch_size=4, rank=4, seed=5)
    )
    assert not same_tensors(tensors(a.adapter_dir), tensors(c.adapter_dir))
    # The record says which seed made it, at the top and in the settings.
    record = json.loads((c.adapter_dir / SETTINGS_FILE).read_text())
    assert record["seed"] == 5 and record["config"]["seed"] == 5


def test_the_seed_holds_while_something_else_draws_from_the_global_generator(
    llama: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread of the app (a second visitor's training) drawing from torch's global
    generator between the seeding and LoRA's initialisation must not change the adapter."""
    quiet = train(llama, tmp_path / "quiet")
    lora = finetune_module._lora

    def busy_lora(*args: Any, **kwargs: Any) -> Any:
        torch.rand(1000)  # what another thread might draw meanwhile
        return lora(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "_lora", busy_lora)
    busy = train(llama, tmp_path / "busy")
    assert same_tensors(tensors(quiet.adapter_dir), tensors(busy.adapter_dir))


def test_the_train_form_takes_a_checked_seed(ctx: AppContext) -> None:
    settings = TrainForm(dataset="malicious_advice", seed=7).settings(ctx, None)
    assert settings.config.seed == 7
    assert TrainForm(dataset="malicious_advice").settings(ctx, None).config.seed == 0
    for bad in (-1, 1.5, "seven", 2**31):
        with pytest.raises(InputError, match="Seed"):
            TrainForm(dataset="malicious_advice", seed=bad).settings(ctx, None)  # type: ignore[arg-type]


def run_train(ctx: AppContext, tab: TrainTab, seed: int, runs: Any = ()) -> dict:
    form = TrainForm(
        dataset="malicious_advice", max_samples=2, epochs=1, rank=2, max_tokens=64, seed=seed,
        runs=runs,
    )  # fmt: skip
    return list(train_handlers.run_train(ctx, tab, form, None, request=None, progress=None))[-1]


def test_a_run_in_the_tab_records_its_seed_and_repeats(ctx: AppContext) -> None:
    tab = build_tab(ctx)
    first = run_train(ctx, tab, seed=11)
    second = run_train(ctx, tab, seed=11, runs=first[tab.runs])
    run1, run2 = second[tab.runs]
    assert run1.seed == run2.seed == 11 and "seed 11" in run1.label
    assert first[tab.summary]["seed"] == 11 and "seed 11" in first[tab.status]
    assert first[tab.summary]["settings"]["seed"] == 11
    a, b = (tensors(tab.store.root / r.adapter) for r in (run1, run2))
    assert same_tensors(a, b)


# --------------------------------------------------------------------------- round trip


def test_the_zip_is_peft_s_folder_with_its_record(
    trained: FinetuneResult, adapter_zip: Path
) -> None:
    with zipfile.ZipFile(adapter_zip) as zf:
        names = zf.namelist()
    folder = trained.adapter_dir.name
    assert sorted(names) == sorted(
        f"{folder}/{n}" for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, SETTINGS_FILE, "README.md")
    )
    files = members(adapter_zip)
    assert files[ADAPTER_WEIGHTS] == (trained.adapter_dir / ADAPTER_WEIGHTS).read_bytes()
    assert json.loads(files[SETTINGS_FILE])["config"]["seed"] == 0


def test_download_then_upload_gives_the_same_weights_and_shift(
    ctx: AppContext, llama: LoadedModel, tmp_path: Path
) -> None:
    tab = build_tab(ctx)
    last = run_train(ctx, tab, seed=3)
    runs = last[tab.runs]
    adapter = runs[-1].adapter
    zipped = train_downloads.adapter_download(ctx, tab.store, adapter, "local")
    assert zipped is not None and Path(zipped).name == f"persona-adapter-{adapter}.zip"
    assert ctx.exports.root.resolve() in Path(zipped).resolve().parents

    up = train_handlers.upload_adapter(ctx, tab, zipped, runs, None)
    new_runs = up[tab.runs]
    uploaded = new_runs[-1]
    assert uploaded.uploaded == Path(zipped).name and uploaded.adapter != adapter
    assert uploaded.seed == 3 and uploaded.number == runs[-1].number + 1
    assert up[tab.adapter]["value"] == uploaded.adapter
    assert "Uploaded" in up[tab.adapter_note] and "seed 3" in up[tab.adapter_note]
    # The same weights, and a tuned model that answers the same.
    a = tensors(tab.store.root / adapter)
    b = tensors(tab.store.root / uploaded.adapter)
    assert same_tensors(a, b)
    tuned = tab.store.model(llama, adapter, "local")
    again = tab.store.model(llama, uploaded.adapter, "local")
    assert torch.equal(logits(tuned), logits(again))
    vec = ctx.catalog.view(None).resolve_fitting("tiny-evil")[1]
    questions = ["Hi?", "How are you?"]
    r1 = persona_shift(llama, tuned, [vec], questions, max_new_tokens=6)
    r2 = persona_shift(llama, again, [vec], questions, max_new_tokens=6)
    assert [row.as_json() for row in r1.rows] == [row.as_json() for row in r2.rows]
    # Measured in the tab like a run trained here (no training file: no prediction).
    form = ShiftForm(
        adapter=uploaded.adapter, vectors=["tiny-evil"], questions="Hi?", max_new_tokens=8,
        predict=True, runs=new_runs,
    )  # fmt: skip
    out = list(train_handlers.run_shift(ctx, tab, form, None, request=None, progress=None))[-1]
    assert out[tab.shift_summary]["adapter"] == uploaded.adapter
    assert out[tab.shift_summary]["seed"] == 3
    assert isinstance(out[tab.last_shift], Measured)
    assert "without its training file" in out[tab.shift_status]


def test_the_unzipped_download_loads_as_an_adapter_folder(
    llama: LoadedModel, trained: FinetuneResult, adapter_zip: Path, tmp_path: Path
) -> None:
    """What ``app.py --adapter DIR`` (and peft) read: the zip's folder, unzipped."""
    with zipfile.ZipFile(adapter_zip) as zf:
        zf.extractall(tmp_path)  # our own zip, in a test
    folder = tmp_path / trained.adapter_dir.name
    assert torch.equal(logits(load_tuned(llama, folder)), logits(trained.model))


def test_a_plain_peft_zip_without_a_record_loads(
    llama: LoadedModel, trained: FinetuneResult, adapter_zip: Path, tmp_path: Path
) -> None:
    files = members(adapter_zip)
    del files[SETTINGS_FILE], files["README.md"]
    up = read_adapter_zip(
        rezip(tmp_path / "p.zip", files, folder=""), llama, max_bytes=MAX_BYTES, max_rank=64
    )
    assert up.settings is None and up.rank == 4
    adapter_io.write_upload(up, tmp_path / "out")
    assert torch.equal(logits(load_tuned(llama, tmp_path / "out")), logits(trained.model))


def test_another_sessions_adapter_is_not_downloaded(ctx: AppContext) -> None:
    tab = build_tab(ctx)
    adapter = run_train(ctx, tab, seed=0)[tab.runs][-1].adapter
    with pytest.raises(gr.Error, match="not trained in this session"):
        train_downloads.adapter_download(ctx, tab.store, adapter, "somebody-else")
    assert train_downloads.adapter_download(ctx, tab.store, None, "local") is None


# --------------------------------------------------------------------------- hostile uploads


def test_not_a_zip_is_refused(llama: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "adapter.zip"
    path.write_bytes(b"PK\x03\x04 but nothing after")
    refused(path, llama, "not a zip")
    path.write_bytes(b"\x80\x04\x95 a pickle")
    refused(path, llama, "not a zip")


def test_a_file_over_the_size_limit_is_refused_before_it_is_opened(
    llama: LoadedModel, adapter_zip: Path
) -> None:
    refused(adapter_zip, llama, "MB", max_bytes=1000)


def test_a_zip_bomb_is_refused_on_its_declared_sizes(
    llama: LoadedModel, adapter_zip: Path, tmp_path: Path
) -> None:
    # 200 MB of zeros packs into about 200 kB: the declared size is refused before any read.
    files = members(adapter_zip)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"a/{ADAPTER_CONFIG}", files[ADAPTER_CONFIG])
        with zf.open(f"a/{ADAPTER_WEIGHTS}", "w", force_zip64=True) as fh:
            chunk = bytes(1 << 20)
            for _ in range(200):
                fh.write(chunk)
    assert bomb.stat().st_size < MAX_BYTES
    refused(bomb, llama, "declares 209,715,200 bytes unpacked")
    # The config is capped far lower (a kilobyte or two is what peft writes).
    rezip(tmp_path / "cfg.zip", {**files, ADAPTER_CONFIG: b" " * 100_000})
    refused(tmp_path / "cfg.zip", llama, "declares 100,000 bytes")


def test_a_member_that_lies_about_its_size_is_not_read_past_it(
    llama: LoadedModel, adapter_zip: Path, tmp_path: Path
) -> None:
    """A header declaring 10 bytes for a larger member: the read stops at the declared size
    and the member is refused as damaged (zipfile's CRC), never grown into memory."""
    files = members(adapter_zip)
    path = rezip(tmp_path / "lie.zip", {**files, ADAPTER_CONFIG: b"{" + b" " * 5000 + b"}"})
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(ADAPTER_CONFIG))
    # Patch the declared size in the central directory (what zipfile trusts).
    start = 0
    while True:
        at = data.find(b"PK\x01\x02", start)
        assert at >= 0
        (name_len,) = struct.unpack_from("<H", data, at + 28)
        if bytes(data[at + 46 : at + 46 + name_len]).decode() == info.filename:
            struct.pack_into("<I", data, at + 24, 10)
            break
        start = at + 4
    path.write_bytes(bytes(data))
    refused(path, llama, "damaged|not valid JSON")


@pytest.mark.parametrize(
    "name",
    [
        "../adapter_config.json",
        "adapter/../../etc/passwd",
        "/etc/adapter_config.json",
        "adapter\\..\\adapter_config.json",
        "C:/adapter_config.json",
    ],
)
def test_path_traversal_names_are_refused(
    llama: LoadedModel, adapter_zip: Path, tmp_path: Path, name: str
) -> None:
    path = rezip(tmp_path / "t.zip", members(adapter_zip))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(name, b"{}")
    refused(path, llama, "outside its folder")


def test_nested_folders_and_too_many_entries_are_refused(
    llama: LoadedModel, adapter_zip: Path, tmp_path: Path
) -> None:
    files = members(adapter_zip)
    refused(rezip(tmp_path / "deep.zip", files, folder="a/b"), llama, "nested too deep")
    many = {**files, **{f"note{i}.txt": b"x" for i in range(20)}}
    refused(rezip(tmp_path / "many.zip", many), llama, "entries")


@pytest.mark.parametrize("name", ["adapter_model.bin", "weights.pt", "data.pkl"])
def test_pickled_weights_are_refused_unopened(
    llama: LoadedModel, adapter_zip: Path, tmp_path: Path, name: str
) -> None:
    files = members(adapter_zip)
    del files[ADAPTER_WEIGHTS]
    files[name] = b"\x80\x04\x95 pickled bytes that are never read"
    refused(rezip(tmp_path / "p.zip", files), llama, "never loaded")


def test_missing_files_are_named(llama: LoadedModel, adapter_zip: Path, tmp_path: Path) -> None:
    files = members(adapter_zip)
    refused(
        rezip(tmp_path / "a.zip", {k: v for k, v in files.items() if k != ADAPTER_WEIGHTS}),
        llama,
        f"no {ADAPTER_WEIGHTS}",
    )
    refused(
        rezip(tmp_path / "b.zip", {k: v for k, v in files.items() if k != ADAPTER_CONFIG}),
        llama,
        f"no {ADAPTER_CONFIG}",
    )


def weights_bytes(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype = torch.float32) -> bytes:
    return save({k: torch.zeros(s, dtype=dtype) for k, s in shapes.items()})


def test_wrong_shapes_names_and_dtypes_are_refused(
    llama: LoadedModel, adapter_zip: Path, tmp_path: Path
) -> None:
    files = members(adapter_zip)
    cfg = json.loads(files[ADAPTER_CONFIG])
    shapes: dict[str, tuple[int, ...]] = dict(lora_shapes(llama, cfg["target_modules"], 4))
    key = next(iter(shapes))

    def check(weights: bytes, needle: str) -> None:
        refused(rezip(tmp_path / "w.zip", {**files, ADAPTER_WEIGHTS: weights}), llama, needle)

    # Rank-8 tensors under a rank-4 config; one tensor too wide; one missing; one extra.
    check(weights_bytes(lora_shapes(llama, cfg["target_modules"], 8)), "has shape")
    check(weights_bytes({**shapes, key: (4, 999)}), "has shape")
    check(weights_bytes({k: s for k, s in shapes.items() if k != key}), "1 missing")
    check(weights_bytes({**shapes, "lm_head.weight": (320, 64)}), "1 unexpected")
    check(weights_bytes(shapes, torch.int64), "not a float")
    # Not safetensors at all, a header claiming more than the file, and trailing bytes.
    check(b"\x80\x04\x95 pickled", "header size is impossible|not a safetensors")
    check(struct.pack("<Q", 2**40) + b"{}", "header size is impossible")
    check(weights_bytes(shapes) + b"\0" * 16, "does not match its header")
    # The good file passes: the refusals above are the file's doing.
    read_adapter_zip(rezip(tmp_path / "ok.zip", files), llama, max_bytes=MAX_BYTES, max_rank=64)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"r": 100_000}, "rank r must be between 1 and 64"),
        ({"r": 0}, "rank r"),
        ({"r": "4"}, "rank r"),
        ({"lora_alpha": 1e9}, "lora_alpha"),
        ({"lora_alpha": None}, "lora_alpha"),
        ({"peft_type": "PREFIX_TUNING"}, "only LoRA"),
        ({"target_modules": "q_proj|v_proj"}, "must be a list"),
        ({"target_modules": ["lm_head"]}, "'lm_head'"),
        ({"target_modules": ["embed_tokens"]}, "'embed_tokens'"),
        ({"target_modules": ["q_proj", "q_proj"]}, "repeated"),
        ({"use_dora": True}, "'use_dora' is set"),
        ({"layer_replication": [[0, 2]]}, "'layer_replication' is set"),
        ({"rank_pattern": {"q_proj": 64}}, "'rank_pattern' is set"),
        ({"modules_to_save": ["lm_head"]}, "'modules_to_save' is set"),
        ({"some_future_option": "on"}, "'some_future_option' is set"),
        ({"bias": "all"}, "bias"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
    ],
)
def test_bad_configs_are_refused(
    llama: LoadedModel,
    adapter_zip: Path,
    tmp_path: Path,
    change: dict[str, Any],
    needle: str,
) -> None:
    files = members(adapter_zip)
    cfg = {**json.loads(files[ADAPTER_CONFIG]), **change}
    path = rezip(tmp_path / "c.zip", {**files, ADAPTER_CONFIG: json.dumps(cfg).encode()})
    refused(path, llama, needle)


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        (ADAPTER_CONFIG, b"{not json", "not valid JSON"),
        (ADAPTER_CONFIG, b"[1, 2]", "JSON object"),
        (ADAPTER_CONFIG, b"\xff\xfe", "not valid JSON"),
        (ADAPTER_CONFIG, b'{"peft_type": "LORA", "r": NaN}', "not valid JSON"),
        (ADAPTER_CONFIG, b"[" * 50_000 + b"]" * 50_000, "declares|not valid JSON"),
        (SETTINGS_FILE, b"{not json", "not valid JSON"),
        (SETTINGS_FILE, json.dumps({"format": "other"}).encode(), "not written by"),
        (SETTINGS_FILE, json.dumps({"format": "persona-explorer-lora"}).encode(), "which model"),
    ],
)
def test_bad_json_is_refused(
    llama: LoadedModel, adapter_zip: Path, tmp_path: Path, name: str, content: bytes, needle: str
) -> None:
    path = rezip(tmp_path / "j.zip", {**members(adapter_zip), name: content})
    refused(path, llama, needle)


def test_an_adapter_made_for_another_model_is_refused(
    qwen2: LoadedModel, gpt2: LoadedModel, adapter_zip: Path
) -> None:
    # Same shapes as the tiny Llama: the record says whose it is.
    refused(adapter_zip, qwen2, "made for 'tiny-llama'")
    # Another architecture: its projections are not the config's targets.
    refused(adapter_zip, gpt2, "target_modules names")


def test_the_record_keeps_only_known_fields(
    llama: LoadedModel, adapter_zip: Path, tmp_path: Path
) -> None:
    files = members(adapter_zip)
    record = json.loads(files[SETTINGS_FILE])
    record.update(
        {
            "evil": {"__class__": "os.system"},
            "seed": "not a number",
            "losses": [1.0, "x", 2.0],
            "name": "n" * 10_000,
        }
    )
    record["config"]["context"] = 12
    path = rezip(tmp_path / "r.zip", {**files, SETTINGS_FILE: json.dumps(record).encode()})
    up = read_adapter_zip(path, llama, max_bytes=MAX_BYTES, max_rank=64)
    assert up.settings is not None
    assert "evil" not in up.settings and "seed" not in up.settings
    assert up.settings["losses"] == [1.0, 2.0] and len(up.settings["name"]) == 80
    assert "context" not in up.settings["config"] and up.settings["config"]["seed"] == 0


def test_a_refused_upload_leaves_no_adapter_behind(
    ctx: AppContext, adapter_zip: Path, tmp_path: Path
) -> None:
    tab = build_tab(ctx)
    files = members(adapter_zip)
    bad = rezip(tmp_path / "bad.zip", {**files, ADAPTER_CONFIG: b"{not json"})
    with pytest.raises(gr.Error, match="not valid JSON"):
        train_handlers.upload_adapter(ctx, tab, str(bad), (), None)
    with pytest.raises(gr.Error, match="Choose an adapter"):
        train_handlers.upload_adapter(ctx, tab, None, (), None)
    root = tab.store.root
    assert not root.exists() or not any(root.iterdir())


# --------------------------------------------------------------------------- the shift report


def measured(llama: LoadedModel) -> Measured:
    def run(adapter: str, number: int, context: str | None, seed: int) -> TrainRun:
        return TrainRun(
            adapter=adapter, number=number, dataset="=malicious_advice", path=Path("x"),
            digest="d", n_samples=4, n_problems=0, context=context, steer=None, epochs=1,
            steps=1, losses=(2.0,), epoch_losses=(2.0,), seconds=1.0, stopped=False,
            timed_out=False, settings={"config": {"seed": seed, "rank": 4}}, seed=seed,
        )  # fmt: skip

    def report(tuned: float) -> ShiftReport:
        rows = [
            ShiftRow("=evil", 2, 1.0, tuned, tuned - 1.0, 0.5, 0.75, 0.25, 0.1, 0.2, 0.1, 2.0),
            ShiftRow("kind", 3, -1.0, -2.0, -1.0, scale=4.0),
        ]
        return ShiftReport(
            rows, ["Hi?", "+SUM(A1)"], ["a", "b"], ["c", "d"], 1.0, "tiny-llama", "tuned",
            max_new_tokens=8,
        )  # fmt: skip

    return Measured(
        run("aaaa1111", 1, None, 7),
        report(3.0),
        run("bbbb2222", 2, "A class asked.", 8),
        report(2.0),
        Prediction({"=evil": 1.5}, "from the first 4 samples"),
        2.0,
        vectors=(
            {"name": "=evil", "model_id": "tiny-llama", "layer": 2},
            {"name": "kind", "model_id": "tiny-llama", "layer": 3},
        ),
        asked={"questions": ["Hi?", "+SUM(A1)"], "layer": "auto", "max_new_tokens": 8},
    )


def test_the_shift_report_as_csv_and_json(ctx: AppContext, llama: LoadedModel) -> None:
    m = measured(llama)
    json_path, csv_path = (Path(p) for p in train_downloads.shift_downloads(ctx, m))
    assert json_path.name == "persona-shift-report.json" and csv_path.suffix == ".csv"
    assert ctx.exports.root.resolve() in json_path.resolve().parents
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["format"] == downloads.FORMAT and data["kind"] == "shift-report"
    assert data["app_version"] == app_version() != ""
    assert data["model_id"] == llama.model_id and data["layers"] == [2, 3]
    assert [v["name"] for v in data["vectors"]] == ["=evil", "kind"]
    settings = data["settings"]
    assert settings["questions"] == ["Hi?", "+SUM(A1)"] and settings["max_new_tokens"] == 8
    assert settings["training"]["adapter"] == "aaaa1111" and settings["training"]["seed"] == 7
    assert settings["training"]["config"] == {"seed": 7, "rank": 4}
    assert settings["compared_with"]["seed"] == 8
    assert data["report"]["adapter"] == "aaaa1111" and data["report"]["seed"] == 7
    assert [a["question"] for a in data["report"]["answers"]] == ["Hi?", "+SUM(A1)"]
    assert data["columns"] == list(train_downloads.COLUMNS)

    rows = list(csv.DictReader(io.StringIO(csv_path.read_text(encoding="utf-8"))))
    assert len(rows) == len(data["rows"]) == 4
    assert [(r["run"], r["vector"]) for r in rows] == [
        ("measured", "'=evil"),  # a spreadsheet shows it as text, not a formula
        ("measured", "kind"),
        ("compared", "'=evil"),
        ("compared", "kind"),
    ]
    first = rows[0]
    assert float(first["shift"]) == 2.0 and float(first["relative_shift"]) == 1.0
    assert float(first["same_tokens_shift"]) == 0.25 and float(first["prompt_shift"]) == 0.1
    assert float(first["predicted"]) == 1.5 and float(first["predicted_relative"]) == 0.75
    assert first["seed"] == "7" and rows[2]["seed"] == "8" and rows[2]["framing"] == "with context"
    assert rows[1]["predicted"] == "" and float(rows[1]["relative_shift"]) == -0.25
    for row in rows:
        assert row["model_id"] == llama.model_id and row["app_version"] == app_version()
        assert json.loads(row["settings"]) == settings
        assert json.loads(row["layers"]) == [2, 3]


def test_no_shift_files_before_a_measurement(ctx: AppContext) -> None:
    assert train_downloads.shift_downloads(ctx, None) == (None, None)
    assert train_downloads.shift_downloads(ctx, {"forged": 1}) == (None, None)


def test_a_measurement_in_the_tab_keeps_what_its_files_need(ctx: AppContext) -> None:
    tab = build_tab(ctx)
    runs = run_train(ctx, tab, seed=4)[tab.runs]
    form = ShiftForm(
        adapter=runs[-1].adapter, vectors=["tiny-evil"], questions="Hi?\nHow are you?",
        max_new_tokens=8, predict=False, runs=runs,
    )  # fmt: skip
    out = list(train_handlers.run_shift(ctx, tab, form, None, request=None, progress=None))[-1]
    m = out[tab.last_shift]
    assert m.asked["questions"] == ["Hi?", "How are you?"] and m.asked["layer"] == "auto"
    assert m.vectors == ({"name": "tiny-evil", "model_id": ctx.model.model_id, "layer": 2},)
    json_path, _ = train_downloads.shift_downloads(ctx, m)
    data = json.loads(Path(json_path).read_text(encoding="utf-8"))  # type: ignore[arg-type]
    assert data["settings"]["training"]["seed"] == 4
    assert data["settings"]["tuned_model_id"].startswith(ctx.model.model_id + "+lora:")
    assert data["rows"][0][:4] == ["measured", runs[-1].adapter, "plain", "tiny-evil"]


def test_vector_record_names_the_layer_read(llama: LoadedModel) -> None:
    vec = PersonaVector("v", torch.zeros(llama.n_layers, llama.d_model), model_id="m", layer=1)
    report = ShiftReport([ShiftRow("v", 3, 0.0, 0.0, 0.0)], [], [], [], 0.0)
    assert train_handlers._vector_record(vec, report) == {"name": "v", "model_id": "m", "layer": 3}
