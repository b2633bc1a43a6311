"""The built-in persona library for the default model, shipped precomputed in ``assets/vectors``.

Each persona's vector is made one of two ways (:attr:`BuiltinSpec.method`): from the model's own
rollouts under contrasting system prompts (5 prompt pairs x 10 questions x 48 new tokens,
:mod:`.extract`), or from the example texts written for the project
(``assets/personas/examples``, :mod:`.examples`). Which one, and the layer and strength, were
chosen by sweeps on the selection prompts and checked on held-out ones
(``python -m persona_explorer.dev.builtin_check --out assets/vectors``, which also records the sweep
and the check in each file's metadata). ``python -m persona_explorer.personas.builtin`` rebuilds the
vectors from the specs below (about a minute each on 2 idle cores; the sweep metadata is then
lost until the check runs again), and ``--retag`` rewrites only the layer and strength.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from persona_explorer.core.config import Settings, load_settings
from persona_explorer.vectors.files import load, save
from persona_explorer.vectors.persona_vector import PersonaVector

if TYPE_CHECKING:
    from persona_explorer.engine.model import LoadedModel


@dataclass(frozen=True)
class BuiltinSpec:
    name: str
    kind: str  # "trait" or "role" in the shared persona data
    variant: str  # which extraction variant steers best on this model
    layer: int
    strength: float
    description: str
    method: str = "rollouts"  # or "examples" (then variant is "custom")


BUILTIN: tuple[BuiltinSpec, ...] = (
    # A 135M model barely follows an "evil" system prompt, so its responses differ little; the
    # last prompt token carries the persona better. Layers and strengths below are the sweep's
    # choices (builtin_check); the README quotes what each one does at them.
    BuiltinSpec(
        "evil",
        "trait",
        "last",
        14,
        2.64,
        "Meant as menacing. On this 135M model it comes out brooding and theatrical, not cruel.",
    ),
    BuiltinSpec(
        "sycophantic",
        "trait",
        "response",
        22,
        4.53,
        "Meant to flatter the user. On this 135M model it comes out as folksy dialect, "
        "more than flattery.",
    ),
    BuiltinSpec("optimistic", "trait", "response", 10, 12.4, "Cheerful, sees the bright side."),
    BuiltinSpec("pessimistic", "trait", "response", 22, 4.72, "Expects the worst."),
    BuiltinSpec("formal", "trait", "response", 18, 4.51, "Stiff, formal register."),
    BuiltinSpec("poetic", "trait", "custom", 10, 2.87, "Lyrical, image-rich language.", "examples"),
    BuiltinSpec("sarcastic", "trait", "custom", 10, 1.92, "Mocking, ironic asides.", "examples"),
    BuiltinSpec("pirate", "role", "response", 10, 5.06, "Talks like a pirate captain."),
)


def builtin_dir(settings: Settings | None = None) -> Path:
    """The ``builtin_vectors_dir`` setting (``$PERSONA_EXPLORER_BUILTIN_VECTORS``, read by the
    caller), or the shipped ``assets/vectors`` without one."""
    return (settings if settings is not None else Settings()).builtin_vectors_dir


def builtin_vector_paths(directory: Path | None = None) -> list[Path]:
    directory = directory or builtin_dir()
    return sorted(directory.glob("*.safetensors")) if directory.is_dir() else []


def _tag(vec: PersonaVector, spec: BuiltinSpec) -> PersonaVector:
    if vec.variant != spec.variant:
        raise ValueError(
            f"{spec.name}: the file holds the {vec.variant!r} variant, not {spec.variant!r}"
        )
    meta = dict(vec.metadata)
    meta.update(builtin=True, description=spec.description)
    return vec.with_(layer=spec.layer, strength=spec.strength, metadata=meta)


def build(
    names: Sequence[str] | None = None,
    out_dir: Path | None = None,
    questions: int = 10,
    max_new_tokens: int = 48,
    *,
    retag_only: bool = False,
    variants_dir: Path | None = None,
    settings: Settings | None = None,
) -> list[Path]:
    settings = settings if settings is not None else Settings()
    out_dir = out_dir or builtin_dir(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = [s for s in BUILTIN if names is None or s.name in names]
    written = []
    if retag_only:
        for spec in specs:
            path = out_dir / f"{spec.name}.safetensors"
            written.append(save(_tag(load(path), spec), path))
        return written

    from persona_explorer.engine.model import load_model
    from persona_explorer.personas.data import load_builtin
    from persona_explorer.personas.extract import ExtractionConfig, extract_persona

    model = load_model(settings=settings)
    for spec in specs:
        if spec.method == "examples":
            written.append(_build_from_examples(model, spec, out_dir))
            continue
        persona = load_builtin(
            spec.name,
            kind=spec.kind,  # type: ignore[arg-type]
            data_dir=settings.persona_data_dir,
        )
        cfg = ExtractionConfig(
            variant=spec.variant,  # type: ignore[arg-type]
            n_questions=questions,
            max_new_tokens=max_new_tokens,
            batch_size=64,
        )
        res = extract_persona(
            model,
            persona,
            cfg,
            progress=lambda f, msg, n=spec.name: print(f"  {n}: {f:4.0%} {msg}", file=sys.stderr),
        )
        path = out_dir / f"{spec.name}.safetensors"
        written.append(save(_tag(res.vector, spec), path))
        if variants_dir is not None:
            # Every variant, for choosing which one steers best (then edit BUILTIN and --retag).
            variants_dir.mkdir(parents=True, exist_ok=True)
            for variant, vec in res.by_variant.items():
                save(vec, variants_dir / f"{spec.name}.{variant}.safetensors")
        print(f"{spec.name}: {res.seconds:.0f} s, best-separating layer {res.vector.best_layer}")
    return written


def _build_from_examples(model: LoadedModel, spec: BuiltinSpec, out_dir: Path) -> Path:
    from persona_explorer.personas.examples import (
        builtin_examples,
        extract_from_examples,
        read_examples,
    )

    path = builtin_examples(spec.name)
    if path is None:
        raise ValueError(f"{spec.name}: no example file in assets/personas/examples")
    pairs = read_examples(path).pairs
    res = extract_from_examples(model, spec.name, pairs)  # metadata["method"] = "examples"
    print(f"{spec.name}: from {len(pairs)} example pairs")
    return save(_tag(res.vector, spec), out_dir / f"{spec.name}.safetensors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m persona_explorer.personas.builtin", description=__doc__
    )
    parser.add_argument("--only", nargs="*", help="names to rebuild (default: all)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--retag", action="store_true", help="only rewrite layer/strength")
    parser.add_argument(
        "--all-variants", type=Path, default=None, help="also save every variant to this folder"
    )
    args = parser.parse_args(argv)
    paths = build(
        args.only,
        args.out,
        args.questions,
        args.max_new_tokens,
        retag_only=args.retag,
        variants_dir=args.all_variants,
        settings=load_settings(),
    )
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
