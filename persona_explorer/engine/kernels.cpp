#include <torch/extension.h>
#include <immintrin.h>
#include <cmath>
#include <cstring>
#include <algorithm>
#include <type_traits>
#include <vector>

// Weight formats, by code. Rows stay rows: a quantized row is K/32 blocks of 32 weights.
//   0 f32; 1 Q4_1 (GGUF blocks: fp16 d, fp16 m, 16 bytes of nibbles: w = d*q + m); 2 Q8_0 (GGUF
//   blocks: fp16 d, 32 int8: w = d*q); 3 bf16; 4 f16; 5 Q4_1X and 6 Q8_0X: the same blocks
//   repacked per row, every block's d (and m) widened to fp32 first, then the codes (saves two
//   fp16 conversions per block: 15-40 % faster at batch 1-2). d*q is exact in fp32 for both
//   block types, so fma(q, d, m) rounds once, as gguf's dequantize (d*q + m in fp32) does: the
//   weights are the same numbers.
enum { F32 = 0, Q4_1 = 1, Q8_0 = 2, BF16 = 3, F16 = 4, Q4_1X = 5, Q8_0X = 6 };

static inline float hsum(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s);
}

static inline __m256 half_scalar(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _mm256_set1_ps(_cvtsh_ss(h));
}

// 32 weights from 16 bytes of 4-bit codes: byte k holds weight k (low nibble) and k + 16.
static inline void q4_weights(const uint8_t* qs, __m256 d, __m256 m, __m256 w[4]) {
  const __m256i mask = _mm256_set1_epi32(0x0F);
  const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)qs));
  const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(qs + 8)));
  w[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b0, mask)), d, m);
  w[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b1, mask)), d, m);
  w[2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4)), d, m);
  w[3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4)), d, m);
}

// 32 weights from 32 signed 8-bit codes.
static inline void q8_weights(const uint8_t* qs, __m256 d, __m256 w[4]) {
  for (int j = 0; j < 4; ++j) {
    const __m128i q = _mm_loadl_epi64((const __m128i*)(qs + 8 * j));
    w[j] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
  }
}

// The 32 weights of block b of a row (or 32 consecutive weights of a plain row) as 4 x 8 floats.
// nb: blocks per row (the repacked layouts keep a row's scales first, then its codes).
template <int T>
static inline void load32(const uint8_t* row, int64_t b, __m256 w[4], int64_t nb) {
  if constexpr (T == F32) {
    const float* p = reinterpret_cast<const float*>(row) + b * 32;
    for (int j = 0; j < 4; ++j) w[j] = _mm256_loadu_ps(p + 8 * j);
  } else if constexpr (T == BF16) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + b * 32;
    for (int j = 0; j < 4; ++j) {
      const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(p + 8 * j)));
      w[j] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    }
  } else if constexpr (T == F16) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + b * 32;
    for (int j = 0; j < 4; ++j)
      w[j] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + 8 * j)));
  } else if constexpr (T == Q4_1) {
    const uint8_t* p = row + b * 20;
    q4_weights(p + 4, half_scalar(p), half_scalar(p + 2), w);
  } else if constexpr (T == Q4_1X) {
    const float* dm = reinterpret_cast<const float*>(row) + 2 * b;
    q4_weights(row + nb * 8 + b * 16, _mm256_broadcast_ss(dm), _mm256_broadcast_ss(dm + 1), w);
  } else if constexpr (T == Q8_0) {
    const uint8_t* p = row + b * 34;
    q8_weights(p + 2, half_scalar(p), w);
  } else {  // Q8_0X
    const float* d = reinterpret_cast<const float*>(row) + b;
    q8_weights(row + nb * 4 + b * 32, _mm256_broadcast_ss(d), w);
  }
}

// Weight k of a plain (f32, bf16, f16) row, for the tail after its last whole 32.
template <int T>
static inline float plain_at(const uint8_t* row, int64_t k) {
  if constexpr (T == F32) {
    return reinterpret_cast<const float*>(row)[k];
  } else if constexpr (T == BF16) {
    const uint32_t bits = uint32_t(reinterpret_cast<const uint16_t*>(row)[k]) << 16;
    float w;
    std::memcpy(&w, &bits, 4);
    return w;
  } else {
    return _cvtsh_ss(reinterpret_cast<const uint16_t*>(row)[k]);
  }
}

