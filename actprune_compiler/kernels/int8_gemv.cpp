// actprune::int8_gemv: y = quantized(x) @ (s * q)^T + b for the linears a decode step leaves dense
// (lm_head above all) under a quantised model: format int8a8 (sparsity/quant.py).
//
// The weight: int8 codes q[j, k] in [-127, 127] with one float32 scale s[j] per output, the same codes
// and scales as format int8, but stored as W's own rows (output-major), so that each output is a dot
// product along K, as in dense_gemv.cpp. The input: each token's x quantised to int8 in blocks of 32
// features, d_b = max|x_b| / 127 and x_b ~ d_b * p_b, as llama.cpp quantises activations (Q8_0).
// Both in int8, a dot product is one AVX-512 VNNI instruction per 64 weights (vpdpbusd: 4 byte products
// summed into each 32-bit lane), against a widening, a conversion and an FMA per 16 weights for the int8
// rows kernel (quant_rows.cpp), which could not keep up with memory on a vocabulary-sized lm_head.
//
// vpdpbusd multiplies unsigned by signed bytes, so the cached rows hold q + 128 (u8), and each 32-bit lane
// starts from -128 times the sum of its 4 input codes: the lane's sum is then q . p exactly, in integers.
// (Subtracting 128 * sum(p) once per token in float instead loses the result's precision when a block's
// inputs lean one way: both sums are then much larger than their difference.)
//
// A token with a NaN or inf input gives NaN outputs: its block's scale is not finite, and so is every
// value the block dequantises to (the reference, sparsity.quant.quantize_input, does the same).
#include "linear_args.h"
#include "weight_cache.h"

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define ACTPRUNE_VNNI 1
#endif

namespace {

constexpr int64_t kBlock = 32;        // input features per activation scale
constexpr int64_t kRows = 4;          // rows per pass: the token's codes and scales loaded once for four
constexpr int64_t kGrainPasses = 32;  // a thread takes at least 128 rows: fewer, and waking it costs more
constexpr int64_t kAheadPasses = 4;   // the rows prefetched: those of the pass this many passes on

struct DotRows {  // the cached form: rows of N x K codes + 128, then N scales at a 64-byte boundary
  const uint8_t* codes;
  const float* scales;
  DotRows(const at::Tensor& packed, int64_t N, int64_t K)
      : codes(packed.const_data_ptr<uint8_t>()),
        scales(reinterpret_cast<const float*>(packed.const_data_ptr<uint8_t>() + int8_scales_offset(N * K))) {}
};

// One token's input in int8: codes p, and for each 4-byte lane (features 4l..4l+3, all in block 4l / 32)
// its block's scale and -128 times its codes' sum, so that a vector of 16 lanes is scaled and offset by
// one load each.
struct QuantizedInput {
  std::vector<int8_t> codes;
  std::vector<float> lane_scales;
  std::vector<int32_t> lane_offsets;
  bool finite = true;
};

void quantize_input(const float* x, int64_t K, QuantizedInput& out) {
  out.codes.assign(K, 0);
  out.lane_scales.assign(K / 4, 0.0f);
  out.lane_offsets.assign(K / 4, 0);
  out.finite = true;
  for (int64_t b = 0; b < K / kBlock; ++b) {
    const float* xb = x + b * kBlock;
    float amax = 0.0f;
    for (int64_t i = 0; i < kBlock; ++i) {
      if (!std::isfinite(xb[i])) {
        out.finite = false;
        return;
      }
      amax = std::max(amax, std::fabs(xb[i]));
    }
    const float d = amax / 127.0f;  // divided, not multiplied by 1 / d: the reference's rounding
    for (int64_t i = 0; i < kBlock; ++i) {
      // clamped: for a subnormal amax, d rounds and x / d can pass 127
      const float p = d > 0.0f ? std::clamp(std::nearbyint(xb[i] / d), -127.0f, 127.0f) : 0.0f;
      out.codes[b * kBlock + i] = static_cast<int8_t>(p);
      out.lane_offsets[(b * kBlock + i) / 4] -= 128 * static_cast<int32_t>(p);
    }
    std::fill_n(out.lane_scales.begin() + b * kBlock / 4, kBlock / 4, d);
  }
}

// sums[r] = sum over k of d_(k / 32) * q[r][k] * p[k] for R rows, whose cached bytes are q + 128. ahead: the
// 4 * K bytes of rows to prefetch meanwhile, or null. A pass reads 4 rows side by side, each only K bytes
// long, and the hardware prefetchers did not follow: without this, rows from memory took 93 ns each on one
// core, as long as float32 rows four times their size (dense_gemv.cpp).
template <int R>
void dot_rows(const uint8_t* const* rows, const QuantizedInput& x, int64_t K, float* sums, const uint8_t* ahead) {
#ifdef ACTPRUNE_VNNI
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 64) {
    // K is a multiple of 32: the last 64 may hold only 32, whose upper lanes load zeros
    const __mmask64 bytes = K - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (K - k)) - 1;
    const __mmask16 lanes = K - k >= 64 ? __mmask16(0xFFFF) : __mmask16(0x00FF);
    const __m512i p = _mm512_maskz_loadu_epi8(bytes, x.codes.data() + k);
    const __m512 d = _mm512_maskz_loadu_ps(lanes, x.lane_scales.data() + k / 4);
    const __m512i offset = _mm512_maskz_loadu_epi32(lanes, x.lane_offsets.data() + k / 4);
    if (ahead) {
      for (int i = 0; i < 4; ++i) _mm_prefetch(reinterpret_cast<const char*>(ahead + 4 * k + 64 * i), _MM_HINT_T0);
    }
    for (int r = 0; r < R; ++r) {
      const __m512i dot = _mm512_dpbusd_epi32(offset, _mm512_maskz_loadu_epi8(bytes, rows[r] + k), p);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), d, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) sums[r] = _mm512_reduce_add_ps(acc[r]);
