"""Start the real app (``python app.py``) in a subprocess on a free port: for the end-to-end
tests and the app benchmark (``bench/bench_app.py``), which both drive a real server.

    with AppServer(data_dir=tmp) as url:
        Client(url).predict(...)

Only the process started here is ever stopped (by its pid). ``shared_server()`` starts one app per
test process, reused by every e2e test module, stopped when the process exits. Test vectors for
the embedded model are written to a built-in directory of the test's own (``make_test_vectors``)
so the tests do not depend on the shipped ``assets/vectors``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 180.0
# Names of the test vectors; "strong" changes any answer, "foreign" was made for another model.
STRONG = "test-strong"
MILD = "test-mild"
FOREIGN = "test-foreign"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_test_vectors(folder: Path) -> Path:
    """Synthetic persona vectors for the embedded model (30 layers, d_model 576)."""
    import torch

    from persona_explorer.engine.model import EMBEDDED_MODEL_ID
    from persona_explorer.vectors.files import save
    from persona_explorer.vectors.persona_vector import PersonaVector

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)

    def direction(norm: float) -> torch.Tensor:
        v = torch.randn(30, 576, generator=gen)
        return v / v.norm(dim=-1, keepdim=True) * norm

    meta = {"source": "test", "created": "2025-01-01T00:00:00+00:00"}
    specs = [
        (STRONG, direction(40.0), EMBEDDED_MODEL_ID, 12, 4.0),
        (MILD, direction(10.0), EMBEDDED_MODEL_ID, 20, 2.0),
        (FOREIGN, direction(10.0), "meta-llama/Llama-3.1-8B-Instruct", 20, 2.0),
    ]
    for name, vecs, model_id, layer, strength in specs:
        vec = PersonaVector(
            name=name,
            vectors=vecs,
            model_id=model_id,
            variant="response",
            layer=layer,
            strength=strength,
            metadata=meta,
        )
        save(vec, folder / f"{name}.safetensors")
    # The shipped vectors too, when there are any: screenshots look better with real personas.
    shipped = REPO / "assets" / "vectors"
    for path in sorted(shipped.glob("*.safetensors")) if shipped.is_dir() else []:
        shutil.copy2(path, folder / path.name)
    return folder


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so no server is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class AppServer:
    """Context manager: ``python app.py`` on a free port; yields its URL; stops that process."""

    def __init__(
        self,
        data_dir: Path | str,
        builtin_dir: Path | str | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | str | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {
            **os.environ,
            "PERSONA_EXPLORER_DATA": str(data_dir),
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(self.port),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
        }
        if builtin_dir is not None:
            self.env["PERSONA_EXPLORER_BUILTIN_VECTORS"] = str(builtin_dir)
        self.env.update(env or {})
        self.log_path = Path(log_path or tempfile.mkstemp(prefix="app-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        log = open(self.log_path, "wb")  # noqa: SIM115 (the child writes it until stopped)
        self.proc = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=2) as resp:
                    if resp.status == 200:
                        return self.url
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"app.py did not answer within {STARTUP_TIMEOUT_S:.0f} s:\n{self.log()}")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # this pid only
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_SHARED: AppServer | None = None


def shared_server() -> AppServer:
    """One app for the whole test run (started on first use, stopped at exit)."""
    global _SHARED
    if _SHARED is None or not _SHARED.alive():
        root = Path(tempfile.mkdtemp(prefix="persona-explorer-e2e-"))
        server = AppServer(
            data_dir=root / "data",
            builtin_dir=make_test_vectors(root / "builtin"),
            env={
                "PERSONA_EXPLORER_DEFAULT_PERSONA": MILD,
                # Small, so that the "huge upload" test does not need a huge file.
                "PERSONA_EXPLORER_MAX_UPLOAD_MB": "2",
            },
            log_path=root / "app.log",
        )
        server.start()
        atexit.register(server.stop)
        _SHARED = server
    return _SHARED


if __name__ == "__main__":  # manual use: python -m persona_explorer.dev.devserver
    srv = shared_server()
    print(srv.url, "log:", srv.log_path, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while srv.alive():
            time.sleep(1)
    srv.stop()
