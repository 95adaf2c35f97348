// chipfuse fast decode: a stage's decoder layers for rows of one new token each, in one C++ call.
//
// The Python path spends ~150-200 us per layer dispatching ~40 small PyTorch ops for a single
// token. Here the matmuls are PyTorch's own CPU kernels (_weight_int4pack_mm_for_cpu or a dense
// GEMM), except INT8, FP8, BF16 and FP16, whose one-token rows run a GEMV of ours (mm_bytes); norms, rotary embedding, the KV-cache write, attention
// and the gated MLP's activation are plain loops over float32, with the same math as
// StageModel._layer. Prefill, calibration capture and scoring stay on the Python path. A tensor shard
// runs here too: its group's all-reduce is a Python callback between each layer's halves (set_reduce),
// and its o / down parts are int4_partial's unrounded fp32 sums.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include <algorithm>
#include <type_traits>
#include <cmath>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// the codes quant/formats.py gives each format (Format.kind, KIND_*): keep the two in step
enum Kind { DENSE_F32 = 0, DENSE_HALF = 1, INT8 = 2, INT4 = 3, FP8 = 4, INT4_PARTIAL = 100 };

struct Lin {
  int64_t kind = 0;
  at::Tensor w, s;        // weight (dense, int8 codes, int4 packed, fp8) and scales (int8 / int4)
  int64_t group = 0;      // int4 group size
  int64_t pad = 0;        // int4: zero columns appended to the activations
  int64_t lpad = 0;       // int4 partial: zero columns in front of the activations
  bool partial = false;   // a tensor shard's part of a sum: the group's sum is rounded as the whole kernel's would be
  double scale = 1.0;     // fp8 tensor scale
  at::Tensor lora_a, lora_b;  // LoRA adapters served unmerged (float32): y += lora_b (lora_a x); undefined if none
};

inline float ld(const float* p) { return *p; }
inline float ld(const double* p) { return static_cast<float>(*p); }
inline void st(double* p, float v) { *p = v; }
inline float ld(const at::BFloat16* p) { return static_cast<float>(*p); }
inline float ld(const at::Half* p) { return static_cast<float>(*reinterpret_cast<const _Float16*>(p)); }
inline void st(float* p, float v) { *p = v; }
inline void st(at::BFloat16* p, float v) { *p = at::BFloat16(v); }
inline void st(at::Half* p, float v) { *reinterpret_cast<_Float16*>(p) = static_cast<_Float16>(v); }

// n values of a KV cache (any floating dtype) widened to float; fp16 uses the CPU's F16C converts
// where present (GCC otherwise converts _Float16 one element at a time in software)
template <typename T>
void widen(const T* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = ld(src + i);
}
#if defined(__F16C__)
template <>
void widen<at::Half>(const at::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i].x);
}
#endif

// float [T, K] -> the kernel's input dtype, with `pad` zero columns
at::Tensor to_input(const float* x, int64_t t, int64_t k, int64_t pad, at::ScalarType dt) {
  at::Tensor out = at::empty({t, k + pad}, at::TensorOptions().dtype(dt));
  if (dt == at::kFloat) {
    std::memcpy(out.data_ptr<float>(), x, sizeof(float) * t * k);
    return out;
  }
  AT_DISPATCH_REDUCED_FLOATING_TYPES(dt, "to_input", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t r = 0; r < t; ++r) {
      for (int64_t i = 0; i < k; ++i) st(o + r * (k + pad) + i, x[r * k + i]);
      for (int64_t i = k; i < k + pad; ++i) st(o + r * (k + pad) + i, 0.0f);
    }
  });
  return out;
}

// any floating [T, N] -> float buffer
void to_float(const at::Tensor& y, float* out) {
  const int64_t n = y.numel();
  if (y.scalar_type() == at::kFloat) {
    std::memcpy(out, y.data_ptr<float>(), sizeof(float) * n);
    return;
  }
  AT_DISPATCH_REDUCED_FLOATING_TYPES(y.scalar_type(), "to_float", [&] {
    const scalar_t* p = y.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) out[i] = ld(p + i);
  });
}

