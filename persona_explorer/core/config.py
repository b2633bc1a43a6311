"""App settings: one frozen dataclass, read from the environment when asked (never at import).

This is the only module that reads the environment. The optional judge's five variables
(``PERSONA_EXPLORER_JUDGE_*``) and its API key are handed over raw (:func:`judge_environment`,
:func:`secret`) to :meth:`.judge.JudgeConfig.from_env`, which checks them: they name an outside
service and a secret, and the key is read when a request is sent, never kept in a setting.
Everything else a deployment may tune lives here: where things are, how the engine runs, and
(in :class:`~.limits.Limits`) every limit on user input:

=====================================  ==========================================  ===========
variable                               meaning                                     default
=====================================  ==========================================  ===========
PERSONA_EXPLORER_MODEL                 HF id or local path ("" = embedded model)   ""
PERSONA_EXPLORER_ADAPTER               a fine-tuned LoRA adapter folder: the app   none
                                       runs on the tuned model (``--adapter``)
PERSONA_EXPLORER_DEVICE                auto, cpu or cuda                           auto
PERSONA_EXPLORER_DATA                  the saved vector library lives here         user data dir
PERSONA_EXPLORER_CACHE                 dequantized model, replays, answers cached  user cache dir
                                       for screening, sweep checkpoints
PERSONA_EXPLORER_BUILTIN_VECTORS       shipped vectors (read-only)                 assets/vectors
PERSONA_EXPLORER_PERSONA_DATA          trait / role definitions                    assets/personas
PERSONA_EXPLORER_FAST                  0 = generic HF decoder for every model      1
PERSONA_EXPLORER_KERNEL                0 = no compiled CPU decode kernel           1
PERSONA_EXPLORER_MAX_PROMPT_CHARS      longest prompt / system prompt accepted     4000
PERSONA_EXPLORER_MAX_NEW_TOKENS        most tokens one generation may ask for      256
PERSONA_EXPLORER_MAX_UPLOAD_MB         largest file accepted (a vector file, the   20
                                       largest legitimate upload, fits)
PERSONA_EXPLORER_UPLOAD_QUOTA_MB       bytes one address may upload in an hour     200
PERSONA_EXPLORER_UPLOAD_TOTAL_MB       bytes in the upload folder, all together    2048
PERSONA_EXPLORER_MAX_STRENGTH          largest |strength| accepted                 100
PERSONA_EXPLORER_MAX_TEMPERATURE       largest sampling temperature accepted       2
PERSONA_EXPLORER_MAX_PROMPT_TOKENS     longest templated prompt, in tokens         2048
PERSONA_EXPLORER_MAX_VECTOR_MB         largest vector (file or library entry)      16
PERSONA_EXPLORER_LIBRARY_MAX_VECTORS   vectors in the shared library               500
PERSONA_EXPLORER_LIBRARY_MAX_PER_OWNER vectors one visitor may save                50
PERSONA_EXPLORER_LIBRARY_MAX_TOTAL_MB  bytes of the whole library                  512
PERSONA_EXPLORER_MAX_SESSION_VECTORS   vectors kept in one browser session         24
PERSONA_EXPLORER_MAX_PENDING           queued or running jobs per visitor          3
PERSONA_EXPLORER_MAX_PENDING_PER_ADDRESS  ... per network address (a class behind   48
                                       one school address: many visitors)
PERSONA_EXPLORER_TRUSTED_PROXY_HOPS    proxies in front of the app that append to  1 on a HF
                                       X-Forwarded-For; 0: the connection's peer   Space, else 0
                                       is the visitor's address
PERSONA_EXPLORER_JOB_TIMEOUT_S         a job running longer is stopped             600
PERSONA_EXPLORER_PUBLIC                public mode (on by itself on a HF Space)    0
PERSONA_EXPLORER_DEFAULT_PERSONA       persona selected when the page opens        pirate
PERSONA_EXPLORER_STEER_CONCURRENCY     steering requests run at once               2
PERSONA_EXPLORER_EXTRACT_CONCURRENCY   extractions run at once                     1
PERSONA_EXPLORER_JUDGE_URL             optional sweep judge (OpenAI-compatible)    off
PERSONA_EXPLORER_JUDGE_MODEL           its model name                              off
PERSONA_EXPLORER_JUDGE_KEY_ENV         the *name* of the variable with its key     none
PERSONA_EXPLORER_JUDGE_TIMEOUT_S       seconds one judge request may take          60
PERSONA_EXPLORER_JUDGE_CONCURRENCY     judge requests in flight at once            4
PERSONA_EXPLORER_LLAMA_BATCHED_BENCH   llama.cpp's ``llama-batched-bench`` that    the build of
                                       ``bench`` compares against                  llama_build.py
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT  where ``python app.py`` listens           127.0.0.1:7860
=====================================  ==========================================  ===========

``python app.py --adapter DIR`` sets the adapter too (:func:`app_arguments`; the flag wins over
the variable): the web app then runs on the model fine-tuned with that adapter (a folder
written by ``finetune`` or the Train tab), every tab included.

``TRUSTED_PROXY_HOPS``: each proxy in front of the app appends the address it saw to
``X-Forwarded-For``, so with N proxies the visitor's address is the N-th entry from the right;
entries further left were written by the client and are never trusted. On a Hugging Face Space
the app sits behind one such proxy (the Space's own; the app's peer is an internal 10.x address
shared by every visitor), hence 1 when ``SPACE_ID`` is set. Elsewhere the default 0 trusts no
header: set it to the number of your own reverse proxies. (uvicorn itself, Gradio's server,
already reads the header when the peer is 127.0.0.1: a local proxy counts as one hop.)

Imports: :mod:`.errors` and :mod:`.limits` only (no torch: the CLI parser reads settings too).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from persona_explorer.core.errors import ConfigError
from persona_explorer.core.limits import Limits

__all__ = [
    "ConfigError",
    "Settings",
    "app_arguments",
    "default_cache_dir",
    "default_data_dir",
    "load_settings",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS_DIR = REPO_ROOT / "assets"
ENV_PREFIX = "PERSONA_EXPLORER_"


def judge_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``PERSONA_EXPLORER_JUDGE_*`` variables that are set, unchecked (the judge checks)."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIX + "JUDGE_")}


def secret(name: str) -> str:
    """The value of the environment variable ``name`` ("" when unset): the judge's API key."""
    return os.environ.get(name, "").strip()


