"""Writing files so that a crash never leaves a torn one: the project's one ``atomic_write``.

Used for every file the project writes that someone may read later: saved vectors and exports
(:mod:`.vector_files`), the library (:mod:`.library`) and the dequantized model cache
(:mod:`.model`, a whole directory).

Imports: the standard library only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Literal

__all__ = ["TMP_SUFFIX", "DataFormat", "atomic_write", "fsync_dir", "is_temp_name"]

PathLike = str | os.PathLike[str]
TMP_SUFFIX = ".tmp"

# The two formats of a file of chat samples or example pairs (screening, fine-tuning, examples).
DataFormat = Literal["jsonl", "csv"]


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of :func:`atomic_write`'s temporary files or directories."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write(
    path: PathLike, write_fn: Callable[[Path], None], *, directory: bool = False
) -> Path:
    """Write ``path`` so that readers see either the old version or the complete new one.

    ``write_fn`` receives a fresh temporary path in the target's directory (so the final
    ``os.replace`` is a same-filesystem rename) and must write everything there: a file, or with
    ``directory=True`` the files of a directory it receives already created. Path-based because
    the GGUF, safetensors and transformers writers open files by name. On any error the temporary
    path is removed and the target is left untouched.

    A directory can only replace a missing or empty one: the rename of a second writer that lost
    a race raises ``OSError`` and leaves the first writer's directory in place.
    """
    target = Path(path)
    parent = target.parent
    tmp = parent / f".{target.name[:200]}.{secrets.token_hex(6)}{TMP_SUFFIX}"
    if directory:
        tmp.mkdir()
    else:
        # O_EXCL: never clobber someone else's file; mode 0o666 lets the umask decide.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write_fn(tmp)
        if directory:
            for child in tmp.rglob("*"):
                if child.is_file():
                    _fsync_file(child)
        else:
            _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    fsync_dir(parent)
    return target
