// y = x @ W^T + b for a few tokens whose activations are mostly zero, reading only the rows of
// W^T (one per input feature) that a token actually uses. At decode a token that keeps N of every
// M features needs N/M of the weight bytes, and decode is bound by weight bytes.
//
// And the prefill's y = x @ W^T + b with W packed in oneDNN's blocked layout, as Inductor packs a
// frozen weight: packed once per weight here, so a graph whose weights are inputs (regional
// compilation, the FX graph cache) gets the frozen graph's GEMM (about a fifth less time on CPU).
//
// Threads split the kept rows, each streaming whole rows into its own sums (fp32, or fp64 for double),
// added up at the end.
//
// W^T comes from the weight cache (weight_cache.cpp), and the op's CPU kernel is registered with the
// dispatcher from C++: a model makes one call per rewritten linear per token (210 for smollm2-135m),
// and a Python kernel costs about 20 us a call, a quarter of the time the GEMV itself takes.
#include "simd.h"
#include "weight_cache.h"

#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <type_traits>
#include <vector>

namespace {

// The nonzero inputs of a token, and their values. NaN and inf are kept: they must reach the output as
// in a dense GEMM.
template <typename acc_t, typename scalar_t>
void find_kept(const scalar_t* x, int64_t K, std::vector<int64_t>& rows, std::vector<acc_t>& values) {
  rows.clear();
  values.clear();
  for (int64_t k = 0; k < K; ++k) {
    const acc_t v = static_cast<acc_t>(x[k]);
    if (v != acc_t(0)) {
      rows.push_back(k);
      values.push_back(v);
    }
  }
}

// acc[0, N) += the sum of values[i] * (row rows[i] of W^T) over `count` kept rows, four rows per pass (a
// quarter of the accumulator traffic).
template <typename scalar_t, typename acc_t>
void add_rows(const scalar_t* wt, int64_t N, const int64_t* rows, const acc_t* values, int64_t count, acc_t* acc) {
  int64_t i = 0;
  for (; i + 4 <= count; i += 4) {
    const scalar_t* r0 = wt + rows[i] * N;
    const scalar_t* r1 = wt + rows[i + 1] * N;
    const scalar_t* r2 = wt + rows[i + 2] * N;
    const scalar_t* r3 = wt + rows[i + 3] * N;
    const acc_t v0 = values[i], v1 = values[i + 1], v2 = values[i + 2], v3 = values[i + 3];
    int64_t j = 0;
    if constexpr (std::is_same_v<scalar_t, float>) {
      // float32, the decode case, in 16-float vectors written out: GCC's own vectorisation of the loop
      // below ran at half this speed.
      for (; j + kLanes <= N; j += kLanes) {
        store(acc + j, load(acc + j) + v0 * load(r0 + j) + v1 * load(r1 + j) + v2 * load(r2 + j) +
                           v3 * load(r3 + j));
      }
    }
    for (; j < N; ++j) {
      acc[j] += v0 * static_cast<acc_t>(r0[j]) + v1 * static_cast<acc_t>(r1[j]) +
                v2 * static_cast<acc_t>(r2[j]) + v3 * static_cast<acc_t>(r3[j]);
    }
  }
  for (; i < count; ++i) {
    const scalar_t* r = wt + rows[i] * N;
    const acc_t v = values[i];
    for (int64_t j = 0; j < N; ++j) acc[j] += v * static_cast<acc_t>(r[j]);
  }
}

template <typename scalar_t>
void token_rows(const scalar_t* x, const scalar_t* wt, const scalar_t* bias, scalar_t* y,
                int64_t K, int64_t N) {
  // float for float/half/bfloat16, double for double: a float64 run stays float64 throughout.
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<int64_t> rows;
  std::vector<acc_t> values;
  rows.reserve(K);
  values.reserve(K);
  find_kept(x, K, rows, values);
  const int64_t used = static_cast<int64_t>(rows.size());
  // Threads split the kept rows, each reading whole rows of W^T (the longest runs of memory the skipped
  // rows allow) into its own sums over all N outputs, added up at the end; a split of the outputs read
  // half-rows, and a token at 8:16 took 1.2x as long. Small products stay on one thread.
  const int64_t parts = used * N < (int64_t(1) << 16) ? 1 : std::min<int64_t>(at::get_num_threads(), 8);
  std::vector<acc_t> sums(parts * N);
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t first = used * p / parts, last = used * (p + 1) / parts;
      add_rows(wt, N, rows.data() + first, values.data() + first, last - first, sums.data() + p * N);
    }
  });
  for (int64_t j = 0; j < N; ++j) {
    acc_t sum = bias ? static_cast<acc_t>(bias[j]) : acc_t(0);
    for (int64_t p = 0; p < parts; ++p) sum += sums[p * N + j];
    y[j] = static_cast<scalar_t>(sum);
  }
}

}  // namespace

