"""Shared fixtures: tiny random models, booted once per test session and architecture.

Every test that uses one of them is also checked for leaked hooks: a hook left on a shared model
would steer every later forward (and every other user's, in the app).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import torch

from persona_explorer.engine.model import LoadedModel
from tests.browser_support import checked_page, launched_browser
from tests.tiny_models import (
    ARCHS,
    DECODER_CASES,
    built_models,
    clean_hook_counts,
    hook_counts,
    tiny,
    with_decoder,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """The tiny models run microsecond-sized ops: OpenMP's hand-off between threads costs more
    than the op itself (on a busy 2-core runner one 64x64 matmul took 20 ms instead of 60 us)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_leaked_hooks() -> Iterator[None]:
    yield
    for arch, model in built_models().items():
        assert hook_counts(model) == clean_hook_counts(arch), f"hooks left on the tiny {arch} model"


@pytest.fixture(scope="session")
def llama() -> LoadedModel:
    return tiny("llama")


@pytest.fixture(scope="session")
def qwen2() -> LoadedModel:
    return tiny("qwen2")


@pytest.fixture(scope="session")
def gemma2() -> LoadedModel:
    return tiny("gemma2")


@pytest.fixture(scope="session")
def gpt2() -> LoadedModel:
    return tiny("gpt2")


@pytest.fixture(scope="session", params=ARCHS)
def any_model(request: pytest.FixtureRequest) -> LoadedModel:
    return tiny(request.param)


@pytest.fixture(scope="session", params=DECODER_CASES, ids=lambda case: "-".join(case))
def decoded_model(request: pytest.FixtureRequest) -> LoadedModel:
    """Every (architecture, decoder) pair: both decoders for the Llama family, HF for the rest."""
    arch, kind = request.param
    return with_decoder(tiny(arch), kind)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for one test module (skipped without it, except on CI)."""
    with launched_browser() as b:
        yield b


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with checked_page(browser) as pg:
        yield pg