// Weight codes the GEMV below widens to float: one byte (INT8, FP8 E4M3, FP8 E5M2) or two (BF16,
// FP16). Both FP8 formats become IEEE half by moving bits (E5M2 is half's top byte; E4M3's 4-bit
// exponent and 3-bit mantissa shifted into half's fields read exactly 2^-8 of the value, subnormals
// included, and the 2^8 is folded into the scale), then the CPU's half->float convert; our
// quantizer never writes E4M3's NaN code. BF16 is float's top half.
enum class Codes { I8, E4M3, E5M2, BF16, F16 };

template <Codes C>
using code_t = typename std::conditional<C == Codes::BF16 || C == Codes::F16, uint16_t, uint8_t>::type;

template <Codes C>
constexpr float code_unit() { return C == Codes::E4M3 ? 256.0f : 1.0f; }  // widened value * unit = true value

template <Codes C>
inline float widen1(code_t<C> b) {
  if (C == Codes::I8) return float(static_cast<int8_t>(b));
  if (C == Codes::E5M2) return static_cast<float>(c10::Float8_e5m2(uint8_t(b), c10::Float8_e5m2::from_bits()));
  if (C == Codes::E4M3)
    return static_cast<float>(c10::Float8_e4m3fn(uint8_t(b), c10::Float8_e4m3fn::from_bits())) / 256.0f;
  if (C == Codes::BF16) return static_cast<float>(c10::BFloat16(b, c10::BFloat16::from_bits()));
  return static_cast<float>(c10::Half(b, c10::Half::from_bits()));
}

#if defined(__AVX512F__)
template <Codes C>
inline __m512 widen16(const code_t<C>* p) {
  if (C == Codes::BF16)
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  if (C == Codes::F16) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (C == Codes::I8) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw));
  const __m256i b = _mm256_cvtepu8_epi16(raw);
  if (C == Codes::E5M2) return _mm512_cvtph_ps(_mm256_slli_epi16(b, 8));
  return _mm512_cvtph_ps(_mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x80)), 8),
                                         _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x7F)), 7)));
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
template <Codes C>
inline __m256 widen8(const code_t<C>* p) {
  if (C == Codes::BF16)
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  if (C == Codes::F16) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  if (C == Codes::I8) return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw));
  const __m128i b = _mm_cvtepu8_epi16(raw);
  if (C == Codes::E5M2) return _mm256_cvtph_ps(_mm_slli_epi16(b, 8));
  return _mm256_cvtph_ps(_mm_or_si128(_mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8),
                                      _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7F)), 7)));
}
#endif

// Four weight rows (row stride K) against one float row x: four independent FMA chains that share
// each load of x; the next four rows are prefetched, so the weights stream from DRAM near its
// bandwidth (PyTorch's _weight_int8pack_mm reached about half of it here for one token).
template <Codes C>
inline void dot4(const code_t<C>* w, int64_t K, const float* x, float* out) {
  int64_t k = 0;
  for (int r = 0; r < 4; ++r) out[r] = 0.f;
#if defined(__AVX512F__)
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  for (; k + 16 <= K; k += 16) {
    if ((k * sizeof(code_t<C>)) % 64 == 0)  // one prefetch per cache line
      for (int r = 4; r < 8; ++r) _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k), _MM_HINT_T0);
    const __m512 xv = _mm512_loadu_ps(x + k);
    a0 = _mm512_fmadd_ps(widen16<C>(w + k), xv, a0);
    a1 = _mm512_fmadd_ps(widen16<C>(w + K + k), xv, a1);
    a2 = _mm512_fmadd_ps(widen16<C>(w + 2 * K + k), xv, a2);
    a3 = _mm512_fmadd_ps(widen16<C>(w + 3 * K + k), xv, a3);
  }
  out[0] = _mm512_reduce_add_ps(a0);
  out[1] = _mm512_reduce_add_ps(a1);
  out[2] = _mm512_reduce_add_ps(a2);
  out[3] = _mm512_reduce_add_ps(a3);
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (; k + 8 <= K; k += 8) {
    if ((k * sizeof(code_t<C>)) % 64 == 0)  // one prefetch per cache line
      for (int r = 4; r < 8; ++r) _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k), _MM_HINT_T0);
    const __m256 xv = _mm256_loadu_ps(x + k);
    for (int r = 0; r < 4; ++r) a[r] = _mm256_fmadd_ps(widen8<C>(w + r * K + k), xv, a[r]);
  }
  for (int r = 0; r < 4; ++r) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a[r]), _mm256_extractf128_ps(a[r], 1));
    h = _mm_hadd_ps(h, h);
    h = _mm_hadd_ps(h, h);
    out[r] = _mm_cvtss_f32(h);
  }