// Calls f(std::integral_constant<int, T>) for the runtime type code: one switch for every op.
template <typename Fn>
static inline void by_type(int64_t type, Fn&& f) {
  switch (type) {
    case Q4_1: f(std::integral_constant<int, Q4_1>{}); break;
    case Q4_1X: f(std::integral_constant<int, Q4_1X>{}); break;
    case Q8_0: f(std::integral_constant<int, Q8_0>{}); break;
    case Q8_0X: f(std::integral_constant<int, Q8_0X>{}); break;
    case BF16: f(std::integral_constant<int, BF16>{}); break;
    case F16: f(std::integral_constant<int, F16>{}); break;
    default: f(std::integral_constant<int, F32>{}); break;
  }
}

static inline bool is_block_type(int64_t type) {
  return type == Q4_1 || type == Q8_0 || type == Q4_1X || type == Q8_0X;
}

static inline int64_t row_bytes(int type, int64_t K) {
  switch (type) {
    case Q4_1: return K / 32 * 20;
    case Q4_1X: return K / 32 * 24;
    case Q8_0X: return K / 32 * 36;
    case Q8_0: return K / 32 * 34;
    case BF16: case F16: return K * 2;
    default: return K * 4;
  }
}

// out[m] = dot(row, x[m]) for M <= 2 rows of x, four accumulators per row (the FMA chains, not
// the loads, bound this loop once the weights are 4-bit). A row's sums run in the same order
// whether it comes alone or with another, so identical x rows agree bitwise.
template <int T, int M>
static inline void dot_rows(const uint8_t* row, const float* x, int64_t K, float* out,
                            int64_t stride) {
  static_assert(M == 1 || M == 2, "one or two rows per pass");
  constexpr int A = 4;
  __m256 acc[M][A];
  for (int m = 0; m < M; ++m)
    for (int a = 0; a < A; ++a) acc[m][a] = _mm256_setzero_ps();
  const int64_t nb = K / 32;
  __m256 w[4];
  for (int64_t b = 0; b < nb; ++b) {
    load32<T>(row, b, w, nb);
    const float* xb = x + b * 32;
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < 4; ++j)
        acc[m][j % A] = _mm256_fmadd_ps(w[j], _mm256_loadu_ps(xb + m * K + 8 * j), acc[m][j % A]);
  }
  for (int m = 0; m < M; ++m) {
    __m256 total = acc[m][0];
    for (int a = 1; a < A; ++a) total = _mm256_add_ps(total, acc[m][a]);
    float s = hsum(total);
    if constexpr (T == F32 || T == BF16 || T == F16) {
      // A tail shorter than a block (plain rows only: quantized rows are whole blocks).
      for (int64_t k = nb * 32; k < K; ++k) s += plain_at<T>(row, k) * x[m * K + k];
    }
    out[m * stride] = s;
  }
}

// Every row of x against one weight row. Up to two rows read the weights straight from their
// blocks; more rows decode the row once into `buf` (the same fp32 values) and take it two rows
// at a time. Either way each x row gets exactly the sums it would get alone, so a visitor's
// rows give the same bits in a batch of 2 or of 60 (the shared decoding batch relies on it).
template <int T>
static inline void dot_any(const uint8_t* row, const float* x, int64_t K, int64_t M, float* out,
                           int64_t stride, float* buf) {
  if (M == 1) return dot_rows<T, 1>(row, x, K, out, stride);
  if (M == 2) return dot_rows<T, 2>(row, x, K, out, stride);
  const int64_t nb = K / 32;
  __m256 w[4];
  for (int64_t b = 0; b < nb; ++b) {
    load32<T>(row, b, w, nb);
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(buf + b * 32 + 8 * j, w[j]);
  }
  if constexpr (T == F32 || T == BF16 || T == F16)
    for (int64_t k = nb * 32; k < K; ++k) buf[k] = plain_at<T>(row, k);
  const uint8_t* fp = reinterpret_cast<const uint8_t*>(buf);
  int64_t m = 0;
  for (; m + 2 <= M; m += 2) dot_rows<F32, 2>(fp, x + m * K, K, out + m * stride, stride);
  if (m < M) dot_rows<F32, 1>(fp, x + m * K, K, out + m * stride, stride);
}

// ----------------------------------------------------------------------------- AVX-512
// The same products with 16-lane registers, where the CPU has AVX-512F (``set_isa(1)``, chosen
// by kernels.py from /proc/cpuinfo). Bit for bit the AVX2 path's sums: a 16-lane accumulator
// holds two of the AVX2 path's four 8-lane ones side by side ([acc0 | acc1], [acc2 | acc3]),
// every lane sees the same fused multiply-adds in the same order, and the halves are added
// back in the AVX2 order before the same horizontal sum. What changes is the throughput: 32
// registers hold up to eight x rows' accumulators, so a block of weights is decoded once for
// eight rows (the shared batch), and the decode itself is twice as wide (one visitor).
#define PE_AVX512 __attribute__((target("avx512f")))

