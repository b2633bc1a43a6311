"""The compiled CPU kernels of the fast decoder (C++ source: ``kernels.cpp``).

Why hand-written: at batch 1-4 a decoding step is a stream of matrix-vector products, bounded by
memory bandwidth. oneDNN and MKL reach about 11-12 GB/s on them on this project's 2-core machine
while a plain read reaches ~20 GB/s, and torch's int4 CPU matmul was 24x slower than fp32 at
batch 2. So:

* ``grouped_gemv``: y = W x (+ a residual) for any number of rows of x and several matrices in
  one call (q/k/v, gate/up), parallel over output rows, each weight row read once for all rows.
  Rows may be stored as GGUF Q4_1 or Q8_0 blocks (as in the file, or repacked with their fp16
  scales widened to fp32 ahead of time, which is what decoding uses), bf16, fp16 or fp32
  (:class:`WeightFormat`); blocks are decoded in registers into exactly the fp32 values gguf's
  dequantizer gives (``d*q`` is exact in fp32, so one rounding, as in numpy), so only the order
  of summation differs from a dequantize-then-matmul. Every output is one dot product in a fixed
  order, the same whatever the number of rows: identical rows give bit-identical results, and a
  row gives the same bits alone or in a batch of 60 (the shared decoding batch relies on it).
* The products come in two builds of the same arithmetic: AVX2, and AVX-512F (16-lane
  registers holding two of the AVX2 path's 8-lane accumulators each, so every row's sums are
  the same bits; eight x rows share each decoded weight block). :func:`best_isa` picks AVX-512
  where ``/proc/cpuinfo`` reports it.
* ``decode_attention``: one decoding step's RoPE, KV-cache write and attention over the cached
  keys, for every row, in one call per layer.
* ``rms_norm``, ``rope_``, ``silu_mul``: the element-wise ops of every pass (prompts too), one
  pass over memory each instead of torch's four to six.

It is compiled on first use with ``torch.utils.cpp_extension`` (about 1-2 min once on 2 cores;
cached on disk by torch). Where that cannot work (no compiler, no AVX2) or the decoder is built
without it (the ``decode_kernel`` setting, ``PERSONA_EXPLORER_KERNEL=0``) decoding falls back to
oneDNN and torch ops on the fp32 weights; nothing else changes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import torch

from persona_explorer.core.cpu import cpu_flags, read_cpuinfo

log = logging.getLogger(__name__)

# Up to this many rows, a decoding step's products use the kernel rather than oneDNN (above it,
# oneDNN's blocked GEMM wins for a single request's big batch, e.g. extraction's rollouts).
MAX_ROWS = 4

_SOURCE = (Path(__file__).with_name("kernels.cpp")).read_text()

_lock = threading.Lock()
_module: Any = None
_tried = False


# What ``extra_cflags`` compiles for: the kernel may only run where the CPU has all three.
REQUIRED_EXTENSIONS = ("avx2", "fma", "f16c")


def unsupported_reason(cpuinfo: str | None = None, capability: str | None = None) -> str | None:
    """Why the kernel cannot run on this CPU, or None where it can.

    The kernel is compiled with ``-mavx2 -mfma -mf16c`` (never ``-march=native``: a VM may report
    extensions, AMX for one, that it does not grant), so the CPU must report all three. Where
    ``/proc/cpuinfo`` has no flags (not Linux, not x86), torch's own runtime check decides:
    its AVX2 and AVX512 levels both imply FMA and F16C."""
    flags = cpu_flags(read_cpuinfo() if cpuinfo is None else cpuinfo)
    if flags is not None:
        missing = [ext for ext in REQUIRED_EXTENSIONS if ext not in flags]
        if missing:
            return f"the CPU does not report {', '.join(e.upper() for e in missing)}"
        return None
    capability = capability or torch.backends.cpu.get_cpu_capability()
    if "AVX2" not in capability and "AVX512" not in capability:
        return f"CPU capability {capability} has no AVX2"
    return None


def compile_source(source: str, prefix: str = "persona_explorer_gemv") -> Any:
    """Build (or load torch's cached build of) a kernel source, named after its hash, with the
    kernel's flags, products set to the CPU's best ISA. ``load`` builds ``kernels.cpp`` with it;
    ``bench/bench_kernel_ab.py`` builds variants of it the same way."""
    from torch.utils.cpp_extension import _get_build_directory, load_inline

    name = f"{prefix}_{hashlib.sha256(source.encode()).hexdigest()[:10]}"
    try:
        built = any(Path(_get_build_directory(name, verbose=False)).glob("*.so"))
    except (OSError, RuntimeError):
        built = False
    if not built:
        log.warning("Compiling the CPU decode kernels (first run only, 1-2 min)")
    module = load_inline(
        name=name,
        cpp_sources=source,
        # No contraction: the element-wise ops keep torch's rounding (mul, then add).
        extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )
    use_isa(module, best_isa())
    return module


def load(enabled: bool) -> Any:
    """The compiled module, or None where it cannot be built (logged once) or is not ``enabled``."""
    global _module, _tried
    if not enabled:
        # Not remembered: a later decoder built with the kernel on may still compile it.
        log.info("decode kernel not used: switched off (decode_kernel setting)")
        return None
    with _lock:
        if _tried:
            return _module
        _tried = True
        problem = unsupported_reason()
        if problem:
            log.info("decode kernel not used: %s", problem)
            return None
        try:
            _module = compile_source(_SOURCE)
        except (RuntimeError, OSError, ImportError) as exc:
            log.warning("decode kernel unavailable, using oneDNN: %s", exc)
            _module = None
        return _module


ISAS = ("avx2", "avx512")  # the kernel's products: index = its set_isa code


def best_isa(cpuinfo: str | None = None) -> str:
    """The widest products this CPU runs: AVX-512F where /proc/cpuinfo reports it (a VM that
    reports it grants it, unlike AMX), else AVX2. Both give the same bits."""
    flags = cpu_flags(read_cpuinfo() if cpuinfo is None else cpuinfo)
    return "avx512" if flags is not None and "avx512f" in flags else "avx2"


def use_isa(module: Any, isa: str) -> None:
    """Switch the products to ``isa`` (process-wide; the bench compares the two)."""
    if isa not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, not {isa!r}")
    module.set_isa(ISAS.index(isa))


def isa_of(module: Any) -> str:
    return ISAS[int(module.get_isa())]


class WeightFormat(IntEnum):
    """How a matrix's rows are stored (the kernel's type codes)."""

    F32 = 0
    Q4_1 = 1  # GGUF blocks of 32: fp16 scale d, fp16 minimum m, 32 4-bit codes; w = d*q + m
    Q8_0 = 2  # GGUF blocks of 32: fp16 scale d, 32 int8 codes; w = d*q
    BF16 = 3
    F16 = 4
    Q4_1X = 5  # Q4_1 repacked per row: the blocks' d and m as fp32, then the codes
    Q8_0X = 6  # Q8_0 repacked per row: the blocks' d as fp32, then the codes


BLOCK = 32
BLOCK_BYTES = {
    WeightFormat.Q4_1: 20,
    WeightFormat.Q8_0: 34,
    WeightFormat.Q4_1X: 24,
    WeightFormat.Q8_0X: 36,
}
_REPACKED = {WeightFormat.Q4_1: (WeightFormat.Q4_1X, 2), WeightFormat.Q8_0: (WeightFormat.Q8_0X, 1)}


@dataclass(frozen=True)
class Matrix:
    """A weight matrix [out, in] as the kernel reads it: ``data`` holds its rows in ``fmt``
    (uint8 blocks, 16-bit or fp32 values); ``in_features`` is its width in weights."""

    data: torch.Tensor
    fmt: WeightFormat
    in_features: int

    @property
    def out_features(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


def plain(weight: torch.Tensor) -> Matrix:
    return Matrix(weight, WeightFormat.F32, int(weight.shape[1]))


def repack(mat: Matrix) -> Matrix:
    """GGUF blocks in the kernel's faster layout (same numbers: fp16 scales widen exactly)."""
    if mat.fmt not in _REPACKED:
        return mat
    fmt, n_scales = _REPACKED[mat.fmt]
    rows, blocks = mat.out_features, mat.in_features // BLOCK
    raw = mat.data.reshape(rows, blocks, BLOCK_BYTES[mat.fmt])
    scales = raw[:, :, : 2 * n_scales].contiguous().view(torch.float16).float()
    codes = raw[:, :, 2 * n_scales :].reshape(rows, -1)
    data = torch.cat([scales.reshape(rows, -1).view(torch.uint8), codes], dim=1)
    return Matrix(data.contiguous(), fmt, mat.in_features)


def usable(weights: list[torch.Tensor]) -> bool:
    return all(
        w.device.type == "cpu" and w.dtype == torch.float32 and w.is_contiguous() for w in weights
    )


class Group:
    """Matrices multiplied by the same input in one call, their arguments prepared once."""

    def __init__(self, module: Any, mats: list[Matrix]) -> None:
        self.module = module
        self.data = [m.data for m in mats]
        self.types = [int(m.fmt) for m in mats]

    def __call__(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [..., K] -> [..., sum of output sizes] (+ ``add``); any number of rows, each
        computed as it would be alone."""
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        if add is not None:
            add = add.reshape(flat.shape[0], -1).contiguous()
        out = self.module.grouped_gemv(flat, self.data, self.types, add)
        return out.view(*x.shape[:-1], out.shape[-1])


def dequantize(module: Any, mat: Matrix) -> torch.Tensor:
    """The fp32 weights ``mat`` stands for, decoded by the same code the products use."""
    return module.dequantize(mat.data, int(mat.fmt), mat.in_features)