#endif
  for (; k < K; ++k)
    for (int r = 0; r < 4; ++r) out[r] += widen1<C>(w[r * K + k]) * x[k];
}

// y[T, N] = x[T, K] @ (codes * scale)^T for codes [N, K], with a bf16 scale per row (INT8) or one
// scale for the tensor (FP8; 1 for BF16/FP16): FP32 activations and accumulation, for decode rows
template <Codes C>
void mm_codes_into(const float* x, int64_t t, int64_t k, const void* wv, int64_t n, const at::BFloat16* row_scale,
                   float tensor_scale, float* y) {
  const auto* w = static_cast<const code_t<C>*>(wv);
  tensor_scale *= code_unit<C>();
  at::parallel_for(0, (n + 3) / 4, 16, [&](int64_t b0, int64_t b1) {
    float o[4];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = 4 * b;
      for (int64_t i = 0; i < t; ++i) {
        if (r0 + 4 <= n) {
          dot4<C>(w + r0 * k, k, x + i * k, o);
        } else {  // the last rows when N is not a multiple of 4
          for (int64_t r = r0; r < n; ++r) {
            float acc = 0.f;
            for (int64_t j = 0; j < k; ++j) acc += widen1<C>(w[r * k + j]) * x[i * k + j];
            o[r - r0] = acc;
          }
        }
        for (int64_t r = r0; r < std::min(r0 + 4, n); ++r)
          y[i * n + r] = o[r - r0] * (row_scale ? static_cast<float>(row_scale[r]) : tensor_scale);
      }
    }
  });
}

// the GEMV for an INT8 (q int8, s bf16 [N]), FP8 (w float8, one tensor scale) or BF16/FP16 weight
void mm_bytes_into(const float* x, int64_t t, int64_t k, const at::Tensor& w, const at::Tensor& s, double scale,
                   float* y) {
  const void* wp = w.data_ptr();
  const int64_t n = w.size(0);
  switch (w.scalar_type()) {
    case at::kChar:
      mm_codes_into<Codes::I8>(x, t, k, wp, n, s.data_ptr<at::BFloat16>(), 1.0f, y);
      break;
    case at::kFloat8_e4m3fn:
      mm_codes_into<Codes::E4M3>(x, t, k, wp, n, nullptr, float(scale), y);
      break;
    case at::kFloat8_e5m2:
      mm_codes_into<Codes::E5M2>(x, t, k, wp, n, nullptr, float(scale), y);
      break;
    case at::kBFloat16:
      mm_codes_into<Codes::BF16>(x, t, k, wp, n, nullptr, float(scale), y);
      break;
    case at::kHalf:
      mm_codes_into<Codes::F16>(x, t, k, wp, n, nullptr, float(scale), y);
      break;
    default:
      throw std::runtime_error("decode GEMV: weights must be int8, float8_e4m3fn, float8_e5m2, bfloat16 or float16");
  }
}

// Python entry: y = x @ (w * scale)^T; `s` the INT8 row scales (ignored for FP8, pass any tensor)
at::Tensor mm_bytes(at::Tensor x, at::Tensor w, at::Tensor s, double scale) {
  x = x.to(at::kFloat).contiguous();
  w = w.contiguous();
  if (w.scalar_type() == at::kChar) s = s.to(at::kBFloat16).contiguous();
  at::Tensor y = at::empty({x.size(0), w.size(0)}, x.options());
  mm_bytes_into(x.data_ptr<float>(), x.size(0), x.size(1), w, s, scale, y.data_ptr<float>());
  return y;
}

