"""The options every command shares: one-line usage errors, argument types built on
:mod:`persona_explorer.core.limits`, and the shared option groups (:class:`Parents`).

Argument types never hold a rule of their own: :func:`arg_type` and :func:`limited` turn a
``limits.check_*`` function into an argparse type, so ``--strength 1e9`` is refused with the
same rule and words as the web app's strength box.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias, TypeVar, get_args

from persona_explorer.core.config import ENV_PREFIX
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    DEFAULT_FREQUENCY_PENALTY,
    MAX_PENALTY,
    Limits,
    check_max_new_tokens,
    check_penalty,
    check_seed,
    check_strength,
    check_temperature,
    check_text,
    check_top_p,
    parse_layers,
)
from persona_explorer.vectors.files import VectorLayout

if TYPE_CHECKING:
    # What build_parser hands each command's register(); a private argparse class.
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

T = TypeVar("T")

PROG = "python -m persona_explorer"
LAYOUTS: tuple[str, ...] = get_args(VectorLayout)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and the exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _reason(exc: InputError) -> str:
    # argparse puts the message after "argument --x: " and before our "(see --help)".
    return str(exc).rstrip(".")


def arg_type(check: Callable[..., T], *args: Any, **kwargs: Any) -> Callable[[str], T]:
    """An argparse type applying ``check(text, *args, **kwargs)``, a rule from limits.py."""

    def convert(text: str) -> T:
        try:
            return check(text, *args, **kwargs)
        except InputError as exc:
            raise argparse.ArgumentTypeError(_reason(exc)) from None

    # argparse names the type in some messages ("invalid check_int value").
    convert.__name__ = check.__name__.removeprefix("check_")
    return convert


def limited(
    check: Callable[[str, Limits | None], T], limits: Limits, variable: str
) -> Callable[[str], T]:
    """An argparse type for a rule with a deployment limit (``check(text, None)``: no limit).

    A value refused only because of the limit says which variable raises it.
    """

    def convert(text: str) -> T:
        try:
            return check(text, limits)
        except InputError as exc:
            try:
                check(text, None)
            except InputError:
                raise argparse.ArgumentTypeError(_reason(exc)) from None
            hint = f"raise the limit with {ENV_PREFIX}{variable}"
            raise argparse.ArgumentTypeError(f"{_reason(exc)} ({hint})") from None

    convert.__name__ = check.__name__.removeprefix("check_")
    return convert


def strength_type(limits: Limits) -> Callable[[str], float]:
    return limited(check_strength, limits, "MAX_STRENGTH")


def text_type(what: str, limits: Limits, *, required: bool) -> Callable[[str], str]:
    """Checks a prompt (present if required, within the length limit) but returns it as typed:
    the model sees exactly what the user wrote."""

    def check(text: str, lim: Limits | None) -> str:
        check_text(text, what, lim.max_prompt_chars if lim else sys.maxsize, required=required)
        return text

    return limited(check, limits, "MAX_PROMPT_CHARS")


@dataclass(frozen=True)
class Parents:
    """What each command's ``register`` gets: the limits in force and the shared options.

    Each method returns a fresh parser: argparse shares a parent's option objects with every
    child, so one command's ``set_defaults`` would otherwise change another's defaults.
    """

    limits: Limits

    def model(self) -> argparse.ArgumentParser:
        parent = Parser(add_help=False)
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
        group.add_argument(
            "-q", "--quiet", action="store_true", help="no progress messages on stderr"
        )
        return parent

    def sampling(self, penalty: bool = False) -> argparse.ArgumentParser:
        """Generation options; a command sets its own defaults with ``set_defaults``.
        ``penalty``: also ``--frequency-penalty`` (the app's default unless set)."""
        lim = self.limits
        parent = Parser(add_help=False)
        group = parent.add_argument_group("sampling")
        group.add_argument(
            "--max-new-tokens",
            type=limited(check_max_new_tokens, lim, "MAX_NEW_TOKENS"),
            default=64,
            metavar="N",
            help=f"tokens per answer, at most {lim.max_new_tokens} "
            f"(${ENV_PREFIX}MAX_NEW_TOKENS; default: %(default)s)",
        )
        group.add_argument(
            "--temperature",
            type=limited(check_temperature, lim, "MAX_TEMPERATURE"),
            default=0.0,
            help=f"0 = greedy, at most {lim.max_temperature:g} (default: %(default)s)",
        )
        group.add_argument(
            "--top-p", type=arg_type(check_top_p), default=1.0, help="(default: %(default)s)"
        )
        group.add_argument(
            "--seed", type=arg_type(check_seed), default=0, help="(default: %(default)s)"
        )
        if penalty:
            group.add_argument(
                "--frequency-penalty",
                type=arg_type(check_penalty),
                default=DEFAULT_FREQUENCY_PENALTY,
                help="lower a token's logit by this much per earlier use in the answer, 0 to "
                f"{MAX_PENALTY:g} (the app's default: %(default)s)",
            )
        return parent

    def capping(self) -> argparse.ArgumentParser:
        """``--cap-axis``: keep the projection on the Assistant Axis at or above a floor τ."""
        parent = Parser(add_help=False)
        group = parent.add_argument_group("activation capping on the Assistant Axis")
        group.add_argument("--cap-axis", action="store_true", help="also answer capped")
        group.add_argument(
            "--cap-percentile",
            default=None,
            metavar="P",
            help="τ = this percentile of the default's per-token projections (default: 25)",
        )
        group.add_argument(
            "--cap-layers",
            type=arg_type(parse_layers, 10_000),
            default=None,
            metavar="A-B",
            help="layers to cap, e.g. 15-18 (default: an eighth of the stack from the middle)",
        )
        return parent

    def output(self, what: str = "the result") -> argparse.ArgumentParser:
        parent = Parser(add_help=False)
        parent.add_argument("--json", action="store_true", help=f"print {what} as JSON")
        return parent
