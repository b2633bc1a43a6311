"""The README as written: its Python example runs, and every module path it names exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _exists(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (REPO / rel).with_suffix(".py").is_file() or (REPO / rel / "__init__.py").is_file()


def test_every_module_path_in_the_readme_exists() -> None:
    named = set(re.findall(r"\bpersona_explorer(?:\.[a-z_]+)+", README))
    # ``python -m persona_explorer.x.y`` and ``persona_explorer.x.y.name``: the longest prefix
    # that is a module must be more than the bare package.
    missing = []
    for dotted in sorted(named):
        parts = dotted.split(".")
        if not any(_exists(".".join(parts[:end])) for end in range(2, len(parts) + 1)):
            missing.append(dotted)
    assert not missing, missing
    paths = set(re.findall(r"\bpersona_explorer/[\w/]+\.py\b", README))
    assert not [p for p in paths if not (REPO / p).is_file()]


@pytest.mark.integration
def test_the_python_example_runs() -> None:
    section = README[README.index("## Python") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code, "the README's Python section has a code block"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip(), "the example prints the two answers"