// A tensor shard's INT4 input-column cut: y[T, N] = bf16(x)[T, K] @ W^T summed in fp32 and NOT rounded (the
// packed kernel rounds its output to bf16; the group's sum of these is rounded once, as the whole layer's is).
// codes [N, KP / 2] two per byte, low nibble first; sz [N, KP / group, 2] bf16 (scale, zero): w = (q - 8) s + z;
// the input meets `lpad` zero columns in front and `pad` behind (KP = lpad + K + pad).
void int4_partial_into(const float* x, int64_t t, int64_t k, const uint8_t* codes, const at::BFloat16* sz, int64_t n,
                       int64_t group, int64_t lpad, int64_t pad, float* out) {
  // sum_i x_i ((q_i - 8) s + z) over a group = s sum_i (q_i - 8) x_i + z sx, sx = sum_i x_i; the activations
  // are split into even and odd columns so each code byte meets its two inputs in one vectorizable loop
  const int64_t kp = lpad + k + pad, ng = kp / group, half = kp / 2;
  std::vector<float> xe(t * half, 0.f), xo(t * half, 0.f), sx(t * ng, 0.f);
  for (int64_t r = 0; r < t; ++r)
    for (int64_t i = 0; i < k; ++i) {
      const int64_t c = lpad + i;
      const float v = float(at::BFloat16(x[r * k + i]));
      (c % 2 ? xo : xe)[r * half + c / 2] = v;
      sx[r * ng + c / group] += v;
    }
  // 16 lanes side by side: one group of 32 codes is 16 bytes, each lane a byte's two codes; a group's scale
  // multiplies its 16 lane sums into the row's 16 running totals (the compiler keeps both in vector registers)
  constexpr int64_t L = 16;
  const bool lanes = group % (2 * L) == 0;
  at::parallel_for(0, n, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t j = n0; j < n1; ++j) {
      const uint8_t* c = codes + j * half;
      const at::BFloat16* g = sz + j * ng * 2;
      for (int64_t r = 0; r < t; ++r) {
        const float* e = xe.data() + r * half;
        const float* o = xo.data() + r * half;
        float acc = 0.f;
        if (lanes) {
#if defined(__AVX512F__)
          __m512 tot = _mm512_setzero_ps();
          const __m512i m15 = _mm512_set1_epi32(15), m8 = _mm512_set1_epi32(8);
          for (int64_t gi = 0; gi < ng; ++gi) {
            const __m512 vs = _mm512_set1_ps(float(g[2 * gi]));
            for (int64_t b0 = gi * group / 2; b0 < (gi + 1) * group / 2; b0 += L) {
              const __m512i ci = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + b0)));
              const __m512 lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(ci, m15), m8));
              const __m512 hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(ci, 4), m8));
              const __m512 part = _mm512_fmadd_ps(hi, _mm512_loadu_ps(o + b0), _mm512_mul_ps(lo, _mm512_loadu_ps(e + b0)));
              tot = _mm512_fmadd_ps(vs, part, tot);
            }
            acc += float(g[2 * gi + 1]) * sx[r * ng + gi];
          }
          acc += _mm512_reduce_add_ps(tot);
#else
          float tot[L] = {0.f};
          for (int64_t gi = 0; gi < ng; ++gi) {
            const float s = float(g[2 * gi]), z = float(g[2 * gi + 1]), gx = sx[r * ng + gi];
            for (int64_t b0 = gi * group / 2; b0 < (gi + 1) * group / 2; b0 += L) {
              float part[L];
              for (int64_t l = 0; l < L; ++l)  // signed codes: no large sums that cancel later
                part[l] = float(int(c[b0 + l] & 0xF) - 8) * e[b0 + l] + float(int(c[b0 + l] >> 4) - 8) * o[b0 + l];
              for (int64_t l = 0; l < L; ++l) tot[l] += s * part[l];
            }
            acc += z * gx;
          }
          for (int64_t l = 0; l < L; ++l) acc += tot[l];
#endif
        } else {
          for (int64_t gi = 0; gi < ng; ++gi) {
            float dq = 0.f;
            for (int64_t b = gi * group / 2; b < (gi + 1) * group / 2; ++b)
              dq += float(int(c[b] & 0xF) - 8) * e[b] + float(int(c[b] >> 4) - 8) * o[b];
            const float s = float(g[2 * gi]), z = float(g[2 * gi + 1]), gx = sx[r * ng + gi];
            acc += s * dq + z * gx;
          }
        }
        out[r * n + j] = acc;
      }
    }
  });
}