static int g_isa = 0;  // 0: AVX2, 1: AVX-512F

void set_isa(int64_t isa) { g_isa = isa == 1 ? 1 : 0; }
int64_t get_isa() { return g_isa; }

PE_AVX512 static inline __m256 hi256(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

// Weights 0-15 and 16-31 of block b, the values load32 gives as w[0..1] and w[2..3].
template <int T>
PE_AVX512 static inline void load32_512(const uint8_t* row, int64_t b, __m512& lo, __m512& hi,
                                        int64_t nb) {
  if constexpr (T == F32) {
    const float* p = reinterpret_cast<const float*>(row) + b * 32;
    lo = _mm512_loadu_ps(p);
    hi = _mm512_loadu_ps(p + 16);
  } else if constexpr (T == BF16) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + b * 32;
    lo = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
    hi = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(p + 16))), 16));
  } else if constexpr (T == F16) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + b * 32;
    lo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
    hi = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(p + 16)));
  } else if constexpr (T == Q4_1 || T == Q4_1X) {
    const uint8_t* qs;
    __m512 d, m;
    if constexpr (T == Q4_1) {
      const uint8_t* p = row + b * 20;
      uint16_t hd, hm;
      std::memcpy(&hd, p, 2);
      std::memcpy(&hm, p + 2, 2);
      d = _mm512_set1_ps(_cvtsh_ss(hd));
      m = _mm512_set1_ps(_cvtsh_ss(hm));
      qs = p + 4;
    } else {
      const float* dm = reinterpret_cast<const float*>(row) + 2 * b;
      d = _mm512_set1_ps(dm[0]);
      m = _mm512_set1_ps(dm[1]);
      qs = row + nb * 8 + b * 16;
    }
    // Byte k holds weight k (low nibble) and weight k + 16 (high nibble).
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)qs));
    const __m512i mask = _mm512_set1_epi32(0x0F);
    lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(bytes, mask)), d, m);
    hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4)), d, m);
  } else {  // Q8_0, Q8_0X
    const uint8_t* qs;
    __m512 d;
    if constexpr (T == Q8_0) {
      const uint8_t* p = row + b * 34;
      uint16_t hd;
      std::memcpy(&hd, p, 2);
      d = _mm512_set1_ps(_cvtsh_ss(hd));
      qs = p + 2;
    } else {
      d = _mm512_set1_ps(reinterpret_cast<const float*>(row)[b]);
      qs = row + nb * 4 + b * 32;
    }
    lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)qs))), d);
    hi = _mm512_mul_ps(
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(qs + 16)))), d);
  }
}

// out[r * stride] = dot(row, x[r]) for R <= 8 rows of x, each exactly as dot_rows computes it.
template <int T, int R>
PE_AVX512 static void dot_tile512(const uint8_t* row, const float* x, int64_t K, float* out,
                                  int64_t stride) {
  __m512 a[R], c[R];
  for (int r = 0; r < R; ++r) {
    a[r] = _mm512_setzero_ps();
    c[r] = _mm512_setzero_ps();
  }
  const int64_t nb = K / 32;
  __m512 lo, hi;
  for (int64_t b = 0; b < nb; ++b) {
    load32_512<T>(row, b, lo, hi, nb);
    const float* xb = x + b * 32;
    for (int r = 0; r < R; ++r) {
      a[r] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xb + r * K), a[r]);
      c[r] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + r * K + 16), c[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    __m256 total = _mm256_add_ps(_mm512_castps512_ps256(a[r]), hi256(a[r]));
    total = _mm256_add_ps(total, _mm512_castps512_ps256(c[r]));
    total = _mm256_add_ps(total, hi256(c[r]));
    float s = hsum(total);
    if constexpr (T == F32 || T == BF16 || T == F16) {
      for (int64_t k = nb * 32; k < K; ++k) s += plain_at<T>(row, k) * x[r * K + k];
    }
    out[r * stride] = s;
  }
}