// actprune::packed_linear's CPU kernel: x [..., K] @ weight [N, K]^T + bias in float32, through
// oneDNN with the weight packed once (the op Inductor itself calls for a frozen float32 linear).
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "packed_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "packed_linear: float32 only, got ", x.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1),
              "packed_linear: x [..., K] and weight [N, K] expected, got ", x.sizes(), " and ", weight.sizes());
  static const auto linear = mkldnn_op("mkldnn::_linear_pointwise");
  c10::IValue b = bias.has_value() ? c10::IValue(bias->contiguous()) : c10::IValue();
  return call_boxed(linear, {x.contiguous(), cached(weight, Form::packed), b, std::string("none"),
                             c10::List<std::optional<at::Scalar>>(), c10::IValue()});
}

// actprune::sparse_rows_linear's CPU kernel: x [..., K] @ weight [N, K]^T + bias.
at::Tensor sparse_rows_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "sparse_rows_linear: CPU tensors only");
  TORCH_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1),
              "sparse_rows_linear: x [..., K] and weight [N, K] expected, got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "sparse_rows_linear: x and weight dtypes differ");
  const int64_t K = weight.size(1), N = weight.size(0);
  auto xc = x.reshape({-1, K}).contiguous();
  auto wt = transposed(weight);
  const int64_t T = xc.size(0);
  auto y = at::empty({T, N}, xc.options());
  at::Tensor bc;
  if (bias.has_value()) {
    bc = bias->contiguous();
    TORCH_CHECK(bc.numel() == N && bc.scalar_type() == x.scalar_type(), "sparse_rows_linear: bad bias");
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "sparse_rows_linear", [&] {
    const scalar_t* b = bias.has_value() ? bc.data_ptr<scalar_t>() : nullptr;
    for (int64_t t = 0; t < T; ++t) {
      token_rows<scalar_t>(xc.data_ptr<scalar_t>() + t * K, wt.data_ptr<scalar_t>(), b,
                           y.data_ptr<scalar_t>() + t * N, K, N);
    }
  });
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = N;
  return y.view(out_sizes);
}

// The schema is defined in kernels/cpu.py, so the op exists (for tracing, and for the CUDA kernel)
// whether or not this file could be built.
TORCH_LIBRARY_IMPL(actprune, CPU, m) {
  m.impl("sparse_rows_linear", &sparse_rows_linear);
  m.impl("packed_linear", &packed_linear);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("transposed", &transposed, "weight [N, K] -> a cached row-major [K, N] copy");
  m.def("quantized_rows", [](const at::Tensor& weight, const std::string& fmt) { return cached(weight, quant_form(fmt)); },
        "weight [N, K] -> its cached quantised rows in format fmt (the tensor the decode kernel reads, not a copy)");
  m.def("quant_format_names", &quant_format_names, "the formats actprune::quant_rows_linear accepts");
  m.def("dense_rows", [](const at::Tensor& weight) { return cached(weight, Form::rows); },
        "weight [N, K] -> its cached copy in 2 MiB pages (the rows actprune::dense_gemv reads, not a copy)");
  m.def("int8_dot_rows", [](const at::Tensor& weight) { return cached(weight, Form::int8_dot_rows); },
        "weight [N, K] -> its cached int8 rows (codes + 128, then N scales): what actprune::int8_gemv reads");
  m.def("cache_stats", &cache_stats, "(hits, misses) of the weight cache (W^T, W, packed W and quantised rows)");
  m.def("clear_cache", &clear_cache, "forget every cached W^T, W, packed W and quantised rows");
}