// Rows of a prompt (t >= PARTIAL_GEMM_ROWS): the GEMV above re-reads and re-expands every code for every row;
// instead the cut is expanded once to fp32, w = (q - 8) s + z, and multiplied as one fp32 GEMM with the
// bf16-rounded rows (zeros where the cut is padded): the same sums, unrounded, in the GEMM's order.
constexpr int64_t PARTIAL_GEMM_ROWS = 4;

at::Tensor int4_partial_gemm(const at::Tensor& xf, const at::Tensor& codes, const at::Tensor& sz, int64_t group,
                             int64_t lpad, int64_t pad) {
  const int64_t t = xf.size(0), k = xf.size(1), n = codes.size(0), kp = lpad + k + pad, ng = kp / group;
  at::Tensor w = at::empty({n, kp}, at::kFloat);
  const uint8_t* c = codes.data_ptr<uint8_t>();
  const at::BFloat16* g = sz.data_ptr<at::BFloat16>();
  float* wp = w.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t j = n0; j < n1; ++j)
      for (int64_t gi = 0; gi < ng; ++gi) {
        const float s = float(g[(j * ng + gi) * 2]), z = float(g[(j * ng + gi) * 2 + 1]);
        const uint8_t* cb = c + j * (kp / 2) + gi * group / 2;
        float* out = wp + j * kp + gi * group;
        for (int64_t b = 0; b < group / 2; ++b) {  // a byte: its low code first
          out[2 * b] = float(int(cb[b] & 0xF) - 8) * s + z;
          out[2 * b + 1] = float(int(cb[b] >> 4) - 8) * s + z;
        }
      }
  });
  at::Tensor xb = at::zeros({t, kp}, at::kFloat);
  xb.narrow(1, lpad, k).copy_(xf.to(at::kBFloat16).to(at::kFloat));
  return at::mm(xb, w.t());
}

at::Tensor int4_partial(at::Tensor x, at::Tensor codes, at::Tensor sz, int64_t group, int64_t lpad, int64_t pad) {
  at::Tensor xf = x.to(at::kFloat).contiguous();
  const int64_t t = xf.size(0), k = xf.size(1), n = codes.size(0);
  if (lpad + k + pad != 2 * codes.size(1)) throw std::runtime_error("int4 partial: input width does not match codes");
  if (t >= PARTIAL_GEMM_ROWS) return int4_partial_gemm(xf, codes, sz, group, lpad, pad);
  at::Tensor out = at::empty({t, n}, at::kFloat);
  int4_partial_into(xf.data_ptr<float>(), t, k, codes.data_ptr<uint8_t>(), sz.data_ptr<at::BFloat16>(), n, group, lpad,
                    pad, out.data_ptr<float>());
  return out;
}

// y[T, N] = x[T, K] @ W^T in the layer's format, written as float into `out`
void linear_base(const Lin& L, const float* x, int64_t t, int64_t k, float* out) {
  at::Tensor y;
  switch (L.kind) {
    case DENSE_F32:
      y = at::linear(at::from_blob(const_cast<float*>(x), {t, k}), L.w);
      break;
    case DENSE_HALF:
    case INT8:
    case FP8:
      mm_bytes_into(x, t, k, L.w, L.s, L.scale, out);
      return;
    case INT4:
      y = at::_weight_int4pack_mm_for_cpu(to_input(x, t, k, L.pad, at::kBFloat16), L.w, L.group, L.s);
      break;
    case INT4_PARTIAL:
      int4_partial_into(x, t, k, L.w.data_ptr<uint8_t>(), L.s.data_ptr<at::BFloat16>(), L.w.size(0), L.group,
                        L.lpad, L.pad, out);
      return;

    default:
      throw std::runtime_error("unknown linear kind");
  }
  y = y.contiguous();
  to_float(y, out);
}

