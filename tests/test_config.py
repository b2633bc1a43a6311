"""Settings: defaults, environment overrides, validation, and no work at import."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from persona_explorer.core.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parent.parent


def test_defaults_from_an_empty_environment(tmp_path: Path) -> None:
    s = load_settings({"PERSONA_EXPLORER_DATA": str(tmp_path)})
    assert s.model == ""
    assert s.device == "auto"
    assert s.data_dir == tmp_path
    assert s.library_dir == tmp_path / "vectors"
    assert s.builtin_vectors_dir == REPO / "assets" / "vectors"
    assert s.limits.max_prompt_chars == 4000
    assert s.limits.max_new_tokens == 256
    assert s.limits.max_upload_mb == 20  # a 16 MB vector with its metadata fits
    assert s.limits.max_upload_bytes == 20 * 1024 * 1024
    assert s.trusted_proxy_hops == 0  # no X-Forwarded-For is believed
    assert s.steer_concurrency == 32  # visitors decoding together in the shared batch
    assert s.shared_batch
    assert s.extract_concurrency == 1
    assert (s.server_name, s.server_port) == ("127.0.0.1", 7860)


def test_trusted_proxy_hops_default_to_one_on_a_space_and_can_be_set() -> None:
    assert load_settings({}).trusted_proxy_hops == 0
    assert load_settings({"SPACE_ID": "me/app"}).trusted_proxy_hops == 1
    env = {"SPACE_ID": "me/app", "PERSONA_EXPLORER_TRUSTED_PROXY_HOPS": "2"}
    assert load_settings(env).trusted_proxy_hops == 2
    s = load_settings({"PERSONA_EXPLORER_MAX_PENDING_PER_ADDRESS": "7"})
    assert s.limits.max_pending_per_address == 7
    s = load_settings(
        {"PERSONA_EXPLORER_UPLOAD_QUOTA_MB": "5", "PERSONA_EXPLORER_UPLOAD_TOTAL_MB": "9"}
    )
    assert (s.limits.upload_quota_bytes, s.limits.upload_total_bytes) == (5 * 2**20, 9 * 2**20)
    with pytest.raises(ConfigError, match="trusted_proxy_hops"):
        load_settings({"PERSONA_EXPLORER_TRUSTED_PROXY_HOPS": "-1"})


def test_default_data_dir_is_a_user_data_dir() -> None:
    s = load_settings({})
    assert "persona-explorer" in str(s.data_dir)


def test_every_variable_overrides(tmp_path: Path) -> None:
    env = {
        "PERSONA_EXPLORER_MODEL": "some/model",
        "PERSONA_EXPLORER_DEVICE": "cpu",
        "PERSONA_EXPLORER_DATA": str(tmp_path / "data"),
        "PERSONA_EXPLORER_BUILTIN_VECTORS": str(tmp_path / "builtin"),
        "PERSONA_EXPLORER_MAX_PROMPT_CHARS": "123",
        "PERSONA_EXPLORER_MAX_NEW_TOKENS": "17",
        "PERSONA_EXPLORER_MAX_UPLOAD_MB": "3",
        "PERSONA_EXPLORER_MAX_STRENGTH": "12.5",
        "PERSONA_EXPLORER_DEFAULT_PERSONA": "evil",
        "PERSONA_EXPLORER_STEER_CONCURRENCY": "3",
        "PERSONA_EXPLORER_EXTRACT_CONCURRENCY": "2",
        "PERSONA_EXPLORER_SHARED_BATCH": "0",
        "PERSONA_EXPLORER_MAX_TEMPERATURE": "1.5",
        "PERSONA_EXPLORER_CACHE": str(tmp_path / "cache"),
        "PERSONA_EXPLORER_PERSONA_DATA": str(tmp_path / "personas"),
        "PERSONA_EXPLORER_FAST": "0",
        "PERSONA_EXPLORER_KERNEL": "off",
        "PERSONA_EXPLORER_LOG_LEVEL": "info",
        "GRADIO_SERVER_NAME": "0.0.0.0",
        "GRADIO_SERVER_PORT": "8123",
    }
    s = load_settings(env)
    assert s.model == "some/model"
    assert s.device == "cpu"
    assert s.data_dir == tmp_path / "data"
    assert s.builtin_vectors_dir == tmp_path / "builtin"
    assert s.limits.max_prompt_chars == 123
    assert s.limits.max_new_tokens == 17
    assert s.limits.max_upload_mb == 3
    assert s.limits.max_abs_strength == 12.5
    assert s.default_persona == "evil"
    assert s.limits.max_temperature == 1.5
    assert s.cache_dir == tmp_path / "cache"
    assert s.persona_data_dir == tmp_path / "personas"
    assert (s.fast_decoder, s.decode_kernel) == (False, False)
    assert s.steer_concurrency == 3
    assert not s.shared_batch
    assert s.extract_concurrency == 2
    assert (s.server_name, s.server_port) == ("0.0.0.0", 8123)
    assert s.log_level == "INFO"


def test_blank_values_mean_default(tmp_path: Path) -> None:
    s = load_settings({"PERSONA_EXPLORER_DATA": str(tmp_path), "PERSONA_EXPLORER_MODEL": "  "})
    assert s.model == ""


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PERSONA_EXPLORER_MAX_PROMPT_CHARS", "many"),
        ("PERSONA_EXPLORER_MAX_PROMPT_CHARS", "0"),
        ("PERSONA_EXPLORER_MAX_NEW_TOKENS", "5000"),
        ("PERSONA_EXPLORER_MAX_UPLOAD_MB", "-1"),
        ("PERSONA_EXPLORER_MAX_STRENGTH", "nan"),
        ("PERSONA_EXPLORER_MAX_STRENGTH", "inf"),
        ("PERSONA_EXPLORER_DEVICE", "tpu"),
        ("GRADIO_SERVER_PORT", "99999"),
        ("PERSONA_EXPLORER_STEER_CONCURRENCY", "0"),
        ("PERSONA_EXPLORER_MAX_TEMPERATURE", "-1"),
        ("PERSONA_EXPLORER_FAST", "maybe"),
        ("PERSONA_EXPLORER_LOG_LEVEL", "chatty"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(key: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({key: value, "PERSONA_EXPLORER_DATA": str(tmp_path)})
    message = str(info.value)
    name = key.removeprefix("PERSONA_EXPLORER_").removeprefix("GRADIO_").lower()
    assert key in message or name.split("_")[-1] in message


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.limits.max_new_tokens = 1  # type: ignore[misc]


def test_paths_are_normalised(tmp_path: Path) -> None:
    s = Settings(data_dir=str(tmp_path), builtin_vectors_dir=str(tmp_path / "b"))  # type: ignore[arg-type]
    assert isinstance(s.data_dir, Path) and isinstance(s.builtin_vectors_dir, Path)


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PERSONA_EXPLORER_DATA", str(tmp_path))
    monkeypatch.setenv("PERSONA_EXPLORER_MAX_NEW_TOKENS", "9")
    s = load_settings()
    assert s.data_dir == tmp_path and s.limits.max_new_tokens == 9


def test_importing_config_does_no_work() -> None:
    """No model, no torch, no gradio, no directories: importing settings must be instant."""
    code = (
        "import sys, persona_explorer.core.config as c\n"
        "heavy = [m for m in ('torch', 'gradio', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_config_is_the_only_module_that_reads_the_environment() -> None:
    """Settings own every switch: no other module may read PERSONA_EXPLORER_* variables."""
    reading = re.compile(r"os\.environ\.get|os\.environ\[|os\.getenv")
    readers = []
    for path in (REPO / "persona_explorer").rglob("*.py"):
        if path.name != "config.py" and reading.search(path.read_text()):
            readers.append(str(path.relative_to(REPO)))
    assert readers == []


def test_logprob_scoring_is_off_on_a_public_server_unless_asked() -> None:
    assert load_settings({}).score_logprobs
    assert not load_settings({"SPACE_ID": "me/app"}).score_logprobs
    assert not load_settings({"PERSONA_EXPLORER_PUBLIC": "1"}).score_logprobs
    assert load_settings(
        {"PERSONA_EXPLORER_PUBLIC": "1", "PERSONA_EXPLORER_LOGPROBS": "1"}
    ).score_logprobs
    assert not load_settings({"PERSONA_EXPLORER_LOGPROBS": "0"}).score_logprobs
