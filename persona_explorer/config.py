"""App settings: one frozen dataclass, read from the environment when asked (never at import).

Every limit the web app enforces on user input lives here, so a deployment can tighten or loosen
it with an environment variable instead of a code change:

=====================================  ==========================================  ===========
variable                               meaning                                     default
=====================================  ==========================================  ===========
PERSONA_EXPLORER_MODEL                 HF id or local path ("" = embedded model)   ""
PERSONA_EXPLORER_DEVICE                auto, cpu or cuda                           auto
PERSONA_EXPLORER_DATA                  the saved vector library lives here         user data dir
PERSONA_EXPLORER_BUILTIN_VECTORS       shipped vectors (read-only)                 assets/vectors
PERSONA_EXPLORER_MAX_PROMPT_CHARS      longest prompt / system prompt accepted     4000
PERSONA_EXPLORER_MAX_NEW_TOKENS        most tokens one generation may ask for      256
PERSONA_EXPLORER_MAX_UPLOAD_MB         largest vector file accepted                64
PERSONA_EXPLORER_MAX_STRENGTH          largest |strength| accepted                 100
PERSONA_EXPLORER_DEFAULT_PERSONA       persona selected when the page opens        pirate
PERSONA_EXPLORER_STEER_CONCURRENCY     steering requests run at once               2
PERSONA_EXPLORER_EXTRACT_CONCURRENCY   extractions run at once                     1
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT  where ``python app.py`` listens           127.0.0.1:7860
=====================================  ==========================================  ===========
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ConfigError", "Settings", "default_data_dir", "load_settings"]

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "PERSONA_EXPLORER_"


class ConfigError(ValueError):
    """An environment variable holds a value the app cannot use; the message names it."""


def default_data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("persona-explorer"))


@dataclass(frozen=True)
class Settings:
    model: str = ""  # "" = the embedded SmolLM2-135M-Instruct
    device: str = "auto"
    data_dir: Path = field(default_factory=default_data_dir)
    builtin_vectors_dir: Path = REPO_ROOT / "assets" / "vectors"
    max_prompt_chars: int = 4000
    max_new_tokens: int = 256
    max_upload_mb: int = 64
    max_abs_strength: float = 100.0
    default_persona: str = "pirate"
    steer_concurrency: int = 2
    extract_concurrency: int = 1
    server_name: str = "127.0.0.1"
    server_port: int = 7860

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        object.__setattr__(self, "builtin_vectors_dir", Path(self.builtin_vectors_dir).expanduser())
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda, not {self.device!r}")
        for name, low, high in (
            ("max_prompt_chars", 1, 1_000_000),
            ("max_new_tokens", 1, 4096),
            ("max_upload_mb", 1, 1024),
            ("steer_concurrency", 1, 64),
            ("extract_concurrency", 1, 16),
            ("server_port", 1, 65535),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer in [{low}, {high}], not {value!r}")
        if not (math.isfinite(self.max_abs_strength) and 0 < self.max_abs_strength <= 1000):
            raise ConfigError(f"max_abs_strength must be in (0, 1000], not {self.max_abs_strength}")

    @property
    def library_dir(self) -> Path:
        return self.data_dir / "vectors"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not an integer") from None


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a number") from None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Defaults overridden by ``PERSONA_EXPLORER_*`` (and ``GRADIO_SERVER_*``) variables."""
    env = os.environ if env is None else env
    d = Settings.__dataclass_fields__

    def text(key: str, default: str) -> str:
        return env.get(key, "").strip() or default

    data = env.get(ENV_PREFIX + "DATA", "").strip()
    builtin = env.get(ENV_PREFIX + "BUILTIN_VECTORS", "").strip()
    return Settings(
        model=text(ENV_PREFIX + "MODEL", d["model"].default),
        device=text(ENV_PREFIX + "DEVICE", d["device"].default),
        data_dir=Path(data) if data else default_data_dir(),
        builtin_vectors_dir=Path(builtin) if builtin else d["builtin_vectors_dir"].default,
        max_prompt_chars=_int(env, ENV_PREFIX + "MAX_PROMPT_CHARS", d["max_prompt_chars"].default),
        max_new_tokens=_int(env, ENV_PREFIX + "MAX_NEW_TOKENS", d["max_new_tokens"].default),
        max_upload_mb=_int(env, ENV_PREFIX + "MAX_UPLOAD_MB", d["max_upload_mb"].default),
        max_abs_strength=_float(env, ENV_PREFIX + "MAX_STRENGTH", d["max_abs_strength"].default),
        default_persona=text(ENV_PREFIX + "DEFAULT_PERSONA", d["default_persona"].default),
        steer_concurrency=_int(
            env, ENV_PREFIX + "STEER_CONCURRENCY", d["steer_concurrency"].default
        ),
        extract_concurrency=_int(
            env, ENV_PREFIX + "EXTRACT_CONCURRENCY", d["extract_concurrency"].default
        ),
        server_name=text("GRADIO_SERVER_NAME", d["server_name"].default),
        server_port=_int(env, "GRADIO_SERVER_PORT", d["server_port"].default),
    )