// the held kernel's product, plus the adapters' low-rank term where a layer serves LoRA adapters (the fused
// projections stack their adapters: A's rows one block per projection, B block-diagonal)
void linear(const Lin& L, const float* x, int64_t t, int64_t k, float* out) {
  linear_base(L, x, t, k, out);
  if (!L.lora_a.defined()) return;
  at::Tensor xin = at::from_blob(const_cast<float*>(x), {t, k});
  at::Tensor add = at::matmul(at::matmul(xin, L.lora_a.t()), L.lora_b.t()).contiguous();
  const float* a = add.data_ptr<float>();
  for (int64_t i = 0; i < add.numel(); ++i) out[i] += a[i];
}

void rms_norm(const float* x, const float* w, int64_t n, double eps, float* out) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  const float r = float(1.0 / std::sqrt(ss / n + eps));
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * r * w[i];
}

struct Layer {
  at::Tensor attn_norm, mlp_norm, qkv_bias, q_norm, k_norm;  // float32; bias/norms may be undefined
  Lin qkv, o, gate_up, down;
};

class Stage {
 public:
  Stage(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t inter, double eps,
        at::Tensor cos, at::Tensor sin)
      : h_(hidden), nh_(heads), nkv_(kv_heads), hd_(head_dim), inter_(inter), eps_(eps),
        cos_(cos.contiguous()), sin_(sin.contiguous()) {}

  void add_layer(at::Tensor attn_norm, at::Tensor mlp_norm, c10::optional<at::Tensor> qkv_bias,
                 c10::optional<at::Tensor> q_norm, c10::optional<at::Tensor> k_norm, py::tuple qkv, py::tuple o,
                 py::tuple gate_up, py::tuple down) {
    Layer l;
    l.attn_norm = attn_norm.contiguous();
    l.mlp_norm = mlp_norm.contiguous();
    if (qkv_bias) l.qkv_bias = qkv_bias->contiguous();
    if (q_norm) l.q_norm = q_norm->to(at::kFloat).contiguous();
    if (k_norm) l.k_norm = k_norm->to(at::kFloat).contiguous();
    l.qkv = lin(qkv);
    l.o = lin(o);
    l.gate_up = lin(gate_up);
    l.down = lin(down);
    layers_.push_back(std::move(l));
  }

  // caches: [k0, v0, k1, v1, ...], each [kv_heads, context, head_dim]
  void set_slot(int64_t slot, std::vector<at::Tensor> caches) {
    if ((int64_t)caches.size() != 2 * (int64_t)layers_.size()) throw std::runtime_error("one K and V per layer");
    slots_[slot] = std::move(caches);
  }
  void free_slot(int64_t slot) { slots_.erase(slot); }

  // LoRA adapters of layer `layer`'s projection `which` (0 qkv, 1 o, 2 gate_up, 3 down): y += b (a x)
  void set_lora(int64_t layer, int64_t which, at::Tensor a, at::Tensor b) {
    if (layer < 0 || layer >= (int64_t)layers_.size() || which < 0 || which > 3) throw std::runtime_error("no such layer projection");
    Layer& l = layers_[layer];
    Lin& lin = which == 0 ? l.qkv : which == 1 ? l.o : which == 2 ? l.gate_up : l.down;
    lin.lora_a = a.to(at::kFloat).contiguous();
    lin.lora_b = b.to(at::kFloat).contiguous();
  }

  // a tensor shard's partial attention and MLP outputs are summed over its group by fn(tensor [T, H]),
  // called with the GIL held between the layer's halves (torch.distributed's all-reduce, in place)
  void set_reduce(py::object fn) { reduce_ = std::move(fn); }