// One weight row against R <= 8 rows of x.
template <int T>
PE_AVX512 static void dot_upto8(const uint8_t* row, const float* x, int64_t K, int64_t R,
                                float* out, int64_t stride) {
  switch (R) {
    case 1: dot_tile512<T, 1>(row, x, K, out, stride); break;
    case 2: dot_tile512<T, 2>(row, x, K, out, stride); break;
    case 3: dot_tile512<T, 3>(row, x, K, out, stride); break;
    case 4: dot_tile512<T, 4>(row, x, K, out, stride); break;
    case 5: dot_tile512<T, 5>(row, x, K, out, stride); break;
    case 6: dot_tile512<T, 6>(row, x, K, out, stride); break;
    case 7: dot_tile512<T, 7>(row, x, K, out, stride); break;
    default: dot_tile512<T, 8>(row, x, K, out, stride); break;
  }
}

// A decoding step reads every weight once, from memory, a few hundred bytes a row: left to the
// hardware prefetcher, which starts over at each 4 KB page and each new matrix, one visitor's
// products ran at 9 GB/s where a large matrix streams at 21. Each row's turn asks for the row
// PREFETCH_ROWS further on into L1 and the row PREFETCH_L2_ROWS further on into L2 (in the same
// matrix or the next of the group): a batch-1 step of the embedded model went from 11.7 to
// about 8 ms, a batch-2 step from 13.3 to 9.8 (2 cores; bench/bench_kernel_ab.py).
constexpr int64_t PREFETCH_ROWS = 4;
constexpr int64_t PREFETCH_L2_ROWS = 16;

// Always inlined: called per row from the AVX-512 body, a call to this default-target function
// made the products slower than no prefetch at all.
template <int HINT>
__attribute__((always_inline)) static inline void prefetch_row(
    int64_t r, int64_t K, const std::vector<const uint8_t*>& wp,
    const std::vector<int64_t>& types, const std::vector<int64_t>& offs, size_t j) {
  if (r >= offs.back()) return;
  while (r >= offs[j + 1]) ++j;
  const int64_t rb = row_bytes(types[j], K);
  const char* p = reinterpret_cast<const char*>(wp[j] + (r - offs[j]) * rb);
  for (int64_t i = 0; i < rb; i += 64) _mm_prefetch(p + i, static_cast<_mm_hint>(HINT));
}

__attribute__((always_inline)) static inline void prefetch_ahead(
    int64_t r, int64_t K, const std::vector<const uint8_t*>& wp,
    const std::vector<int64_t>& types, const std::vector<int64_t>& offs, size_t j) {
  prefetch_row<_MM_HINT_T0>(r + PREFETCH_ROWS, K, wp, types, offs, j);
  prefetch_row<_MM_HINT_T1>(r + PREFETCH_L2_ROWS, K, wp, types, offs, j);
}

// The AVX-512 body of grouped_gemv. Output rows go in chunks of 16 per thread; within a chunk,
// eight x rows at a time meet every weight row of the chunk, so those eight rows stay in L1
// while the chunk's weights (a few KB) stay in L2: each weight block is decoded once per eight
// x rows, and x is not streamed from L2 once per weight row.
PE_AVX512 static void gemv512(const float* xp, int64_t M, int64_t K,
                              const std::vector<const uint8_t*>& wp,
                              const std::vector<int64_t>& types,
                              const std::vector<int64_t>& offs, float* yp, const float* ap) {
  const int64_t O = offs.back();
  constexpr int64_t CH = 16;
  // Each thread takes one contiguous run of chunks, the order the weights lie in memory.
  #pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < O; c0 += CH) {
    const int64_t c1 = std::min(O, c0 + CH);
    for (int64_t m = 0; m < M; m += 8) {
      const int64_t R = std::min<int64_t>(8, M - m);
      for (int64_t r = c0; r < c1; ++r) {
        size_t j = 0;
        while (r >= offs[j + 1]) ++j;
        const uint8_t* row = wp[j] + (r - offs[j]) * row_bytes(types[j], K);
        if (m == 0) prefetch_ahead(r, K, wp, types, offs, j);
        by_type(types[j], [&](auto t) {
          dot_upto8<decltype(t)::value>(row, xp + m * K, K, R, yp + m * O + r, O);
        });
      }
    }
    if (ap)
      for (int64_t r = c0; r < c1; ++r)
        for (int64_t m = 0; m < M; ++m) yp[m * O + r] += ap[m * O + r];
  }
}