#else
  // Without VNNI: a block's integer dot product (which GCC vectorises), then its scale.
  (void)ahead;
  for (int r = 0; r < R; ++r) {
    float sum = 0.0f;
    for (int64_t b = 0; b < K / kBlock; ++b) {
      int32_t dot = 0;
      for (int64_t k = b * kBlock; k < (b + 1) * kBlock; ++k) dot += (rows[r][k] - 128) * x.codes[k];
      sum += x.lane_scales[b * kBlock / 4] * static_cast<float>(dot);
    }
    sums[r] = sum;
  }
#endif
}

// actprune::int8_gemv's CPU kernel: x [..., K] float32, weight [N, K] float32 (quantised once, cached).
at::Tensor int8_gemv(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  check_float_linear("int8_gemv", x, weight);
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(K % kBlock == 0, "int8_gemv: the input is quantised in blocks of ", kBlock,
              " features, so in_features must be a multiple of ", kBlock, ", but this layer (", K, " -> ", N,
              ") has ", K, "; allowed: format int8 for any in_features");
  const at::Tensor b = float_bias("int8_gemv", bias, N);
  const LinearIO io = linear_io(x, b, N, K);
  if (io.answered) return io.y;
  const int64_t T = io.T;
  const at::Tensor packed = cached(weight, Form::int8_dot_rows);  // held: another thread may drop the entry
  const DotRows w(packed, N, K);
  const float* xs = io.x.const_data_ptr<float>();
  const float* bs = b.defined() ? b.const_data_ptr<float>() : nullptr;
  float* ys = io.y.data_ptr<float>();

  static thread_local std::vector<QuantizedInput> inputs_scratch;  // the calling thread's, reused
  std::vector<QuantizedInput>& inputs = inputs_scratch;
  if (static_cast<int64_t>(inputs.size()) < T) inputs.resize(T);
  for (int64_t t = 0; t < T; ++t) quantize_input(xs + t * K, K, inputs[t]);

  at::parallel_for(0, (N + kRows - 1) / kRows, kGrainPasses, [&](int64_t begin, int64_t end) {
    for (int64_t pass = begin; pass < end; ++pass) {
      const int64_t row = pass * kRows, count = std::min(kRows, N - row);
      const uint8_t* rows[kRows];
      for (int64_t r = 0; r < kRows; ++r) rows[r] = w.codes + std::min(row + r, N - 1) * K;
      // every token while the rows are in L1: the codes are read from memory once whatever the token count
      for (int64_t t = 0; t < T; ++t) {
        float* yt = ys + t * N + row;
        if (!inputs[t].finite) {
          std::fill_n(yt, count, std::numeric_limits<float>::quiet_NaN());
          continue;
        }
        float sums[kRows];
        if (count == kRows) {
          // the rows ahead: a whole pass of this thread's, or none
          const bool last = pass + kAheadPasses >= std::min(end, N / kRows);
          dot_rows<kRows>(rows, inputs[t], K, sums, t == 0 && !last ? rows[0] + kAheadPasses * kRows * K : nullptr);
        } else {
          for (int64_t r = 0; r < count; ++r) dot_rows<1>(rows + r, inputs[t], K, sums + r, nullptr);
        }
        for (int64_t r = 0; r < count; ++r) {
          yt[r] = w.scales[row + r] * sums[r] + (bs ? bs[row + r] : 0.0f);
        }
      }
    }
  });
  return io.y;
}

}  // namespace

at::Tensor pack_int8_dot_rows(const at::Tensor& weight) {  // weight [N, K] float32
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat,
              "int8_gemv: a float32 weight [N, K] expected, got ", weight.scalar_type(), " ", weight.sizes());
  at::NoGradGuard no_grad;
  const auto w = weight.detach().contiguous();
  const int64_t N = w.size(0), K = w.size(1);
  auto packed = at::empty({int8_scales_offset(N * K) + 4 * N}, w.options().dtype(at::kByte));
  const float* src = w.const_data_ptr<float>();
  uint8_t* codes = packed.data_ptr<uint8_t>();
  float* scales = reinterpret_cast<float*>(codes + int8_scales_offset(N * K));
  std::vector<char> finite(N, 1);
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      uint8_t* row = codes + j * K;
      finite[j] = quantize_int8_channel(src + j * K, K, reinterpret_cast<int8_t*>(row), 1, scales[j]);
      for (int64_t k = 0; k < K; ++k) row[k] ^= 0x80;  // q + 128, as an unsigned byte
    }
  });
  TORCH_CHECK(std::all_of(finite.begin(), finite.end(), [](char c) { return c; }), "int8_gemv: cannot quantise a weight ",
              weight.sizes(), " to int8 because it holds NaN or inf; only finite weights can be quantised");
  return packed;
}

// The schema is defined in kernels/cpu.py, with the others.
TORCH_LIBRARY_IMPL(actprune, CPU, m) {
  m.impl("int8_gemv", &int8_gemv);
}