  // x [T, H] float32, row r is slot slots[r] at position pos[r]; returns the hidden state after the layers
  at::Tensor forward(at::Tensor x_in, std::vector<int64_t> slots, std::vector<int64_t> pos) {
    at::Tensor x = x_in.to(at::kFloat).contiguous().clone();
    const int64_t t = x.size(0);
    if ((int64_t)slots.size() != t || (int64_t)pos.size() != t) throw std::runtime_error("one slot and position per row");
    const int64_t qd = nh_ * hd_, kvd = nkv_ * hd_, qkvd = qd + 2 * kvd, ctx = cos_.size(0);
    std::vector<float> h(t * std::max(h_, qd)), qkv(t * qkvd), attn(t * qd), o(t * h_), gu(t * 2 * inter_),
        act(t * inter_);
    std::vector<std::vector<at::Tensor>*> caches(t);
    for (int64_t r = 0; r < t; ++r) {
      auto it = slots_.find(slots[r]);
      if (it == slots_.end()) throw std::runtime_error("slot " + std::to_string(slots[r]) + " has no KV cache");
      if (pos[r] < 0 || pos[r] >= ctx) throw std::runtime_error("position outside the context");
      caches[r] = &it->second;
    }
    float* xp = x.data_ptr<float>();
    const float* cs = cos_.data_ptr<float>();
    const float* sn = sin_.data_ptr<float>();
    const float scale = 1.0f / std::sqrt(float(hd_));
    const int64_t group = nh_ / nkv_, half = hd_ / 2;

    for (size_t li = 0; li < layers_.size(); ++li) {
      const Layer& L = layers_[li];
      for (int64_t r = 0; r < t; ++r)
        rms_norm(xp + r * h_, L.attn_norm.data_ptr<float>(), h_, eps_, h.data() + r * h_);
      linear(L.qkv, h.data(), t, h_, qkv.data());
      for (int64_t r = 0; r < t; ++r) {
        float* row = qkv.data() + r * qkvd;
        if (L.qkv_bias.defined()) {
          const float* b = L.qkv_bias.data_ptr<float>();
          for (int64_t i = 0; i < qkvd; ++i) row[i] += b[i];
        }
        // optional per-head norms (Qwen3), then rotary embedding on query and key heads
        for (int64_t hh = 0; hh < nh_ + nkv_; ++hh) {
          float* v = row + hh * hd_;
          const at::Tensor& nw = hh < nh_ ? L.q_norm : L.k_norm;
          if (nw.defined()) rms_norm(v, nw.data_ptr<float>(), hd_, eps_, v);
          const float* c = cs + pos[r] * hd_;
          const float* s = sn + pos[r] * hd_;
          for (int64_t i = 0; i < half; ++i) {
            const float a = v[i], b = v[i + half];
            v[i] = a * c[i] - b * s[i];
            v[i + half] = b * c[i + half] + a * s[i + half];
          }
        }
        attend(r, li, row, pos[r], *caches[r], attn.data() + r * qd, scale, group);
      }
      linear(L.o, attn.data(), t, qd, o.data());
      sum(o.data(), t, L.o.partial);
      for (int64_t i = 0; i < t * h_; ++i) xp[i] += o[i];
      for (int64_t r = 0; r < t; ++r)
        rms_norm(xp + r * h_, L.mlp_norm.data_ptr<float>(), h_, eps_, h.data() + r * h_);
      linear(L.gate_up, h.data(), t, h_, gu.data());
      for (int64_t r = 0; r < t; ++r) {
        const float* g = gu.data() + r * 2 * inter_;
        float* a = act.data() + r * inter_;
        for (int64_t i = 0; i < inter_; ++i) a[i] = g[i] / (1.0f + std::exp(-g[i])) * g[i + inter_];
      }
      linear(L.down, act.data(), t, inter_, o.data());
      sum(o.data(), t, L.down.partial);
      for (int64_t i = 0; i < t * h_; ++i) xp[i] += o[i];
    }
    return x;
  }

 private:
  void sum(float* buf, int64_t t, bool round_bf16) {
    if (!reduce_) return;
    {
      py::gil_scoped_acquire gil;
      at::Tensor part = torch::from_blob(buf, {t, h_}, at::kFloat);
      at::Tensor got = reduce_(part).cast<at::Tensor>();
      if (got.data_ptr<float>() != buf) std::memcpy(buf, got.contiguous().data_ptr<float>(), sizeof(float) * t * h_);
    }
    if (round_bf16)
      for (int64_t i = 0; i < t * h_; ++i) buf[i] = float(at::BFloat16(buf[i]));
  }

  static Lin lin(py::tuple spec) {
    Lin l;
    l.kind = spec[0].cast<int64_t>();
    l.w = spec[1].cast<at::Tensor>().contiguous();
    if (!spec[2].is_none()) l.s = spec[2].cast<at::Tensor>().contiguous();
    l.group = spec[3].cast<int64_t>();
    l.pad = spec[4].cast<int64_t>();
    l.scale = spec[5].cast<double>();
    if (spec.size() > 6) l.partial = spec[6].cast<bool>();
    if (spec.size() > 7) l.lpad = spec[7].cast<int64_t>();
    return l;
  }

