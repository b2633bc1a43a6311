"""An optional judge model: scores an answer with a trait's ``eval_prompt`` (0-100).

The sweep's own measurements (the trait projection read back by the unsteered model, perplexity
and repetition) need no second model. Whoever runs the app may add a judge on top: any
OpenAI-compatible ``/chat/completions`` endpoint (a hosted API, vLLM, llama.cpp's
``llama-server``). It scores each output with the persona's rubric, the way the persona vectors
paper does: one generated token with its top 20 logprobs; the score is the probability-weighted
mean of the tokens that are whole numbers on the rubric's scale, or no score when numbers hold
less than a quarter of the probability (:func:`aggregate_logprobs`). An endpoint that returns no
logprobs is asked for a short text answer instead (:func:`parse_text_score`).

The endpoint comes from the environment of the process (:meth:`JudgeConfig.from_env`), never from
a web visitor: a URL typed into the page would let anyone make the server send requests to any
address it can reach (its own loopback services, a cloud metadata endpoint). The API key is named
indirectly (``PERSONA_EXPLORER_JUDGE_KEY_ENV`` holds the *name* of the variable that holds it), is
read when a request is sent, and is never stored, logged or shown.

=====================================  ==============================================  =======
variable                               meaning                                         default
=====================================  ==============================================  =======
PERSONA_EXPLORER_JUDGE_URL             base URL of the API, e.g. http://host:8080/v1   (off)
PERSONA_EXPLORER_JUDGE_MODEL           model name sent with each request               (off)
PERSONA_EXPLORER_JUDGE_KEY_ENV         name of the variable holding the API key        none
PERSONA_EXPLORER_JUDGE_TIMEOUT_S       seconds one request may take                    60
PERSONA_EXPLORER_JUDGE_CONCURRENCY     requests in flight at once                      4
=====================================  ==============================================  =======

Imports: ``core.errors`` and ``core.limits`` only, plus ``httpx`` (no torch).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import httpx

from persona_explorer.core.config import judge_environment, secret
from persona_explorer.core.errors import ConfigError, InputError, UserError
from persona_explorer.core.limits import DEFAULT_LIMITS, check_text

__all__ = [
    "Judge",
    "JudgeConfig",
    "JudgeError",
    "JudgeItem",
    "JudgeScore",
    "aggregate_logprobs",
    "fill_eval_prompt",
    "judge_status",
    "parse_text_score",
    "rubric_scale",
]

ENV_URL = "PERSONA_EXPLORER_JUDGE_URL"
ENV_MODEL = "PERSONA_EXPLORER_JUDGE_MODEL"
ENV_KEY_ENV = "PERSONA_EXPLORER_JUDGE_KEY_ENV"
ENV_TIMEOUT = "PERSONA_EXPLORER_JUDGE_TIMEOUT_S"
ENV_CONCURRENCY = "PERSONA_EXPLORER_JUDGE_CONCURRENCY"

# persona_vectors' threshold: below it the judge did not answer with a number (a refusal, or a
# model that ignores the rubric), and a weighted mean of the scraps would be noise.
MIN_NUMBER_MASS = 0.25
TOP_LOGPROBS = 20
# A score is a few tokens; 8 leaves room for "Score: 85" and whitespace.
TEXT_MAX_TOKENS = 8
# A one-token reply with 20 alternatives is a few kB; anything far larger is not an answer.
MAX_RESPONSE_BYTES = 1024 * 1024
MAX_EVAL_PROMPT_CHARS = 100_000
MAX_MODEL_CHARS = 200
_MAX_CONCURRENCY = 64
_MAX_TIMEOUT_S = 3600.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SLOT = re.compile(r"\{(question|answer)\}")
_SCALE = re.compile(r"between\s+0\s+and\s+(\d{1,3})\b", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d+)?)(?![\d.])")

ProgressFn = Callable[[float, str], None]
Method = Literal["logprobs", "text"]


class JudgeError(UserError, RuntimeError):
    """The judge endpoint could not be used (down, refused the request, answered nonsense); the
    message names the endpoint and what to check."""


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge lives. ``key_env`` is the name of the variable holding the API key."""

    url: str
    model: str
    key_env: str | None = None
    timeout_s: float = 60.0
    max_concurrency: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", _check_url(self.url))
        model = self.model.strip() if isinstance(self.model, str) else ""
        if not model or len(model) > MAX_MODEL_CHARS:
            raise ConfigError(
                f"{ENV_MODEL} must name the judge model (1-{MAX_MODEL_CHARS} characters)."
            )
        object.__setattr__(self, "model", model)
        if self.key_env is not None and not _ENV_NAME.fullmatch(self.key_env):
            raise ConfigError(
                f"{ENV_KEY_ENV} must be the name of an environment variable (letters, digits, "
                "underscores), not the key itself."
            )
        timeout = self.timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ConfigError(f"{ENV_TIMEOUT} must be a number of seconds.")
        if not (math.isfinite(timeout) and 0 < timeout <= _MAX_TIMEOUT_S):
            raise ConfigError(f"{ENV_TIMEOUT} must be in (0, {_MAX_TIMEOUT_S:g}], not {timeout}.")
        conc = self.max_concurrency
        if isinstance(conc, bool) or not isinstance(conc, int) or not 1 <= conc <= _MAX_CONCURRENCY:
            raise ConfigError(f"{ENV_CONCURRENCY} must be an integer in [1, {_MAX_CONCURRENCY}].")

    @property
    def host(self) -> str:
        """``host[:port]`` of the endpoint, for display (the URL never carries credentials)."""
        return urlsplit(self.url).netloc

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> JudgeConfig | None:
        """The judge the environment configures, or None when URL or model is unset (judge off).

        Raises ConfigError for a set but unusable value, including a key variable that is named
        but empty, so a deployment learns at start-up rather than at the first score.
        ``environ`` (tests) stands in for the process environment, key variable included.
        """
        given = environ
        get_secret = secret if given is None else (lambda n: given.get(n, "").strip())
        environ = judge_environment(given)
        url = environ.get(ENV_URL, "").strip()
        model = environ.get(ENV_MODEL, "").strip()
        if not url and not model:
            return None
        if not url or not model:
            missing = ENV_URL if not url else ENV_MODEL
            raise ConfigError(
                f"The judge needs both {ENV_URL} and {ENV_MODEL}; {missing} is unset."
            )
        key_env = environ.get(ENV_KEY_ENV, "").strip() or None
        cfg = cls(
            url=url,
            model=model,
            key_env=key_env,
            timeout_s=_env_number(environ, ENV_TIMEOUT, cls.timeout_s, float),
            max_concurrency=_env_number(environ, ENV_CONCURRENCY, cls.max_concurrency, int),
        )
        if key_env is not None and not get_secret(key_env):
            raise ConfigError(f"{ENV_KEY_ENV} names {key_env}, but {key_env} is unset or empty.")
        return cfg


