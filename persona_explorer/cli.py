"""Command line: ``python -m persona_explorer {extract,steer,convert,info,bench}``.

``info`` and ``convert`` only touch vector files: they never load a model and never import
transformers or TransformerLens (both are imported lazily by :mod:`persona_explorer.model`).
``extract`` and ``steer`` load the model once per process (see :data:`_MODELS`).

Every expected failure (a bad file, a vector that does not fit the model, an unknown persona,
an invalid option) ends with one ``error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from .model import ModelLoadError
from .personas import PersonaError
from .steering import MAX_ABS_STRENGTH, SteeringError
from .vectors import PersonaVector, VectorFileError, VectorMismatchError

if TYPE_CHECKING:
    from .compare import SteerOutput
    from .model import LoadedModel
    from .personas import PersonaDefinition

PROG = "python -m persona_explorer"
MAX_NEW_TOKENS = 4096
VECTOR_EXTENSIONS = (".safetensors", ".pt", ".pth", ".gguf")
LAYOUTS = ("persona_vectors", "assistant_axis")

# Loaded models, keyed by (resolved model spec, device, dtype): several main() calls in one
# process (tests, notebooks) load the model once.
_MODELS: dict[tuple[str, str, str], LoadedModel] = {}

_EXPECTED_ERRORS = (
    ModelLoadError,
    VectorFileError,
    VectorMismatchError,
    PersonaError,
    SteeringError,
    ValueError,
    OSError,
    InterruptedError,
)


class CliError(ValueError):
    """A usage problem found after parsing; printed as ``error: ...``."""


# --------------------------------------------------------------------------- argument parsing


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and the exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _strength(text: str) -> float:
    value = _finite_float(text)
    if abs(value) > MAX_ABS_STRENGTH:
        raise argparse.ArgumentTypeError(
            f"strength {value:g} is too large (limit ±{MAX_ABS_STRENGTH:g})"
        )
    return value


def _int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    convert.__name__ = "integer"
    return convert


def _temperature(text: str) -> float:
    value = _finite_float(text)
    if not 0.0 <= value <= 10.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 10, got {text}")
    return value


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _model_options() -> argparse.ArgumentParser:
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("model")
    group.add_argument(
        "--model",
        default=None,
        help="HF id or local checkpoint directory (default: $PERSONA_EXPLORER_MODEL or the "
        "embedded SmolLM2-135M-Instruct)",
    )
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    group.add_argument(
        "--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto"
    )
    group.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Extract persona vectors from a language model and steer it with them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    model_opts = _model_options()

    # ---- extract
    p = sub.add_parser(
        "extract",
        parents=[model_opts],
        help="extract a persona vector (mean activation difference of pos/neg rollouts)",
        description="Generate rollouts under contrasting system prompts and save the "
        "per-layer mean difference of their activations.",
    )
    p.add_argument(
        "--persona",
        required=True,
        help="a trait/role JSON file (persona_vectors format) or a built-in name (e.g. evil)",
    )
    p.add_argument("--out", required=True, help="output file: .safetensors, .gguf or .pt")
    p.add_argument(
        "--out-layout",
        choices=LAYOUTS,
        default=None,
        help="row layout of a .pt output (default: persona_vectors)",
    )
    p.add_argument("--kind", choices=("trait", "role"), default="trait", help="for built-in names")
    p.add_argument("--variant", choices=("response", "prompt", "last"), default="response")
    p.add_argument("--samples", type=_int_in(1, 64), default=1, help="rollouts per prompt")
    p.add_argument(
        "--questions", type=_int_in(1), default=20, help="number of questions (default 20)"
    )
    p.add_argument("--max-new-tokens", type=_int_in(1, MAX_NEW_TOKENS), default=64)
    p.add_argument("--temperature", type=_temperature, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_int_in(1, 1024), default=64)
    p.add_argument(
        "--strength",
        type=_strength,
        default=None,
        help="recommended steering strength to record in the file (optional)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_extract)

    # ---- steer
    p = sub.add_parser(
        "steer",
        parents=[model_opts],
        help="generate baseline and steered answers side by side",
        description="Answer each prompt without and with the vector added to the residual "
        "stream (one batched pass per prompt).",
    )
    p.add_argument("--vector", required=True, help="vector file (.safetensors, .gguf, .pt)")
    p.add_argument("--in-layout", choices=LAYOUTS, default=None, help="row layout of a .pt vector")
    layer_group = p.add_mutually_exclusive_group()
    layer_group.add_argument(
        "--layer", type=_int_in(0), default=None, help="layer (default: the vector's)"
    )
    layer_group.add_argument("--layers", default=None, help="several layers: 18,20 or 18-22")
    p.add_argument(
        "--strength",
        type=_strength,
        action="append",
        default=None,
        help="steering strength; repeat for several steered rows (default: the vector's)",
    )
    p.add_argument("--prompt", type=_text, action="append", required=True, help="repeatable")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--max-new-tokens", type=_int_in(1, MAX_NEW_TOKENS), default=64)
    p.add_argument("--temperature", type=_temperature, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=_finite_float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-eos", action="store_true", help="always generate max-new-tokens")
    p.add_argument("--positions", choices=("all", "response"), default="all")
    p.add_argument(
        "--projection-layer",
        type=_int_in(0),
        default=None,
        help="layer of the per-token projections (default: the first steered layer)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list, one per prompt")
    p.set_defaults(func=cmd_steer)

    # ---- convert
    p = sub.add_parser(
        "convert",
        help="convert a vector between .safetensors, .pt and .gguf",
        description="Convert a vector file; formats follow the extensions.",
    )
    p.add_argument("--in", dest="src", required=True, help="input vector file")
    p.add_argument("--in-layout", choices=LAYOUTS, default=None, help="layout of a .pt input")
    p.add_argument("--out", required=True, help="output vector file")
    p.add_argument(
        "--out-layout",
        choices=LAYOUTS,
        default=None,
        help="layout of a .pt output (default: persona_vectors)",
    )
    p.add_argument(
        "--model-hint", default="llama", help="llama.cpp architecture for .gguf (default llama)"
    )
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_convert)

    # ---- info
    p = sub.add_parser(
        "info",
        help="describe a vector file",
        description="Show what a vector file holds (no model is loaded).",
    )
    p.add_argument("file", help="vector file (.safetensors, .gguf, .pt)")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="layout of a .pt file")
    p.add_argument("--json", action="store_true", help="print describe() as JSON")
    p.set_defaults(func=cmd_info)

    # ---- bench (forwarded to persona_explorer.bench; parsed there)
    sub.add_parser(
        "bench",
        help="benchmark generation speed (options: see 'bench --help')",
        add_help=False,
    )
    return parser


# --------------------------------------------------------------------------- output helpers


def _unicode_ok(stream: TextIO) -> bool:
    enc = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return enc.startswith("utf")


def sparkline(values: Sequence[float], lo: float | None = None, hi: float | None = None) -> str:
    """One character per value, scaled between lo and hi (default: the values' range)."""
    chars = "▁▂▃▄▅▆▇█" if _unicode_ok(sys.stdout) else " .:-=+*#"
    if not values:
        return ""
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    span = hi - lo
    if span <= 1e-12:
        return chars[len(chars) // 2] * len(values)
    top = len(chars) - 1
    return "".join(chars[max(0, min(top, round((v - lo) / span * top)))] for v in values)


def _top(values: Sequence[float], k: int = 3) -> str:
    order = sorted(range(len(values)), key=lambda i: values[i], reverse=True)[:k]
    return ", ".join(f"L{i} {values[i]:.2f}" for i in order)


def _rows_of(values: Sequence[float], per_row: int = 10, fmt: str = "{:.3g}") -> list[str]:
    lines = []
    for start in range(0, len(values), per_row):
        chunk = values[start : start + per_row]
        end = start + len(chunk) - 1
        label = f"L{start}-{end}"
        lines.append(f"{label:>9}: " + " ".join(fmt.format(v) for v in chunk))
    return lines


def _fmt_opt(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


class Progress:
    """A text progress bar on stderr: rewritten in place on a TTY, one line per update else."""

    def __init__(self, stream: TextIO | None = None, width: int = 28, enabled: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""
        self._open = False

    def __call__(self, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        fraction = min(1.0, max(0.0, float(fraction)))
        filled = int(fraction * self.width)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:3.0f}% {message}"
        if line == self._last:
            return
        if self.tty:
            pad = " " * max(0, len(self._last) - len(line))
            self.stream.write(f"\r{line}{pad}")
            self._open = True
        else:
            self.stream.write(line + "\n")
        self._last = line
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
        self._last = ""


def _note(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


def _warn_lines(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        sys.stderr.write(f"warning: {w.message}\n")


# --------------------------------------------------------------------------- shared steps


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep in spec


@contextlib.contextmanager
def _quiet_transformers(quiet: bool) -> Iterator[None]:
    """Hide transformers' own progress bars ("Loading weights") under --quiet."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def get_model(args: argparse.Namespace) -> LoadedModel:
    """The model for these options, loaded once per process."""
    from .model import load_model, resolve_model_spec

    spec = resolve_model_spec(args.model)
    if (
        args.model
        and _looks_like_path(spec)
        and os.sep == "/"
        and not Path(spec).expanduser().exists()
    ):
        raise ModelLoadError(
            f"no such model directory: {spec} (give a local checkpoint directory or an HF id)"
        )
    key = (spec, args.device, args.dtype)
    if key not in _MODELS:
        started = time.perf_counter()

        def progress(_fraction: float, message: str) -> None:
            if not message.startswith("Loaded "):
                _note(args, message + " ...")

        with _quiet_transformers(args.quiet):
            model = load_model(spec, device=args.device, dtype=args.dtype, progress=progress)
        _note(
            args,
            f"Loaded {model.display_name} ({model.n_layers} layers, d_model {model.d_model}, "
            f"{model.device}, {str(model.dtype).removeprefix('torch.')}) "
            f"in {time.perf_counter() - started:.1f} s",
        )
        _MODELS[key] = model
    return _MODELS[key]


def _check_vector_path(path: Path, layout: str | None, what: str) -> str | None:
    """Check an output path's extension and layout before doing any work; return the layout."""
    ext = path.suffix.lower()
    if ext not in VECTOR_EXTENSIONS:
        raise CliError(
            f"{what} {path.name}: unsupported extension {ext or '(none)'!r}; use .safetensors, "
            ".pt or .gguf"
        )
    if ext in (".pt", ".pth"):
        return layout or "persona_vectors"
    if layout is not None:
        raise CliError(f"{what} {path.name}: a layout applies to .pt files only, not {ext}")
    return None


def _check_out_dir(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CliError(f"cannot write {path}: the directory {parent} does not exist")
    if path.is_dir():
        raise CliError(f"cannot write {path}: it is a directory")


def _format_name(path: Path, layout: str | None) -> str:
    ext = path.suffix.lower()
    if ext == ".gguf":
        return "gguf control vector"
    if ext == ".safetensors":
        return "safetensors"
    return f"pt ({layout})"


def _save(vec: PersonaVector, path: Path, layout: str | None, model_hint: str) -> Path:
    from .vectors import save

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = save(vec, path, layout=layout, model_hint=model_hint)  # type: ignore[arg-type]
    _warn_lines(caught)
    return written


def _load_vector(
    path: str, layout: str | None, n_layers: int | None = None, warn: bool = True
) -> PersonaVector:
    from .vectors import load

    vec = load(path, layout=layout, n_layers=n_layers)  # type: ignore[arg-type]
    if warn and vec.metadata.get("layout_assumed"):
        sys.stderr.write(
            f"warning: {Path(path).name}: layout guessed as persona_vectors (row 0 = embedding); "
            "pass --in-layout/--layout assistant_axis if it has one row per layer\n"
        )
    return vec


def _resolve_persona(spec: str, kind: str) -> PersonaDefinition:
    from .personas import load_builtin, load_persona

    path = Path(spec).expanduser()
    if spec.lower().endswith(".json") or path.is_file() or _looks_like_path(spec):
        return load_persona(path)
    return load_builtin(spec, kind)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- extract


def cmd_extract(args: argparse.Namespace) -> int:
    from .extract import ExtractionConfig, extract_persona

    out = Path(args.out).expanduser()
    layout = _check_vector_path(out, args.out_layout, "--out")
    _check_out_dir(out)
    cfg = ExtractionConfig(
        variant=args.variant,
        n_questions=args.questions,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    persona = _resolve_persona(args.persona, args.kind)
    model = get_model(args)

    progress = Progress(enabled=not args.quiet)
    try:
        result = extract_persona(model, persona, cfg, progress=progress)
    finally:
        progress.close()
    vec = result.vector
    if args.strength is not None:
        vec = vec.with_(strength=args.strength)
    written = _save(vec, out, layout, model_hint=model.architecture or "llama")

    sep = list(vec.separation or ())
    counts = vec.metadata.get("counts", {})
    summary = {
        "name": vec.name,
        "kind": persona.kind,
        "variant": vec.variant,
        "model_id": vec.model_id,
        "out": str(written),
        "format": _format_name(written, layout),
        "n_layers": vec.n_layers,
        "d_model": vec.d_model,
        "layer": vec.layer,
        "best_layer": vec.best_layer,
        "strength": vec.strength,
        "separation": sep,
        "separation_cross_validated": result.cross_validated,
        "layer_norms": list(vec.layer_norms),
        "counts": counts,
        "rollouts": len(result.rollouts),
        "seconds": round(result.seconds, 3),
    }
    if args.json:
        _print_json(summary)
        return 0
    cv = "cross-validated" if result.cross_validated else "in-sample"
    lines = [
        f"Extracted {vec.name!r} ({persona.kind}, variant {vec.variant}) from "
        f"{model.display_name} in {result.seconds:.1f} s",
        f"  rollouts      {counts.get('pos', '?')} pos / {counts.get('neg', '?')} neg "
        f"({counts.get('pairs', '?')} prompt pairs x {counts.get('questions', '?')} questions x "
        f"{counts.get('samples', '?')} samples; "
        f"{counts.get('empty_responses', 0)} empty responses)",
        f"  separation    Cohen's d ({cv}) by layer, L0-L{vec.n_layers - 1}: {sparkline(sep)}",
        f"                top: {_top(sep)}",
        f"  best layer    {vec.best_layer} (highest separation)",
        f"  recommended   layer {vec.layer} (best in the middle of the stack)"
        + (f", strength {vec.strength:g}" if vec.strength is not None else ""),
        f"  saved         {written} ({_format_name(written, layout)}, "
        f"{vec.n_layers} layers x d_model {vec.d_model})",
    ]
    print("\n".join(lines))
    return 0


# --------------------------------------------------------------------------- steer


def _steer_layers(args: argparse.Namespace, vec: PersonaVector, n_layers: int) -> tuple[int, ...]:
    from .compare import parse_layers

    if args.layers is not None:
        return parse_layers(args.layers, n_layers)
    if args.layer is not None:
        return parse_layers([args.layer], n_layers)
    if vec.layer is not None:
        return parse_layers([vec.layer], n_layers)
    raise CliError(
        f"no --layer given and {vec.name!r} records no recommended layer; pass --layer L"
    )


def _steer_strengths(args: argparse.Namespace, vec: PersonaVector) -> tuple[float, ...]:
    if args.strength:
        return tuple(args.strength)
    if vec.strength is not None:
        return (vec.strength,)
    raise CliError(
        f"no --strength given and {vec.name!r} records no recommended strength; "
        "pass e.g. --strength 2"
    )


def _steer_record(prompt: str, out: SteerOutput, strengths: Sequence[float]) -> dict[str, Any]:
    base, first = out.baseline, out.steered[0]
    return {
        "prompt": prompt,
        "baseline": base.text,
        "steered": first.text,
        "steered_all": [
            {
                "strength": row.strength,
                "text": row.text,
                "finished": row.finished,
                "projections": row.layer_projection,
                "token_projections": row.token_projection,
            }
            for row in out.steered
        ],
        "layers": list(out.layers),
        "strength": strengths[0],
        "strengths": list(strengths),
        "projections": {"baseline": base.layer_projection, "steered": first.layer_projection},
        "token_projections": {
            "baseline": base.token_projection,
            "steered": first.token_projection,
        },
        "projection_layer": out.projection_layer,
        "tokens_per_second": out.tokens_per_second,
        "new_tokens": out.new_tokens,
        "seconds": out.seconds,
        "decoder": out.decoder,
        "finished": {"baseline": base.finished, "steered": first.finished},
    }


def _print_steer(index: int, total: int, record: dict[str, Any], out: SteerOutput) -> None:
    layers = ",".join(str(x) for x in out.layers)
    rule = "=" * 72
    print(rule)
    print(f"prompt {index}/{total}: {record['prompt']}")
    print(rule)
    print("[baseline]")
    print(out.baseline.text.strip() or "(empty)")
    for row in out.steered:
        print()
        print(f"[steered x{row.strength:g} at layer{'s' if len(out.layers) > 1 else ''} {layers}]")
        print(row.text.strip() or "(empty)")
    print()
    rows = out.rows
    all_values = [v for row in rows for v in row.layer_projection]
    lo, hi = min(all_values), max(all_values)
    pl = out.projection_layer
    n = len(rows[0].layer_projection)
    print(f"projection on the vector (response mean, L0-L{n - 1}, shared scale):")
    base_at = rows[0].layer_projection[pl]
    for row in rows:
        label = "baseline" if row is rows[0] else f"x{row.strength:g}"
        at = row.layer_projection[pl]
        delta = "" if row is rows[0] else f" (delta {at - base_at:+.2f})"
        print(f"  {label:>9} {sparkline(row.layer_projection, lo, hi)}  L{pl}: {at:.2f}{delta}")
    print(
        f"  {out.new_tokens} new tokens in {out.seconds:.2f} s "
        f"({out.tokens_per_second:.1f} tok/s, decoder {out.decoder})"
    )


def cmd_steer(args: argparse.Namespace) -> int:
    from .compare import SteerRequest, steer
    from .generation import SamplingConfig
    from .vectors import check_fits

    vec_path = Path(args.vector).expanduser()
    if not vec_path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(vec_path))
    prompts = list(args.prompt)
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop_at_eos=not args.ignore_eos,
    )
    # Read the file once before the (slow) model load: a bad file or a missing layer/strength
    # fails at once. It is read again below with the model's layer count, which picks a .pt
    # file's layout and pads a GGUF file.
    early = _load_vector(str(vec_path), args.in_layout, warn=False)
    _steer_strengths(args, early)
    if args.layers is None and args.layer is None:
        _steer_layers(args, early, early.n_layers)
    model = get_model(args)
    vec = _load_vector(str(vec_path), args.in_layout, n_layers=model.n_layers)
    check_fits(vec, model.n_layers, model.d_model, model.model_id)
    layers = _steer_layers(args, vec, model.n_layers)
    strengths = _steer_strengths(args, vec)
    if args.projection_layer is not None and args.projection_layer >= model.n_layers:
        raise CliError(
            f"--projection-layer {args.projection_layer} is out of range: this model has "
            f"layers 0-{model.n_layers - 1}"
        )
    records = []
    for i, prompt in enumerate(prompts, start=1):
        req = SteerRequest(
            prompt=prompt,
            vector=vec,
            layers=layers,
            strengths=strengths,
            system=args.system or None,
            positions=args.positions,
            sampling=sampling,
            projection_layer=args.projection_layer,
        )
        out = steer(model, req)
        record = _steer_record(prompt, out, strengths)
        records.append(record)
        if not args.json:
            _print_steer(i, len(prompts), record, out)
    if args.json:
        _print_json(records)
    return 0


# --------------------------------------------------------------------------- convert / info


def cmd_convert(args: argparse.Namespace) -> int:
    src = Path(args.src).expanduser()
    out = Path(args.out).expanduser()
    _check_vector_path(src, args.in_layout, "--in")
    layout = _check_vector_path(out, args.out_layout, "--out")
    _check_out_dir(out)
    if not args.model_hint.strip():
        raise CliError("--model-hint must not be empty (e.g. llama)")
    vec = _load_vector(str(src), args.in_layout)
    written = _save(vec, out, layout, model_hint=args.model_hint.strip())
    fmt = _format_name(written, layout)
    info = {
        "in": str(src),
        "out": str(written),
        "format": fmt,
        "name": vec.name,
        "n_layers": vec.n_layers,
        "d_model": vec.d_model,
        "bytes": written.stat().st_size,
    }
    if args.json:
        _print_json(info)
    else:
        print(
            f"wrote {written} ({fmt}; {vec.name!r}, {vec.n_layers} layers x d_model "
            f"{vec.d_model}, {info['bytes']:,} bytes)"
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .vectors import describe

    path = Path(args.file).expanduser()
    _check_vector_path(path, args.layout, "file")
    vec = _load_vector(str(path), args.layout)
    desc = describe(vec)
    if args.json:
        _print_json({**desc, "file": str(path)})
        return 0
    norms = desc["layer_norms"]
    strength = vec.strength
    rows = [
        ("file", str(path)),
        ("name", vec.name),
        ("model", vec.model_id or "-"),
        ("variant", vec.variant),
        ("layers", str(vec.n_layers)),
        ("d_model", str(vec.d_model)),
        ("recommended", f"layer {_fmt_opt(vec.layer)}, strength {_fmt_opt(strength)}"),
        ("best layer", _fmt_opt(vec.best_layer) + (" (by separation)" if vec.separation else "")),
        ("embedding", "yes" if vec.embedding is not None else "no"),
    ]
    for key in ("created", "source", "persona_kind", "source_format", "source_file"):
        if key in vec.metadata:
            rows.append((key.replace("_", " "), str(vec.metadata[key])))
    counts = vec.metadata.get("counts")
    if isinstance(counts, dict) and counts:
        rows.append(("counts", ", ".join(f"{k} {v}" for k, v in counts.items())))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append(
        f"{'norms':<{width}}  {sparkline(norms)}  (min {min(norms):.3g}, max {max(norms):.3g})"
    )
    lines.extend(" " * (width - 7) + line for line in _rows_of(norms))
    if vec.separation is not None:
        sep = list(vec.separation)
        lines.append(f"{'separation':<{width}}  {sparkline(sep)}  (top: {_top(sep)})")
    print("\n".join(lines))
    return 0


# --------------------------------------------------------------------------- bench / main


def cmd_bench(argv: list[str]) -> int:
    try:
        from . import bench
    except ModuleNotFoundError as exc:
        if exc.name not in ("persona_explorer.bench", f"{__package__}.bench"):
            raise
        raise CliError("the benchmark module persona_explorer.bench is not available") from None
    rc = bench.main(argv)
    return int(rc) if isinstance(rc, int) else 0


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip()
    return text or type(exc).__name__


_NUMERIC_OPTIONS = frozenset({"--strength", "--temperature", "--top-p", "--seed"})


def _join_negative_numbers(argv: list[str]) -> list[str]:
    """``--strength -1e3`` -> ``--strength=-1e3``: argparse reads only plain negative decimals
    ("-2", "-1.5") as values, and anything else starting with "-" as an unknown option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in _NUMERIC_OPTIONS and nxt is not None and nxt.startswith("-"):
            try:
                float(nxt)
            except ValueError:
                pass
            else:
                out.append(f"{arg}={nxt}")
                i += 2
                continue
        out.append(arg)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list and args_list[0] == "bench":
            return cmd_bench(args_list[1:])
        parser = build_parser()
        try:
            args = parser.parse_args(_join_negative_numbers(args_list))
        except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        return int(args.func(args))
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); stop quietly.
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 1
    except _EXPECTED_ERRORS as exc:
        sys.stderr.write(f"error: {_error_text(exc)}\n")
        return 2