// y[m, off_j + o] = sum_k W_j[o, k] x[m, k] (+ add[m, off_j + o]) for every matrix j, any M.
torch::Tensor grouped_gemv(torch::Tensor x, std::vector<torch::Tensor> ws, std::vector<int64_t> types,
                           c10::optional<torch::Tensor> add) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous());
  TORCH_CHECK(ws.size() == types.size());
  const int64_t M = x.size(0), K = x.size(1);
  std::vector<int64_t> offs(ws.size() + 1, 0);
  std::vector<const uint8_t*> wp(ws.size());
  for (size_t j = 0; j < ws.size(); ++j) {
    TORCH_CHECK(ws[j].is_contiguous() && ws[j].dim() == 2);
    TORCH_CHECK(ws[j].size(1) * ws[j].element_size() == row_bytes(types[j], K), "weight width");
    TORCH_CHECK(!is_block_type(types[j]) || K % 32 == 0, "blocks need K % 32 == 0");
    offs[j + 1] = offs[j] + ws[j].size(0);
    wp[j] = static_cast<const uint8_t*>(ws[j].data_ptr());
  }
  const int64_t O = offs.back();
  auto y = torch::empty({M, O}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float* ap = nullptr;
  if (add.has_value()) {
    TORCH_CHECK(add->is_contiguous() && add->numel() == M * O);
    ap = add->data_ptr<float>();
  }
  if (g_isa == 1) {
    gemv512(xp, M, K, wp, types, offs, yp, ap);
    return y;
  }
  #pragma omp parallel
  {
    std::vector<float> buf(M > 2 ? K : 0);
    #pragma omp for schedule(static)
    for (int64_t r = 0; r < O; ++r) {
      size_t j = 0;
      while (r >= offs[j + 1]) ++j;
      const uint8_t* row = wp[j] + (r - offs[j]) * row_bytes(types[j], K);
      prefetch_ahead(r, K, wp, types, offs, j);
      by_type(types[j], [&](auto t) {
        dot_any<decltype(t)::value>(row, xp, K, M, yp + r, O, buf.data());
      });
      if (ap) for (int64_t m = 0; m < M; ++m) yp[m * O + r] += ap[m * O + r];
    }
  }
  return y;
}

// The fp32 weights a matrix stands for (tests, and the check against the model's own weights).
torch::Tensor dequantize(torch::Tensor w, int64_t type, int64_t K) {
  TORCH_CHECK(w.is_contiguous() && w.dim() == 2);
  TORCH_CHECK(!is_block_type(type) || K % 32 == 0, "blocks need K % 32 == 0");
  const int64_t O = w.size(0);
  auto y = torch::empty({O, K}, torch::kFloat32);
  const uint8_t* wp = static_cast<const uint8_t*>(w.data_ptr());
  float* yp = y.data_ptr<float>();
  const int64_t rb = row_bytes(type, K);
  TORCH_CHECK(w.size(1) * w.element_size() == rb, "weight width");
  #pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < O; ++r) {
    const uint8_t* row = wp + r * rb;
    float* out = yp + r * K;
    by_type(type, [&](auto t) {
      constexpr int T = decltype(t)::value;
      const int64_t nb = K / 32;
      __m256 v[4];
      for (int64_t b = 0; b < nb; ++b) {  // the same decode the products use
        load32<T>(row, b, v, nb);
        for (int j = 0; j < 4; ++j) _mm256_storeu_ps(out + b * 32 + 8 * j, v[j]);
      }
      if constexpr (T == F32 || T == BF16 || T == F16)
        for (int64_t k = nb * 32; k < K; ++k) out[k] = plain_at<T>(row, k);
    });
  }
  return y;
}

// HF's RMSNorm op for op: w * (x * rsqrt(mean(x^2) + eps)), rows of a [N, D] tensor.
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && w.scalar_type() == torch::kFloat32);
  auto xc = x.contiguous();
  const int64_t D = xc.size(-1), N = xc.numel() / D;
  auto y = torch::empty_like(xc);
  const float* xp = xc.data_ptr<float>();
  auto wc = w.contiguous();
  const float* wp = wc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  #pragma omp parallel for schedule(static) if (N > 4)
  for (int64_t n = 0; n < N; ++n) {
    const float* r = xp + n * D;
    float* o = yp + n * D;
    __m256 acc = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= D; k += 8) { const __m256 v = _mm256_loadu_ps(r + k); acc = _mm256_fmadd_ps(v, v, acc); }
    float ss = hsum(acc);
    for (; k < D; ++k) ss += r[k] * r[k];
    const float inv = 1.0f / std::sqrt(ss / float(D) + float(eps));
    const __m256 iv = _mm256_set1_ps(inv);
    for (k = 0; k + 8 <= D; k += 8)
      _mm256_storeu_ps(o + k, _mm256_mul_ps(_mm256_loadu_ps(wp + k), _mm256_mul_ps(_mm256_loadu_ps(r + k), iv)));
    for (; k < D; ++k) o[k] = wp[k] * (r[k] * inv);
  }
  return y;
}