def default_data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("persona-explorer"))


def default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("persona-explorer"))


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Settings:
    model: str = ""  # "" = the embedded SmolLM2-135M-Instruct
    adapter: Path | None = None  # a LoRA adapter folder: the app runs on the tuned model
    device: str = "auto"
    data_dir: Path = field(default_factory=default_data_dir)
    cache_dir: Path = field(default_factory=default_cache_dir)
    builtin_vectors_dir: Path = ASSETS_DIR / "vectors"
    persona_data_dir: Path = ASSETS_DIR / "personas"
    fast_decoder: bool = True  # the hand-written Llama-family decoder where it applies
    decode_kernel: bool = True  # its compiled matrix-vector kernel on CPU (AVX2, or AVX-512F)
    # Visitors' short generations decode together, one step for all (steering.shared_batch).
    shared_batch: bool = True
    # Steer scores each answer's log-probabilities under both columns' models after generating
    # (a teacher-forced pass, 30-45 % more compute per run): on by default, off on a public
    # server, where a class's thirty runs would queue behind thirty scoring passes.
    score_logprobs: bool = True
    limits: Limits = field(default_factory=Limits)
    # Public mode (a Space, or PERSONA_EXPLORER_PUBLIC=1): anonymous visitors; the shared
    # library is read-only for them (their own saves stay in their browser session).
    public: bool = False
    default_persona: str = "pirate"
    # Generations running at once: with the shared batch, how many visitors decode together.
    steer_concurrency: int = 32
    extract_concurrency: int = 1
    server_name: str = "127.0.0.1"
    server_port: int = 7860
    # Proxies in front of the app that append to X-Forwarded-For (see the module docstring).
    trusted_proxy_hops: int = 0
    # llama.cpp's llama-batched-bench for the benchmark; None: the one scripts/llama_build.py
    # builds into the user cache directory (see bench_llama.find_batched_bench).
    llama_batched_bench: Path | None = None
    # The app's log (stderr): INFO adds a line per busy spell of the shared batch.
    log_level: str = "WARNING"
    # How far the web layer's threads yield the CPU to the shared batch's engine thread (Linux
    # nice steps; 0: no change). See engine.threads.
    web_nice: int = 5

    def __post_init__(self) -> None:
        for name in ("data_dir", "cache_dir", "builtin_vectors_dir", "persona_data_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)).expanduser())
        for name in ("adapter", "llama_batched_bench"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)).expanduser())
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"log level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}"
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda, not {self.device!r}")
        for name, low, high in (
            ("steer_concurrency", 1, 64),
            ("extract_concurrency", 1, 16),
            ("server_port", 1, 65535),
            ("trusted_proxy_hops", 0, 8),
            ("web_nice", 0, 19),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer in [{low}, {high}], not {value!r}")

    @property
    def library_dir(self) -> Path:
        return self.data_dir / "vectors"


def _raw(env: Mapping[str, str], key: str) -> str:
    return env.get(key, "").strip()


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = _raw(env, key)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not an integer") from None


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = _raw(env, key)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a number") from None


def _switch(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = _raw(env, key).lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}={raw!r} is not a switch: use 1 or 0")


def app_arguments(argv: Sequence[str]) -> dict[str, str]:
    """The web app's own command-line flags (``python app.py --adapter DIR``), as overrides of
    the variables they stand for; flags it does not know are left to others (``gradio``)."""
    parser = argparse.ArgumentParser(prog="python app.py", add_help=False)
    parser.add_argument("--adapter", default=None)
    known, _ = parser.parse_known_args(list(argv))
    out: dict[str, str] = {}
    if known.adapter is not None:
        out[ENV_PREFIX + "ADAPTER"] = known.adapter
    return out


def load_settings(
    env: Mapping[str, str] | None = None, argv: Sequence[str] | None = None
) -> Settings:
    """Defaults overridden by ``PERSONA_EXPLORER_*`` (and ``GRADIO_SERVER_*``) variables, and
    those by the app's flags in ``argv`` (:func:`app_arguments`)."""
    env = os.environ if env is None else env
    if argv:
        env = {**env, **app_arguments(argv)}
    base = Settings(data_dir=Path(), cache_dir=Path())  # the defaults, without a data dir
    lim = base.limits
    p = ENV_PREFIX

    def text(key: str, default: str) -> str:
        return _raw(env, key) or default

    def path(key: str, default: Path) -> Path:
        raw = _raw(env, p + key)
        return Path(raw) if raw else default

    adapter = _raw(env, p + "ADAPTER")
    batched_bench = _raw(env, p + "LLAMA_BATCHED_BENCH")

    limits = Limits(
        max_prompt_chars=_int(env, p + "MAX_PROMPT_CHARS", lim.max_prompt_chars),
        max_new_tokens=_int(env, p + "MAX_NEW_TOKENS", lim.max_new_tokens),
        max_upload_mb=_int(env, p + "MAX_UPLOAD_MB", lim.max_upload_mb),
        max_abs_strength=_float(env, p + "MAX_STRENGTH", lim.max_abs_strength),
        max_temperature=_float(env, p + "MAX_TEMPERATURE", lim.max_temperature),
        max_prompt_tokens=_int(env, p + "MAX_PROMPT_TOKENS", lim.max_prompt_tokens),
        max_vector_mb=_int(env, p + "MAX_VECTOR_MB", lim.max_vector_mb),
        library_max_vectors=_int(env, p + "LIBRARY_MAX_VECTORS", lim.library_max_vectors),
        library_max_per_owner=_int(env, p + "LIBRARY_MAX_PER_OWNER", lim.library_max_per_owner),
        library_max_total_mb=_int(env, p + "LIBRARY_MAX_TOTAL_MB", lim.library_max_total_mb),
        max_session_vectors=_int(env, p + "MAX_SESSION_VECTORS", lim.max_session_vectors),
        max_pending_per_visitor=_int(env, p + "MAX_PENDING", lim.max_pending_per_visitor),
        max_pending_per_address=_int(
            env, p + "MAX_PENDING_PER_ADDRESS", lim.max_pending_per_address
        ),
        upload_quota_mb=_int(env, p + "UPLOAD_QUOTA_MB", lim.upload_quota_mb),
        upload_total_mb=_int(env, p + "UPLOAD_TOTAL_MB", lim.upload_total_mb),
        job_timeout_s=_int(env, p + "JOB_TIMEOUT_S", lim.job_timeout_s),
    )
    # Hugging Face Spaces set SPACE_ID: a Space is public unless told otherwise.
    public = _switch(env, p + "PUBLIC", bool(_raw(env, "SPACE_ID")))
    return Settings(
        model=text(p + "MODEL", base.model),
        adapter=Path(adapter) if adapter else None,
        device=text(p + "DEVICE", base.device),
        data_dir=path("DATA", default_data_dir()),
        cache_dir=path("CACHE", default_cache_dir()),
        builtin_vectors_dir=path("BUILTIN_VECTORS", base.builtin_vectors_dir),
        persona_data_dir=path("PERSONA_DATA", base.persona_data_dir),
        fast_decoder=_switch(env, p + "FAST", base.fast_decoder),
        decode_kernel=_switch(env, p + "KERNEL", base.decode_kernel),
        shared_batch=_switch(env, p + "SHARED_BATCH", base.shared_batch),
        score_logprobs=_switch(env, p + "LOGPROBS", base.score_logprobs and not public),
        limits=limits,
        public=public,
        default_persona=text(p + "DEFAULT_PERSONA", base.default_persona),
        steer_concurrency=_int(env, p + "STEER_CONCURRENCY", base.steer_concurrency),
        extract_concurrency=_int(env, p + "EXTRACT_CONCURRENCY", base.extract_concurrency),
        server_name=text("GRADIO_SERVER_NAME", base.server_name),
        server_port=_int(env, "GRADIO_SERVER_PORT", base.server_port),
        # A Space: one proxy (Hugging Face's) appends the visitor's address.
        trusted_proxy_hops=_int(
            env, p + "TRUSTED_PROXY_HOPS", 1 if _raw(env, "SPACE_ID") else base.trusted_proxy_hops
        ),
        llama_batched_bench=Path(batched_bench) if batched_bench else None,
        log_level=text(p + "LOG_LEVEL", base.log_level).upper(),
        web_nice=_int(env, p + "WEB_NICE", base.web_nice),
    )


def app_version() -> str:
    """The installed package's version, else the one in the checkout's ``pyproject.toml``."""
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version("persona-explorer")
    with contextlib.suppress(OSError):
        found = re.search(
            r'(?m)^version\s*=\s*"([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text()
        )
        if found:
            return found[1]
    return "unknown"
