"""A small C++ kernel for the matrix-vector products of CPU decoding.

Why hand-written: at batch 1-4 a decoding step is a stream of matrix-vector products, bounded by
memory bandwidth. oneDNN and MKL reach about 11-12 GB/s on them on this project's 2-core machine
while a plain read reaches ~20 GB/s; this AVX2 loop, parallel over output rows and reading each
weight row once for all batch rows, reaches 15-20 GB/s. It reads the model's own weights (no
copies) and several matrices in one call (q/k/v, gate/up). Every output is one dot product in a
fixed order, so identical batch rows give bit-identical results.

It is compiled on first use with ``torch.utils.cpp_extension`` (about 20-40 s once; cached on disk
by torch). Where that cannot work (no compiler, no AVX2) or the decoder is built without it (the
``decode_kernel`` setting, ``PERSONA_EXPLORER_KERNEL=0``) decoding falls back to oneDNN; nothing
else changes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

MAX_ROWS = 4

_SOURCE = r"""
#include <torch/extension.h>
#include <immintrin.h>
#include <vector>

// y[m, off_j + o] = sum_k Ws[j][o, k] * x[m, k] for every matrix j; M <= 4 rows of x.
torch::Tensor grouped_gemv(torch::Tensor x, std::vector<torch::Tensor> ws) {
  const int64_t M = x.size(0), K = x.size(1);
  std::vector<int64_t> offs(ws.size() + 1, 0);
  for (size_t j = 0; j < ws.size(); ++j) offs[j + 1] = offs[j] + ws[j].size(0);
  const int64_t O = offs.back();
  auto y = torch::empty({M, O}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  std::vector<const float*> wp(ws.size());
  for (size_t j = 0; j < ws.size(); ++j) wp[j] = ws[j].data_ptr<float>();
  const int64_t K16 = K / 16 * 16;
  #pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < O; ++row) {
    size_t j = 0;
    while (row >= offs[j + 1]) ++j;
    const float* w = wp[j] + (row - offs[j]) * K;
    __m256 a0[4], a1[4];
    for (int m = 0; m < 4; ++m) { a0[m] = _mm256_setzero_ps(); a1[m] = _mm256_setzero_ps(); }
    for (int64_t k = 0; k < K16; k += 16) {
      const __m256 w0 = _mm256_loadu_ps(w + k), w1 = _mm256_loadu_ps(w + k + 8);
      for (int m = 0; m < M; ++m) {
        a0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp + m * K + k), a0[m]);
        a1[m] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp + m * K + k + 8), a1[m]);
      }
    }
    for (int m = 0; m < M; ++m) {
      const __m256 a = _mm256_add_ps(a0[m], a1[m]);
      __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
      s = _mm_hadd_ps(s, s);
      s = _mm_hadd_ps(s, s);
      float acc = _mm_cvtss_f32(s);
      for (int64_t k = K16; k < K; ++k) acc += w[k] * xp[m * K + k];
      yp[m * O + row] = acc;
    }
  }
  return y;
}
"""

_lock = threading.Lock()
_module: Any = None
_tried = False


def _supported() -> str | None:
    capability = torch.backends.cpu.get_cpu_capability()
    if "AVX2" not in capability and "AVX512" not in capability:
        return f"CPU capability {capability} has no AVX2"
    return None


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
        problem = _supported()
        if problem:
            log.info("decode kernel not used: %s", problem)
            return None
        from torch.utils.cpp_extension import _get_build_directory, load_inline

        digest = hashlib.sha256(_SOURCE.encode()).hexdigest()[:10]
        name = f"persona_explorer_gemv_{digest}"
        try:
            built = any(Path(_get_build_directory(name, verbose=False)).glob("*.so"))
        except (OSError, RuntimeError):
            built = False
        if not built:
            log.warning("Compiling the CPU decode kernel (first run only, ~30 s)")
        try:
            _module = load_inline(
                name=name,
                cpp_sources=_SOURCE,
                functions=["grouped_gemv"],
                extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
        except (RuntimeError, OSError, ImportError) as exc:
            log.warning("decode kernel unavailable, using oneDNN: %s", exc)
            _module = None
        return _module


def usable(weights: list[torch.Tensor]) -> bool:
    return all(
        w.device.type == "cpu" and w.dtype == torch.float32 and w.is_contiguous() for w in weights
    )


def grouped_gemv(module: Any, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """``x`` [..., K] with at most MAX_ROWS rows -> [..., sum of output sizes]."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = module.grouped_gemv(flat, weights)
    return out.view(*x.shape[:-1], out.shape[-1])