// x*cos + rotate_half(x)*sin on one head of `2 * half` values, in place; mul then add/sub (no
// contraction), so the result is torch's to the bit.
static inline void rotate_head(float* x, const float* c, const float* s, int64_t half) {
  int64_t i = 0;
  for (; i + 8 <= half; i += 8) {
    const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + half + i);
    const __m256 ca = _mm256_loadu_ps(c + i), sa = _mm256_loadu_ps(s + i);
    const __m256 cb = _mm256_loadu_ps(c + half + i), sb = _mm256_loadu_ps(s + half + i);
    _mm256_storeu_ps(x + i, _mm256_sub_ps(_mm256_mul_ps(a, ca), _mm256_mul_ps(b, sa)));
    _mm256_storeu_ps(x + half + i, _mm256_add_ps(_mm256_mul_ps(b, cb), _mm256_mul_ps(a, sb)));
  }
  for (; i < half; ++i) {
    const float a = x[i], b = x[half + i];
    x[i] = a * c[i] - b * s[i];
    x[half + i] = b * c[half + i] + a * s[half + i];
  }
}

// Rotary embedding, in place, on the first `heads` heads of each row of qkv [N, width] (q then
// k: pass heads = q_heads + kv_heads). cos/sin [N, head_dim]. x*cos + rotate_half(x)*sin.
void rope_(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, int64_t heads, int64_t head_dim) {
  TORCH_CHECK(qkv.is_contiguous() && cos.is_contiguous() && sin.is_contiguous());
  TORCH_CHECK(qkv.scalar_type() == torch::kFloat32 && cos.scalar_type() == torch::kFloat32);
  const int64_t W = qkv.size(-1), N = qkv.numel() / W, half = head_dim / 2;
  float* p = qkv.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  #pragma omp parallel for schedule(static) if (N > 4)
  for (int64_t n = 0; n < N; ++n) {
    const float* c = cp + n * head_dim;
    const float* s = sp + n * head_dim;
    for (int64_t h = 0; h < heads; ++h) rotate_head(p + n * W + h * head_dim, c, s, half);
  }
}

// exp(x) for 8 floats: Cephes' expf (range reduction by ln 2, degree-5 polynomial), within
// 2 ulp of expf over the range that does not underflow; enough for softmax and SiLU.
static inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f),
                                              _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, z, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx),
                                                       _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// silu(gate) * up from the fused gate/up output [N, 2I] -> [N, I].
torch::Tensor silu_mul(torch::Tensor gate_up) {
  TORCH_CHECK(gate_up.scalar_type() == torch::kFloat32);
  auto g = gate_up.contiguous();
  const int64_t W = g.size(-1), I = W / 2, N = g.numel() / W;
  auto sizes = g.sizes().vec();
  sizes.back() = I;
  auto y = torch::empty(sizes, g.options());
  const float* gp = g.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  #pragma omp parallel for schedule(static) if (N * I > 16384)
  for (int64_t n = 0; n < N; ++n) {
    const float* a = gp + n * W;
    const float* u = a + I;
    float* o = yp + n * I;
    int64_t i = 0;
    for (; i + 8 <= I; i += 8) {
      const __m256 x = _mm256_loadu_ps(a + i);
      const __m256 den = _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, x)));
      _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_div_ps(x, den), _mm256_loadu_ps(u + i)));
    }
    for (; i < I; ++i) o[i] = a[i] / (1.0f + std::exp(-a[i])) * u[i];
  }
  return y;
}

// One session's part of a decoding step's attention, before the heads: RoPE on q and k (cos/sin
// [B, D]) in place, and k and v written into the caches [B, KV, T, D] at slot `pos`.
struct Attend {
  float* qp; float* kc; float* vc; const bool* ok; float* op;
  int64_t B, W, T, D, vstride, L;
};