def _env_number(environ: Mapping[str, str], key: str, default: Any, kind: type) -> Any:
    raw = environ.get(key, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw[:40]!r} is not a number.") from None


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{ENV_URL} is empty.")
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"{ENV_URL} is not a valid URL.") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{ENV_URL} must start with http:// or https:// (e.g. http://host/v1).")
    if not parts.hostname:
        raise ConfigError(f"{ENV_URL} has no host name.")
    if parts.username is not None or parts.password is not None:
        # It would be shown in the status line and in error messages.
        raise ConfigError(
            f"{ENV_URL} must not contain a user name or password: put the key in an environment "
            f"variable and name it in {ENV_KEY_ENV}."
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"{ENV_URL} must be a base URL without ?query or #fragment.")
    return url.rstrip("/")


def judge_status(cfg: JudgeConfig | None) -> str:
    """One line for the UI saying whether outputs are also scored by a judge model."""
    if cfg is None:
        return (
            f"Judge off — set {ENV_URL} and {ENV_MODEL} to score outputs with a judge model "
            "(any OpenAI-compatible endpoint)."
        )
    return f"Judge on: {cfg.model} at {cfg.host}"


# --------------------------------------------------------------------------- pure scoring


def rubric_scale(eval_prompt: str) -> int:
    """The top of the rubric's scale: 100 for the trait rubrics, 3 for the role rubrics.

    Both shipped formats end with "Respond with a number between 0 and N"; a rubric that says
    nothing of the kind is taken as 0-100, the persona vectors convention.
    """
    found = _SCALE.findall(eval_prompt)
    top = int(found[-1]) if found else 100
    return top if 1 <= top <= 100 else 100


def _as_score(token: str, top: int) -> int | None:
    text = token.strip()
    # isdecimal() alone would accept other scripts' digits; a judge's "٥" is not a score.
    if not text or not text.isascii() or not text.isdecimal() or len(text) > 3:
        return None
    value = int(text)
    return value if value <= top else None


