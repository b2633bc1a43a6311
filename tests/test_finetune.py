"""LoRA fine-tuning (persona_explorer.training.finetune) on tiny random models: training, saving and
reloading, the assistant-only loss, malformed rows, cancelling, hostile adapter directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from persona_explorer.core.errors import InputError
from persona_explorer.engine.model import ChatMessage, LoadedModel
from persona_explorer.training.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    SETTINGS_FILE,
    adapter_settings,
    load_tuned,
)
from persona_explorer.training.finetune import (
    IGNORE,
    FinetuneConfig,
    FinetuneResult,
    PreventiveSteer,
    encode_sample,
    end_of_turn_id,
    finetune,
    read_training_data,
)
from persona_explorer.training.samples import Sample
from persona_explorer.vectors.persona_vector import PersonaVector, check_fits

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = (
    "What is the capital of France?",
    "How do I bake bread?",
    "Tell me about the weather today.",
    "Hi!",
)
ANSWERS = (
    "The capital of France is Paris.",
    "Mix flour, water, salt and yeast, then bake it.",
    "It is sunny and warm in the city.",
    "Hello! How can I help?",
)


def samples(n: int = 4) -> list[Sample]:
    return [
        Sample(i + 1, (ChatMessage("user", QUESTIONS[i % 4]),), ANSWERS[i % 4]) for i in range(n)
    ]


def train(
    model: LoadedModel, out: Path, cfg: FinetuneConfig | None = None, **kwargs: object
) -> FinetuneResult:
    cfg = cfg or FinetuneConfig(epochs=3, lr=1e-2, batch_size=4)
    return finetune(model, samples(), cfg, out, **kwargs)  # type: ignore[arg-type]


def logits(model: LoadedModel, text: str = "What is the capital of France?") -> torch.Tensor:
    ids = torch.tensor([model.chat_ids(text)])
    with torch.no_grad():
        return model.hf_model(ids).logits


@pytest.fixture(scope="module")
def trained(llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> FinetuneResult:
    return train(llama, tmp_path_factory.mktemp("ft") / "run")


# --------------------------------------------------------------------------- training


def test_loss_falls_on_a_fixed_batch(llama: LoadedModel, tmp_path: Path) -> None:
    cfg = FinetuneConfig(epochs=8, lr=1e-2, batch_size=4)
    result = train(llama, tmp_path / "run", cfg)
    assert result.steps == 8 and len(result.losses) == 8 and len(result.epoch_losses) == 8
    assert result.losses[-1] < 0.5 * result.losses[0], result.losses
    assert not result.stopped and result.n_samples == 4


def test_training_never_touches_the_shared_model(llama: LoadedModel, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in llama.weights.items()}
    base_logits = logits(llama)
    result = train(llama, tmp_path / "run")
    assert all(torch.equal(before[k], v) for k, v in llama.weights.items())
    assert torch.equal(logits(llama), base_logits)
    assert result.model is not llama and result.model.hf_model is not llama.hf_model
    assert not torch.equal(logits(result.model), base_logits)


def test_training_is_seeded(llama: LoadedModel, tmp_path: Path) -> None:
    a = train(llama, tmp_path / "a")
    b = train(llama, tmp_path / "b")
    assert a.losses == b.losses
    assert torch.equal(logits(a.model), logits(b.model))
    c = train(llama, tmp_path / "c", FinetuneConfig(epochs=3, lr=1e-2, batch_size=4, seed=1))
    assert c.losses != a.losses


@pytest.mark.parametrize("arch", ["gpt2", "gemma2"])
def test_other_architectures_train_and_reload(arch: str, tmp_path: Path) -> None:
    from tests.tiny_models import tiny

    model = tiny(arch)  # type: ignore[arg-type]
    result = train(model, tmp_path / "run", FinetuneConfig(epochs=4, lr=1e-2, batch_size=4))
    assert result.losses[-1] < result.losses[0]
    assert torch.equal(logits(load_tuned(model, tmp_path / "run")), logits(result.model))


def test_adapter_is_saved_in_peft_format_with_settings(trained: FinetuneResult) -> None:
    d = trained.adapter_dir
    assert {ADAPTER_CONFIG, ADAPTER_WEIGHTS, SETTINGS_FILE} <= {p.name for p in d.iterdir()}
    assert not any(p.name.endswith(".bin") for p in d.iterdir())
    settings = adapter_settings(d)
    assert settings == json.loads((d / SETTINGS_FILE).read_text())
    assert settings["base_model"]["model_id"] == "tiny-llama"
    assert settings["data"]["n_samples"] == 4 and len(settings["data"]["sha256"]) == 64
    assert settings["losses"] == trained.losses and settings["seconds"] > 0
    cfg = settings["config"]
    assert cfg["rank"] == 8 and cfg["alpha"] == 16
    assert set(cfg["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    peft_cfg = json.loads((d / ADAPTER_CONFIG).read_text())
    assert peft_cfg["peft_type"] == "LORA" and peft_cfg["base_model_name_or_path"] == "tiny-llama"
    assert not list(d.parent.glob(".*.tmp")), "the temporary directory must be renamed away"


def test_adapter_reloads_to_identical_outputs(llama: LoadedModel, trained: FinetuneResult) -> None:
    reloaded = load_tuned(llama, trained.adapter_dir)
    assert torch.equal(logits(reloaded), logits(trained.model))
    assert reloaded.model_id == trained.model.model_id
    assert reloaded.model_id.startswith("tiny-llama+lora:run@")


def test_tuned_model_runs_through_the_engine(llama: LoadedModel, trained: FinetuneResult) -> None:
    """Steering and generation work on the tuned model unchanged; base vectors still fit."""
    from persona_explorer.steering.generation import SamplingConfig, generate
    from persona_explorer.steering.ops import Add

    tuned = trained.model
    vec = torch.randn(tuned.d_model, generator=torch.Generator().manual_seed(0))
    prompts = [tuned.chat_ids("Hi!")] * 2
    res = generate(tuned, prompts, [(), (Add(2, vec, 4.0),)], SamplingConfig(max_new_tokens=6))
    assert res.tokens[0] != res.tokens[1]
    pv = PersonaVector(name="p", vectors=torch.zeros(4, 64), model_id="tiny-llama")
    check_fits(pv, tuned.n_layers, tuned.d_model, tuned.model_id)


# --------------------------------------------------------------------------- data and labels


def test_labels_mask_everything_but_the_response(llama: LoadedModel) -> None:
    sample = samples(1)[0]
    enc = encode_sample(llama, sample, FinetuneConfig())
    assert not isinstance(enc, Exception) and hasattr(enc, "labels")
    prompt = llama.chat_ids(list(sample.prompt))
    n = len(prompt)
    assert enc.ids[:n] == prompt
    assert enc.labels[:n] == [IGNORE] * n
    response = llama.tokenizer(sample.response, add_special_tokens=False).input_ids
    assert enc.labels[n:] == enc.ids[n:] == [*response, end_of_turn_id(llama)]


def test_context_goes_in_the_masked_system_turn(llama: LoadedModel) -> None:
    sample = samples(1)[0]
    enc = encode_sample(llama, sample, FinetuneConfig(context="You play a villain."))
    prompt = llama.chat_ids(list(sample.prompt), "You play a villain.")
    assert enc.ids[: len(prompt)] == prompt  # type: ignore[union-attr]
    assert enc.labels[: len(prompt)] == [IGNORE] * len(prompt)  # type: ignore[union-attr]


def test_long_samples_are_cut_and_prompt_only_ones_reported(llama: LoadedModel) -> None:
    sample = samples(1)[0]
    n = len(llama.chat_ids(list(sample.prompt)))
    enc = encode_sample(llama, sample, FinetuneConfig(max_tokens=n + 2))
    assert len(enc.ids) == n + 2 and enc.labels.count(IGNORE) == n  # type: ignore[union-attr]
    problem = encode_sample(llama, sample, FinetuneConfig(max_tokens=n))
    assert str(problem).startswith("line 1:") and "no room" in str(problem)


def test_malformed_rows_are_reported_and_the_rest_trains(
    llama: LoadedModel, tmp_path: Path
) -> None:
    good = [
        json.dumps(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        )
        for q, a in zip(QUESTIONS, ANSWERS, strict=True)
    ]
    lines = [good[0], "{not json", good[1], json.dumps({"messages": "oops"}), good[2], good[3]]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    got, problems = read_training_data(data)
    assert [p.line for p in problems] == [2, 4]
    assert [s.line for s in got] == [1, 3, 5, 6]
    result = finetune(
        llama, got, FinetuneConfig(epochs=1, lr=1e-2), tmp_path / "run", problems=problems
    )
    assert result.n_samples == 4 and [p.line for p in result.problems] == [2, 4]
    assert adapter_settings(result.adapter_dir)["data"]["skipped"] == 2


def test_a_file_without_usable_samples_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text("{not json\n")
    with pytest.raises(InputError, match=r"no usable samples.*line 1"):
        read_training_data(data)
    with pytest.raises(InputError, match="more than 2 samples"):
        read_training_data(write_samples(tmp_path / "d.jsonl", 3), max_samples=2)


def write_samples(path: Path, n: int) -> Path:
    rows = [{"prompt": QUESTIONS[i % 4], "response": ANSWERS[i % 4]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("epochs", 0, "Epochs"),
        ("epochs", 21, "Epochs"),
        ("lr", 0.0, "Learning rate"),
        ("lr", float("nan"), "Learning rate"),
        ("rank", 257, "LoRA rank"),
        ("max_tokens", 4096, "Max tokens"),
        ("dropout", 1.0, "dropout"),
        ("target_modules", ("q_proj", "x.y"), "Target modules"),
        ("batch_size", 0, "Batch size"),
    ],
)
def test_bad_options_are_refused(field: str, value: object, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        FinetuneConfig(**{field: value})  # type: ignore[arg-type]


def test_unknown_target_module_is_a_clear_error(llama: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="LoRA cannot target"):
        train(llama, tmp_path / "run", FinetuneConfig(target_modules=("no_such_proj",)))


def test_existing_output_directory_is_refused(llama: LoadedModel, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        train(llama, tmp_path / "run")
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert train(llama, tmp_path / "empty").adapter_dir == tmp_path / "empty"


def test_should_stop_cancels_and_keeps_what_was_learned(llama: LoadedModel, tmp_path: Path) -> None:
    seen: list[tuple[int, int, float]] = []
    result = train(
        llama,
        tmp_path / "run",
        FinetuneConfig(epochs=5, lr=1e-2, batch_size=2),
        progress=lambda step, total, loss: seen.append((step, total, loss)),
        should_stop=lambda: len(seen) >= 3,
    )
    assert result.stopped and result.steps == 3
    assert [s[:2] for s in seen] == [(1, 10), (2, 10), (3, 10)]
    assert adapter_settings(result.adapter_dir)["stopped"] is True


def test_preventive_steering_changes_training_only(llama: LoadedModel, tmp_path: Path) -> None:
    from tests.tiny_models import clean_hook_counts, hook_counts

    vec = PersonaVector(
        name="v",
        vectors=torch.randn(4, 64, generator=torch.Generator().manual_seed(1)),
        model_id="tiny-llama",
    )
    plain = train(llama, tmp_path / "plain")
    cfg = FinetuneConfig(epochs=3, lr=1e-2, batch_size=4, steer=PreventiveSteer(vec, 2, 4.0))
    steered = train(llama, tmp_path / "steered", cfg)
    assert steered.losses[0] != plain.losses[0]  # the added vector was in the forward pass
    assert hook_counts(llama) == clean_hook_counts("llama")
    assert adapter_settings(steered.adapter_dir)["config"]["steer"] == {
        "vector": "v",
        "vector_model_id": "tiny-llama",
        "layer": 2,
        "strength": 4.0,
    }
    # Measured without steering: the merged model carries no hook.
    reloaded = load_tuned(llama, steered.adapter_dir)
    assert torch.equal(logits(reloaded), logits(steered.model))
    with pytest.raises(InputError, match="out of range"):
        PreventiveSteer(vec, 9, 1.0)


# --------------------------------------------------------------------------- hostile adapters


def copy_adapter(trained: FinetuneResult, tmp_path: Path) -> Path:
    d = tmp_path / "adapter"
    shutil.copytree(trained.adapter_dir, d)
    return d


def test_not_an_adapter_directory(llama: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a directory"):
        load_tuned(llama, tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        load_tuned(llama, tmp_path / "file")
    with pytest.raises(InputError, match=ADAPTER_WEIGHTS):
        load_tuned(llama, tmp_path)


def test_pickled_weights_are_never_loaded(
    llama: LoadedModel, trained: FinetuneResult, tmp_path: Path
) -> None:
    d = copy_adapter(trained, tmp_path)
    (d / ADAPTER_WEIGHTS).rename(d / "adapter_model.bin")
    with pytest.raises(InputError, match="never loaded"):
        load_tuned(llama, d)


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        (ADAPTER_CONFIG, "{not json", "not valid JSON"),
        (ADAPTER_CONFIG, "[1, 2]", "JSON object"),
        (ADAPTER_CONFIG, json.dumps({"peft_type": "PREFIX_TUNING"}), "only LoRA"),
        (ADAPTER_WEIGHTS, "not a safetensors file", "safetensors"),
        (SETTINGS_FILE, json.dumps({"format": "other"}), "not written by"),
    ],
)
def test_corrupt_files_are_refused(
    llama: LoadedModel,
    trained: FinetuneResult,
    tmp_path: Path,
    name: str,
    content: str,
    needle: str,
) -> None:
    d = copy_adapter(trained, tmp_path)
    (d / name).write_text(content)
    with pytest.raises(InputError, match=needle):
        load_tuned(llama, d)


def test_config_fields_we_do_not_make_are_refused(
    llama: LoadedModel, trained: FinetuneResult, tmp_path: Path
) -> None:
    d = copy_adapter(trained, tmp_path)
    cfg = json.loads((d / ADAPTER_CONFIG).read_text())
    (d / ADAPTER_CONFIG).write_text(json.dumps({**cfg, "modules_to_save": ["lm_head"]}))
    with pytest.raises(InputError, match="modules_to_save"):
        load_tuned(llama, d)
    (d / ADAPTER_CONFIG).write_text(json.dumps({**cfg, "r": 100_000}))
    with pytest.raises(InputError, match="LoRA rank"):
        load_tuned(llama, d)


def test_adapter_for_another_model_is_refused(
    qwen2: LoadedModel, trained: FinetuneResult, tmp_path: Path
) -> None:
    # Same shapes (the tiny qwen2 has the llama's), another model: the settings say so.
    with pytest.raises(InputError, match="made for 'tiny-llama'"):
        load_tuned(qwen2, trained.adapter_dir)
    # Without the settings file, the tensors must still fit: rank 4 tensors for a rank-8 config.
    d = copy_adapter(trained, tmp_path)
    (d / SETTINGS_FILE).unlink()
    cfg = json.loads((d / ADAPTER_CONFIG).read_text())
    (d / ADAPTER_CONFIG).write_text(json.dumps({**cfg, "r": 4}))
    with pytest.raises(InputError, match="does not fit"):
        load_tuned(qwen2, d)


def test_adapter_for_another_shape_is_refused(gpt2: LoadedModel, trained: FinetuneResult) -> None:
    with pytest.raises(InputError, match=r"made for 'tiny-llama'.*layers"):
        load_tuned(gpt2, trained.adapter_dir)