static Attend attend_prepare(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin,
                             torch::Tensor kcache, torch::Tensor vcache, torch::Tensor valid,
                             int64_t pos, int64_t H, int64_t KV, float* op) {
  TORCH_CHECK(qkv.is_contiguous() && kcache.is_contiguous() && vcache.is_contiguous());
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && valid.is_contiguous());
  TORCH_CHECK(valid.scalar_type() == torch::kBool && qkv.scalar_type() == torch::kFloat32);
  const int64_t B = qkv.size(0), T = kcache.size(2), D = kcache.size(3), half = D / 2;
  TORCH_CHECK(qkv.size(1) == (H + 2 * KV) * D && pos < T && D % 8 == 0 && H % KV == 0);
  TORCH_CHECK(valid.size(0) == B && valid.size(1) > pos);
  Attend a{qkv.data_ptr<float>(), kcache.data_ptr<float>(), vcache.data_ptr<float>(),
           valid.data_ptr<bool>(), op, B, qkv.size(1), T, D, valid.size(1), pos + 1};
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H + KV; ++h)
      rotate_head(a.qp + b * a.W + h * D, cp + b * D, sp + b * D, half);
    for (int64_t g = 0; g < KV; ++g) {
      std::memcpy(a.kc + ((b * KV + g) * T + pos) * D, a.qp + b * a.W + (H + g) * D, D * 4);
      std::memcpy(a.vc + ((b * KV + g) * T + pos) * D, a.qp + b * a.W + (H + KV + g) * D, D * 4);
    }
  }
  return a;
}

// softmax(q k^T * scale) v of one (row, head) over the slots [0, pos] that `valid` marks. Each
// (row, head) runs the same code in the same order, so identical rows give identical outputs,
// whichever thread and whichever batch runs them. `sc`: room for L + 8 scores.
static void attend_head(const Attend& a, int64_t b, int64_t h, int64_t H, int64_t KV,
                        float scale, float* sc) {
  const int64_t D = a.D, T = a.T, L = a.L, g = h / (H / KV);
  const float* q = a.qp + b * a.W + h * D;
  const float* keys = a.kc + (b * KV + g) * T * D;
  const float* vals = a.vc + (b * KV + g) * T * D;
  const bool* mask = a.ok + b * a.vstride;
  float mx = -INFINITY;
  for (int64_t t = 0; t < L; ++t) {
    if (!mask[t]) { sc[t] = -INFINITY; continue; }
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < D; i += 8)
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(keys + t * D + i), acc);
    sc[t] = hsum(acc) * scale;
    mx = sc[t] > mx ? sc[t] : mx;
  }
  int64_t t = 0;
  const __m256 vmx = _mm256_set1_ps(mx);
  for (; t + 8 <= L; t += 8)
    _mm256_storeu_ps(sc + t, exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + t), vmx)));
  if (t < L) {
    float tmp[8];
    for (int j = 0; j < 8; ++j) tmp[j] = t + j < L ? sc[t + j] - mx : -100.0f;
    _mm256_storeu_ps(tmp, exp8(_mm256_loadu_ps(tmp)));
    for (int64_t j = 0; t + j < L; ++j) sc[t + j] = tmp[j];
  }
  float total = 0.0f;
  for (t = 0; t < L; ++t) {
    if (!mask[t]) sc[t] = 0.0f;
    total += sc[t];
  }
  const float inv = 1.0f / total;
  float* o = a.op + b * H * D + h * D;
  for (int64_t i0 = 0; i0 < D; i0 += 64) {  // up to 8 accumulators: one pass over t
    const int n = int(std::min<int64_t>(64, D - i0) / 8);
    __m256 acc[8];
    for (int j = 0; j < n; ++j) acc[j] = _mm256_setzero_ps();
    for (t = 0; t < L; ++t) {
      if (sc[t] == 0.0f) continue;
      const __m256 p = _mm256_set1_ps(sc[t]);
      const float* v = vals + t * D + i0;
      for (int j = 0; j < n; ++j) acc[j] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * j), acc[j]);
    }
    const __m256 vi = _mm256_set1_ps(inv);
    for (int j = 0; j < n; ++j) _mm256_storeu_ps(o + i0 + 8 * j, _mm256_mul_ps(acc[j], vi));
  }
}

// Every session's heads in one parallel region, handed out one (row, head) at a time: with a
// class's thirty sessions, a region (and its barrier) per session was thirty per layer, and each
// barrier waits for a worker the web layer may have descheduled.
static void attend_all(const std::vector<Attend>& parts, int64_t H, int64_t KV, double scale) {
  std::vector<int64_t> first(parts.size() + 1, 0);  // the first (row, head) item of each part
  int64_t longest = 0;
  for (size_t s = 0; s < parts.size(); ++s) {
    first[s + 1] = first[s] + parts[s].B * H;
    longest = std::max(longest, parts[s].L);
  }
  const int64_t items = first.back();
  #pragma omp parallel if (items > 1)
  {
    std::vector<float> sc(longest + 8);
    #pragma omp for schedule(dynamic, 4)
    for (int64_t i = 0; i < items; ++i) {
      const size_t s = std::upper_bound(first.begin(), first.end(), i) - first.begin() - 1;
      const int64_t bh = i - first[s];
      attend_head(parts[s], bh / H, bh % H, H, KV, float(scale), sc.data());
    }
  }
}