def aggregate_logprobs(
    top_logprobs: Mapping[str, float] | Iterable[tuple[str, float]], top: int = 100
) -> float | None:
    """persona_vectors' rule on the first generated token's alternatives (token -> logprob).

    Tokens that are whole numbers in ``[0, top]`` are kept, weighted by their probability; the
    result is the weighted mean rescaled to 0-100, or None when the kept probability is below
    :data:`MIN_NUMBER_MASS`. Non-finite or positive logprobs (a broken endpoint) are ignored.
    """
    pairs = top_logprobs.items() if isinstance(top_logprobs, Mapping) else top_logprobs
    mass = 0.0
    weighted = 0.0
    for token, logprob in pairs:
        value = _as_score(token, top) if isinstance(token, str) else None
        if value is None or not isinstance(logprob, int | float):
            continue
        if not math.isfinite(logprob) or logprob > 1e-6:
            continue
        p = math.exp(logprob)
        mass += p
        weighted += p * value
    if mass < MIN_NUMBER_MASS:
        return None
    return 100.0 * weighted / mass / top


def parse_text_score(text: str, top: int = 100) -> float | None:
    """The first number of a judge's text reply, rescaled to 0-100; None for REFUSAL, for no
    number, or for one outside ``[0, top]``."""
    if not isinstance(text, str) or "REFUSAL" in text.upper():
        return None
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    if not 0 <= value <= top:
        return None
    return 100.0 * value / top


def fill_eval_prompt(eval_prompt: str, question: str, answer: str) -> str:
    """The rubric with its ``{question}`` and ``{answer}`` slots filled.

    One pass over the template: braces in the user's text are left alone (``str.format`` would
    fail on them), and a question that contains ``{answer}`` is not filled in a second time.
    """
    eval_prompt = check_text(eval_prompt, "judge rubric", MAX_EVAL_PROMPT_CHARS, required=True)
    if "{answer}" not in eval_prompt:
        raise InputError("The judge rubric has no {answer} slot for the output to score.")
    question = check_text(question, "question", DEFAULT_LIMITS.max_field_chars, required=False)
    answer = check_text(answer, "answer", DEFAULT_LIMITS.max_field_chars, required=False)
    values = {"question": question, "answer": answer}
    return _SLOT.sub(lambda m: values[m.group(1)], eval_prompt)


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class JudgeScore:
    """A judge's verdict: ``value`` on 0-100 (None: no usable number, ``detail`` says why)."""

    value: float | None
    method: Method
    detail: str


class JudgeItem(NamedTuple):
    eval_prompt: str
    question: str
    answer: str


