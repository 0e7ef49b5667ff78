// y = x @ W^T + b for one token (or a few) through a dense weight: the linears a decode step leaves dense
// (lm_head, layers kept dense, the whole dense model). Each output is the dot product of a row of W with
// x, so W streams from memory front to back in one sequence, x stays in L1, and each thread writes only
// its own outputs. Decode is bound by weight bytes, and a single stream is the one the prefetchers
// follow best: on SmolLM2-135M's shapes in model order, a token's GEMVs took 0.7x the time of the same
// bytes read as rows of W^T (sparse_rows.cpp's loop, which must stay that way to skip inputs).
//
// W is read from the weight cache's copy in 2 MiB pages (huge_pages.h), which replaces the W^T copy
// these linears kept before: the same memory.
#include "linear_args.h"
#include "simd.h"
#include "weight_cache.h"

#include <torch/extension.h>
#include <ATen/Parallel.h>

namespace {

constexpr int64_t kRows = 4;          // rows per pass: four sums in flight hide the FMA latency
constexpr int64_t kGrainPasses = 32;  // a thread takes at least 128 rows: fewer, and waking it costs more

// y[0..3] = the 4 rows of W starting at w, dotted with x, plus b[0..3]. Four named sums, not an array:
// an array of them went through memory, a fifth slower on lm_head.
void dot_four_rows(const float* w, const float* x, const float* b, int64_t K, float* y) {
  const float *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
  Vec a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    const Vec xv = load(x + k);
    a0 += load(w0 + k) * xv;
    a1 += load(w1 + k) * xv;
    a2 += load(w2 + k) * xv;
    a3 += load(w3 + k) * xv;
  }
  float s0 = lane_sum(a0), s1 = lane_sum(a1), s2 = lane_sum(a2), s3 = lane_sum(a3);
  for (; k < K; ++k) {
    s0 += w0[k] * x[k];
    s1 += w1[k] * x[k];
    s2 += w2[k] * x[k];
    s3 += w3[k] * x[k];
  }
  y[0] = s0 + (b ? b[0] : 0.f);
  y[1] = s1 + (b ? b[1] : 0.f);
  y[2] = s2 + (b ? b[2] : 0.f);
  y[3] = s3 + (b ? b[3] : 0.f);
}

float dot_row(const float* w, const float* x, int64_t K) {
  Vec acc = {};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) acc += load(w + k) * load(x + k);
  float sum = lane_sum(acc);
  for (; k < K; ++k) sum += w[k] * x[k];
  return sum;
}

// actprune::dense_gemv's CPU kernel: x [..., K] @ weight [N, K]^T + bias, float32.
at::Tensor dense_gemv(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  check_float_linear("dense_gemv", x, weight);
  const int64_t N = weight.size(0), K = weight.size(1);
  const at::Tensor b = float_bias("dense_gemv", bias, N);
  const LinearIO io = linear_io(x, b, N, K);
  if (io.answered) return io.y;
  const int64_t T = io.T;
  const at::Tensor rows = cached(weight, Form::rows);  // held here: another thread may drop the cache entry
  const float* w = rows.const_data_ptr<float>();
  const float* xs = io.x.const_data_ptr<float>();
  const float* bs = b.defined() ? b.const_data_ptr<float>() : nullptr;
  float* ys = io.y.data_ptr<float>();
  at::parallel_for(0, (N + kRows - 1) / kRows, kGrainPasses, [&](int64_t begin, int64_t end) {
    for (int64_t pass = begin; pass < end; ++pass) {
      const int64_t row = pass * kRows;
      // every token while the rows are in cache (L1 for K up to about 3000): W is read from memory once
      // whatever the token count
      for (int64_t t = 0; t < T; ++t) {
        const float* xt = xs + t * K;
        float* yt = ys + t * N + row;
        if (row + kRows <= N) {
          dot_four_rows(w + row * K, xt, bs ? bs + row : nullptr, K, yt);
        } else {
          for (int64_t r = row; r < N; ++r) yt[r - row] = dot_row(w + r * K, xt, K) + (bs ? bs[r] : 0.f);
        }
      }
    }
  });
  return io.y;
}

}  // namespace

// The schema is defined in kernels/cpu.py, with the others.
TORCH_LIBRARY_IMPL(actprune, CPU, m) {
  m.impl("dense_gemv", &dense_gemv);
}
