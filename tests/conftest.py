"""Shared fixtures: tiny random models, booted once per test session and architecture.

Every test that uses one of them is also checked for leaked hooks: a hook left on a shared model
would steer every later forward (and every other user's, in the app).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from persona_explorer.model import LoadedModel
from tests.tiny_models import (
    ARCHS,
    DECODER_CASES,
    built_models,
    clean_hook_counts,
    hook_counts,
    tiny,
    with_decoder,
)

# The tiny models do microsecond-sized ops: one thread avoids OpenMP's thread hand-off, which costs
# more than the op itself and, on a busy 2-core runner, made a single 64x64 matmul take 20 ms.
torch.set_num_threads(1)


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
