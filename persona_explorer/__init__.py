"""Persona Explorer: extract, steer and measure the personas inside a language model.

The Python API (the README's "Python" section), re-exported lazily so that ``import
persona_explorer`` loads neither torch nor transformers::

    from persona_explorer import SteerRequest, load, load_model, steer

    model = load_model()  # the embedded SmolLM2-135M-Instruct
    out = steer(model, SteerRequest("Explain rainbows.", load("assets/vectors/pirate.safetensors")))

The packages, bottom up (each one's docstring says what it owns and may import;
``tests/test_architecture.py`` keeps it true):

* ``core``: errors, limits (every limit on input), settings, names, atomic file writes;
* ``engine``: the model owner (loading, the chat template), GGUF blocks, decoders, kernels;
* ``steering``: the one place that edits the residual stream (Add, Cap), projections,
  generation and teacher-forced passes;
* ``vectors``: the PersonaVector value, its file formats and the library on disk;
* ``personas``: trait and role definitions, extraction, vectors from example texts, built-ins;
* ``axis``, ``evaluate``, ``training``: siblings that never import each other (the Assistant
  Axis, capping and drift; compare, sweep and the judge; screening, fine-tuning and shift);
* ``plots``: plotly figures from numbers;
* ``ui`` (the web app), ``cli`` (the command line) and ``dev`` (benchmarks, the test server):
  the edges, where settings are read and requests are checked.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from persona_explorer.core.config import Settings, load_settings
    from persona_explorer.engine.model import LoadedModel, load_model
    from persona_explorer.evaluate.compare import SteerRequest, steer, steer_stream
    from persona_explorer.personas.data import list_builtin, load_builtin
    from persona_explorer.personas.extract import ExtractionConfig, extract_persona
    from persona_explorer.steering.generation import SamplingConfig, generate, generate_stream
    from persona_explorer.steering.ops import Add, Cap, add_plan, steering_hooks
    from persona_explorer.vectors.files import load, save
    from persona_explorer.vectors.persona_vector import PersonaVector

_WHERE = {
    "Settings": "core.config",
    "load_settings": "core.config",
    "LoadedModel": "engine.model",
    "load_model": "engine.model",
    "SteerRequest": "evaluate.compare",
    "steer": "evaluate.compare",
    "steer_stream": "evaluate.compare",
    "list_builtin": "personas.data",
    "load_builtin": "personas.data",
    "ExtractionConfig": "personas.extract",
    "extract_persona": "personas.extract",
    "SamplingConfig": "steering.generation",
    "generate": "steering.generation",
    "generate_stream": "steering.generation",
    "Add": "steering.ops",
    "Cap": "steering.ops",
    "add_plan": "steering.ops",
    "steering_hooks": "steering.ops",
    "load": "vectors.files",
    "save": "vectors.files",
    "PersonaVector": "vectors.persona_vector",
}

__all__ = [
    "Add",
    "Cap",
    "ExtractionConfig",
    "LoadedModel",
    "PersonaVector",
    "SamplingConfig",
    "Settings",
    "SteerRequest",
    "add_plan",
    "extract_persona",
    "generate",
    "generate_stream",
    "list_builtin",
    "load",
    "load_builtin",
    "load_model",
    "load_settings",
    "save",
    "steer",
    "steer_stream",
    "steering_hooks",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'persona_explorer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"persona_explorer.{_WHERE[name]}"), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