// One decoding step's attention for every row: RoPE on q and k (cos/sin [B, D]), k and v
// written into the caches [B, KV, T, D] at slot `pos`, then softmax(q k^T * scale) v over the
// slots [0, pos] that `valid` [B, >pos] marks. qkv [B, (H + 2 KV) * D] -> [B, H * D].
torch::Tensor decode_attention(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin,
                               torch::Tensor kcache, torch::Tensor vcache, torch::Tensor valid,
                               int64_t pos, int64_t H, int64_t KV, double scale) {
  auto out = torch::empty({qkv.size(0), H * kcache.size(3)}, qkv.options());
  attend_all({attend_prepare(qkv, cos, sin, kcache, vcache, valid, pos, H, KV,
                             out.data_ptr<float>())},
             H, KV, scale);
  return out;
}

// One decoder layer of one decoding step, in one call (the Python between a layer's seven ops
// cost about as much as its attention), for one session or several at once (the shared batch of
// every visitor): the rows of every session in h [N, d], session s owning `rows[s]` consecutive
// rows, its own caches and its own slot `pos[s]`. Llama-family layout: pre-norms, q/k/v
// (optional bias), o, SiLU-gated MLP, two residual adds. The products run once over all N rows
// (each row's sums the same whatever N); attention runs per session against its own cache.
torch::Tensor decode_layer_many(torch::Tensor h, torch::Tensor ln1, torch::Tensor ln2, double eps,
                                std::vector<torch::Tensor> qkv_w, std::vector<int64_t> qkv_t,
                                c10::optional<torch::Tensor> qkv_bias,
                                std::vector<torch::Tensor> o_w, std::vector<int64_t> o_t,
                                std::vector<torch::Tensor> gu_w, std::vector<int64_t> gu_t,
                                std::vector<torch::Tensor> down_w, std::vector<int64_t> down_t,
                                torch::Tensor cos, torch::Tensor sin,
                                std::vector<torch::Tensor> kcaches,
                                std::vector<torch::Tensor> vcaches,
                                std::vector<torch::Tensor> valids, std::vector<int64_t> pos,
                                std::vector<int64_t> rows, int64_t H, int64_t KV, double scale) {
  const size_t S = rows.size();
  TORCH_CHECK(kcaches.size() == S && vcaches.size() == S && valids.size() == S && pos.size() == S);
  int64_t total = 0;
  for (int64_t r : rows) total += r;
  TORCH_CHECK(total == h.size(0) && cos.size(0) == total && sin.size(0) == total);
  auto x = rms_norm(h, ln1, eps);
  auto qkv = grouped_gemv(x, qkv_w, qkv_t, c10::nullopt);
  if (qkv_bias.has_value()) qkv.add_(*qkv_bias);
  const int64_t D = kcaches[0].size(3);
  auto attn = torch::empty({total, H * D}, qkv.options());
  std::vector<Attend> parts;
  parts.reserve(S);
  int64_t off = 0;
  for (size_t s = 0; s < S; ++s) {
    parts.push_back(attend_prepare(qkv.narrow(0, off, rows[s]), cos.narrow(0, off, rows[s]),
                                   sin.narrow(0, off, rows[s]), kcaches[s], vcaches[s],
                                   valids[s], pos[s], H, KV, attn.data_ptr<float>() + off * H * D));
    off += rows[s];
  }
  attend_all(parts, H, KV, scale);
  auto h1 = grouped_gemv(attn, o_w, o_t, h);
  auto gu = grouped_gemv(rms_norm(h1, ln2, eps), gu_w, gu_t, c10::nullopt);
  return grouped_gemv(silu_mul(gu), down_w, down_t, h1);
}

// The bindings, written out rather than generated (load_inline's `functions=`) so that every
// kernel lets go of the interpreter lock while it runs: the app's web threads then serve pages
// during a decoding step's products instead of queueing for the lock between them, which left a
// core idle whenever they held it.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using nogil = py::call_guard<py::gil_scoped_release>;
  m.def("grouped_gemv", &grouped_gemv, nogil());
  m.def("dequantize", &dequantize, nogil());
  m.def("rms_norm", &rms_norm, nogil());
  m.def("rope_", &rope_, nogil());
  m.def("silu_mul", &silu_mul, nogil());
  m.def("decode_attention", &decode_attention, nogil());
  m.def("decode_layer_many", &decode_layer_many, nogil());
  m.def("set_isa", &set_isa);
  m.def("get_isa", &get_isa);
}