  // one row's attention over its cache: store k and v at `p`, then softmax(q k^T / sqrt(d)) v per head
  void attend(int64_t r, size_t li, const float* row, int64_t p, std::vector<at::Tensor>& cache, float* out,
              float scale, int64_t group) {
    at::Tensor& kc = cache[2 * li];
    at::Tensor& vc = cache[2 * li + 1];
    const int64_t ctx = kc.size(1), qd = nh_ * hd_, kvd = nkv_ * hd_;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, kc.scalar_type(), "attend", [&] {
      scalar_t* K = kc.data_ptr<scalar_t>();
      scalar_t* V = vc.data_ptr<scalar_t>();
      for (int64_t g = 0; g < nkv_; ++g)
        for (int64_t i = 0; i < hd_; ++i) {
          st(K + (g * ctx + p) * hd_ + i, row[qd + g * hd_ + i]);
          st(V + (g * ctx + p) * hd_ + i, row[qd + kvd + g * hd_ + i]);
        }
      const int64_t n = p + 1;
      // widen each KV head's first n rows (contiguous: [ctx, hd] per head) to float once, so the
      // dot products below are plain float loops the compiler vectorizes (F16C / AVX-512 converts)
      std::vector<float> kf(nkv_ * n * hd_), vf(nkv_ * n * hd_);
      for (int64_t g = 0; g < nkv_; ++g) {
        const scalar_t* kb = K + g * ctx * hd_;
        const scalar_t* vb = V + g * ctx * hd_;
        float* kd = kf.data() + g * n * hd_;
        float* vd = vf.data() + g * n * hd_;
        widen(kb, kd, n * hd_);
        widen(vb, vd, n * hd_);
      }
      at::parallel_for(0, nh_, n * hd_ >= 16384 ? 1 : nh_, [&](int64_t h0, int64_t h1) {
        std::vector<float> sc(n), acc(hd_);
        for (int64_t hh = h0; hh < h1; ++hh) {
          const int64_t g = hh / group;
          const float* q = row + hh * hd_;
          const float* kb = kf.data() + g * n * hd_;
          const float* vb = vf.data() + g * n * hd_;
          float mx = -INFINITY;
          for (int64_t j = 0; j < n; ++j) {
            const float* kr = kb + j * hd_;
            float d = 0.f;
            for (int64_t i = 0; i < hd_; ++i) d += q[i] * kr[i];
            sc[j] = d * scale;
            mx = std::max(mx, sc[j]);
          }
          float sum = 0.f;
          for (int64_t j = 0; j < n; ++j) {
            sc[j] = std::exp(sc[j] - mx);
            sum += sc[j];
          }
          std::fill(acc.begin(), acc.end(), 0.f);
          for (int64_t j = 0; j < n; ++j) {
            const float w = sc[j];
            const float* vr = vb + j * hd_;
            for (int64_t i = 0; i < hd_; ++i) acc[i] += w * vr[i];
          }
          for (int64_t i = 0; i < hd_; ++i) out[hh * hd_ + i] = acc[i] / sum;
        }
      });
    });
  }

  int64_t h_, nh_, nkv_, hd_, inter_;
  double eps_;
  at::Tensor cos_, sin_;
  std::vector<Layer> layers_;
  std::map<int64_t, std::vector<at::Tensor>> slots_;
  py::object reduce_;  // null for whole layers
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<Stage>(m, "Stage")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, double, at::Tensor, at::Tensor>())
      .def("add_layer", &Stage::add_layer)
      .def("set_slot", &Stage::set_slot)
      .def("free_slot", &Stage::free_slot)
      .def("set_lora", &Stage::set_lora)
      .def("set_reduce", &Stage::set_reduce)
      .def("forward", &Stage::forward, py::call_guard<py::gil_scoped_release>());
  m.def("mm_bytes", &mm_bytes, py::call_guard<py::gil_scoped_release>());
  m.def("int4_partial", &int4_partial, py::call_guard<py::gil_scoped_release>());
}