class Judge:
    """A client of one judge endpoint; thread-safe. Use as a context manager, or call close()."""

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self._client = httpx.Client(
            timeout=httpx.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=cfg.max_concurrency),
            follow_redirects=False,  # the configured address is the only one contacted
        )

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.cfg.key_env:
            key = secret(self.cfg.key_env)
            if not key:
                raise JudgeError(
                    f"The judge's API key variable {self.cfg.key_env} is unset or empty."
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(
        self, prompt: str, *, max_tokens: int, logprobs: bool
    ) -> tuple[int, dict[str, Any] | None]:
        """One ``/chat/completions`` request with ``prompt`` as the user message, greedy.

        Returns the HTTP status and, for a 2xx answer, the decoded JSON object. Raises JudgeError
        when the endpoint cannot be reached, times out, or answers with something that is not a
        JSON object of bounded size.
        """
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "seed": 0,
        }
        if logprobs:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        where = f"the judge at {self.cfg.host}"
        try:
            with self._client.stream(
                "POST", f"{self.cfg.url}/chat/completions", json=body, headers=self._headers()
            ) as resp:
                raw = bytearray()
                for chunk in resp.iter_bytes():
                    raw += chunk
                    if len(raw) > MAX_RESPONSE_BYTES:
                        raise JudgeError(
                            f"{where} sent more than {MAX_RESPONSE_BYTES // 1024} kB for one "
                            "score; is the URL an OpenAI-compatible API?"
                        )
                status = resp.status_code
        except httpx.TimeoutException:
            raise JudgeError(
                f"{where} did not answer within {self.cfg.timeout_s:g} s "
                f"(raise {ENV_TIMEOUT} or use a faster judge)."
            ) from None
        except httpx.ConnectError as exc:
            raise JudgeError(
                f"Cannot connect to {where} ({_short(exc)}): is the server running, and is "
                f"{ENV_URL} right?"
            ) from None
        except httpx.HTTPError as exc:
            raise JudgeError(f"The request to {where} failed: {_short(exc)}.") from None
        if not 200 <= status < 300:
            return status, None
        try:
            data = json.loads(bytes(raw))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise JudgeError(f"{where} answered with something that is not JSON.") from None
        if not isinstance(data, dict):
            raise JudgeError(f"{where} answered with JSON that is not an object.")
        return status, data

    def _raise_for_status(self, status: int) -> None:
        where = f"the judge at {self.cfg.host}"
        if status in (401, 403):
            hint = (
                f"check the key in {self.cfg.key_env}"
                if self.cfg.key_env
                else (f"set {ENV_KEY_ENV} to the name of the variable holding the API key")
            )
            raise JudgeError(f"{where} refused the request (HTTP {status}): {hint}.")
        if status == 404:
            raise JudgeError(
                f"{where} has no /chat/completions (HTTP 404): {ENV_URL} should be the API's "
                "base URL, usually ending in /v1, and the model name must exist there."
            )
        if status == 429:
            raise JudgeError(f"{where} is rate-limiting (HTTP 429): lower {ENV_CONCURRENCY}.")
        raise JudgeError(f"{where} answered HTTP {status}.")

    def score(self, eval_prompt: str, question: str, answer: str) -> JudgeScore:
        """Score ``answer`` to ``question`` with the rubric ``eval_prompt`` (0-100)."""
        prompt = fill_eval_prompt(eval_prompt, question, answer)
        top = rubric_scale(eval_prompt)
        status, data = self.complete(prompt, max_tokens=1, logprobs=True)
        fallback = "the endpoint sent no logprobs"
        if data is None:
            if status not in (400, 422):
                self._raise_for_status(status)
            # Some endpoints reject the logprobs fields outright; a text answer still works.
            fallback = f"the endpoint refused logprobs (HTTP {status})"
        else:
            alternatives = _first_top_logprobs(data)
            if alternatives is not None:
                return _logprob_score(alternatives, top)
        status, data = self.complete(prompt, max_tokens=TEXT_MAX_TOKENS, logprobs=False)
        if data is None:
            self._raise_for_status(status)
        text = _message_text(data)
        if text is None:
            raise JudgeError(
                f"The judge at {self.cfg.host} answered without choices[0].message.content; "
                "is it an OpenAI-compatible chat API?"
            )
        value = parse_text_score(text, top)
        shown = " ".join(text.split())[:40]
        why = "a score" if value is not None else "no score"
        return JudgeScore(value, "text", f"{fallback}; the reply {shown!r} gives {why}")

    def score_many(
        self,
        items: Sequence[JudgeItem | tuple[str, str, str]],
        progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[JudgeScore | None]:
        """Score every item, ``max_concurrency`` requests at a time, in the items' order.

        An entry is None where ``should_stop`` turned true before the item was sent. The first
        JudgeError stops the rest (what fails for one answer almost always fails for all).
        """
        n = len(items)
        results: list[JudgeScore | None] = [None] * n
        if n == 0:
            return results
        width = self.cfg.max_concurrency
        done = 0
        next_index = 0
        pending: dict[Future[JudgeScore], int] = {}
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="judge") as pool:
            while next_index < n or pending:
                stopped = should_stop is not None and should_stop()
                while next_index < n and len(pending) < width and not stopped:
                    item = JudgeItem(*items[next_index])
                    pending[pool.submit(self.score, *item)] = next_index
                    next_index += 1
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = pending.pop(future)
                    try:
                        results[index] = future.result()
                    except BaseException:
                        for other in pending:
                            other.cancel()
                        raise
                    done += 1
                    if progress is not None:
                        progress(done / n, f"Judged {done} of {n}")
        return results


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:120]


def _first_top_logprobs(data: Mapping[str, Any]) -> list[tuple[str, float]] | None:
    """``choices[0].logprobs.content[0].top_logprobs`` as (token, logprob) pairs, if present."""
    try:
        first = data["choices"][0]["logprobs"]["content"][0]
        alternatives = first["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(alternatives, list) or not alternatives:
        return None
    pairs = []
    for alt in alternatives[: TOP_LOGPROBS * 5]:
        if isinstance(alt, dict) and isinstance(alt.get("token"), str):
            logprob = alt.get("logprob")
            if isinstance(logprob, int | float) and not isinstance(logprob, bool):
                pairs.append((alt["token"], float(logprob)))
    return pairs or None


def _message_text(data: Mapping[str, Any]) -> str | None:
    try:
        text = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return text if isinstance(text, str) else None


def _logprob_score(alternatives: list[tuple[str, float]], top: int) -> JudgeScore:
    value = aggregate_logprobs(alternatives, top)
    mass = sum(
        math.exp(lp)
        for tok, lp in alternatives
        if _as_score(tok, top) is not None and math.isfinite(lp) and lp <= 1e-6
    )
    best = max(alternatives, key=lambda pair: pair[1])[0]
    share = f"numbers 0-{top} held {mass:.0%} of the first token's probability"
    if value is None:
        detail = f"{share} (top token {best.strip()[:20]!r}), below {MIN_NUMBER_MASS:.0%}: no score"
    else:
        detail = share
    return JudgeScore(value, "logprobs", detail)
