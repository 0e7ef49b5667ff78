// y = x @ Wt + b for a few tokens whose activations are mostly zero, reading only the rows of
// Wt (one per input feature) that a token actually uses. At decode a token that keeps N of every
// M features needs N/M of the weight bytes, and decode is bound by weight bytes.
//
// Threads split the output columns, so each one streams contiguous segments of the kept rows
// into private accumulators (fp32, or fp64 for double); no reduction across threads is needed.
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

namespace {

template <typename scalar_t>
void token_rows(const scalar_t* x, const scalar_t* wt, const scalar_t* bias, scalar_t* y,
                int64_t K, int64_t N) {
  // float for float/half/bfloat16, double for double: a float64 run stays float64 throughout.
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<int64_t> rows;
  std::vector<acc_t> values;
  rows.reserve(K);
  values.reserve(K);
  for (int64_t k = 0; k < K; ++k) {
    acc_t v = static_cast<acc_t>(x[k]);
    if (v != acc_t(0)) {  // NaN and inf are kept: they must reach the output as in a dense GEMM
      rows.push_back(k);
      values.push_back(v);
    }
  }
  const int64_t used = static_cast<int64_t>(rows.size());
  at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    const int64_t width = end - begin;
    std::vector<acc_t> acc(width);
    for (int64_t j = 0; j < width; ++j) acc[j] = bias ? static_cast<acc_t>(bias[begin + j]) : acc_t(0);
    int64_t i = 0;
    for (; i + 4 <= used; i += 4) {  // four rows per pass: a quarter of the accumulator traffic
      const scalar_t* r0 = wt + rows[i] * N + begin;
      const scalar_t* r1 = wt + rows[i + 1] * N + begin;
      const scalar_t* r2 = wt + rows[i + 2] * N + begin;
      const scalar_t* r3 = wt + rows[i + 3] * N + begin;
      const acc_t v0 = values[i], v1 = values[i + 1], v2 = values[i + 2], v3 = values[i + 3];
      for (int64_t j = 0; j < width; ++j) {
        acc[j] += v0 * static_cast<acc_t>(r0[j]) + v1 * static_cast<acc_t>(r1[j]) +
                  v2 * static_cast<acc_t>(r2[j]) + v3 * static_cast<acc_t>(r3[j]);
      }
    }
    for (; i < used; ++i) {
      const scalar_t* r = wt + rows[i] * N + begin;
      const acc_t v = values[i];
      for (int64_t j = 0; j < width; ++j) acc[j] += v * static_cast<acc_t>(r[j]);
    }
    for (int64_t j = 0; j < width; ++j) y[begin + j] = static_cast<scalar_t>(acc[j]);
  });
}

}  // namespace

torch::Tensor sparse_rows_linear(const torch::Tensor& x, const torch::Tensor& weight_t,
                                 const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && weight_t.device().is_cpu(), "sparse_rows_linear: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && weight_t.dim() == 2 && x.size(1) == weight_t.size(0),
              "sparse_rows_linear: x [T, K] and weight_t [K, N] expected, got ", x.sizes(), " and ",
              weight_t.sizes());
  TORCH_CHECK(x.scalar_type() == weight_t.scalar_type(), "sparse_rows_linear: x and weight_t dtypes differ");
  auto xc = x.contiguous();
  auto wc = weight_t.contiguous();
  const int64_t T = xc.size(0), K = xc.size(1), N = wc.size(1);
  auto y = torch::empty({T, N}, xc.options());
  torch::Tensor bc;
  if (bias.has_value()) {
    bc = bias->contiguous();
    TORCH_CHECK(bc.numel() == N && bc.scalar_type() == x.scalar_type(), "sparse_rows_linear: bad bias");
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "sparse_rows_linear", [&] {
    const scalar_t* b = bias.has_value() ? bc.data_ptr<scalar_t>() : nullptr;
    for (int64_t t = 0; t < T; ++t) {
      token_rows<scalar_t>(xc.data_ptr<scalar_t>() + t * K, wc.data_ptr<scalar_t>(), b,
                           y.data_ptr<scalar_t>() + t * N, K, N);
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_rows_linear", &sparse_rows_linear, "x @ weight_t + bias, skipping zero inputs");
}
