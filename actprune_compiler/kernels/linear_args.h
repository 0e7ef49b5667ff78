// The argument checks and output of the float32 linear kernels over cached weight forms (dense_gemv.cpp,
// quant_rows.cpp): one wording for one mistake, whichever kernel meets it.
#pragma once

#include <torch/extension.h>

// x [..., K] and weight [N, K], both float32 on the CPU.
inline void check_float_linear(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), op, ": CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              op, ": float32 x and weight expected, got ", x.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1),
              op, ": x [..., K] and weight [N, K] expected, got ", x.sizes(), " and ", weight.sizes());
}

// The bias, contiguous, checked to be N floats; undefined without one.
inline at::Tensor float_bias(const char* op, const c10::optional<at::Tensor>& bias, int64_t N) {
  if (!bias.has_value()) return at::Tensor();
  at::Tensor b = bias->contiguous();
  TORCH_CHECK(b.scalar_type() == at::kFloat && b.numel() == N,
              op, ": a float32 bias of ", N, " values expected, got ", b.scalar_type(), " ", b.sizes());
  return b;
}

// A kernel's contiguous input, its output y [..., N] and its token count, after the checks above.
struct LinearIO {
  at::Tensor x, y;
  int64_t T;
  bool answered;  // y already holds the result: no outputs, or K == 0 (the bias alone, or zeros)
};

inline LinearIO linear_io(const at::Tensor& x, const at::Tensor& bias, int64_t N, int64_t K) {
  const at::Tensor xc = x.is_contiguous() ? x : x.contiguous();
  at::DimVector sizes(xc.sizes());
  sizes.back() = N;
  at::Tensor y = at::empty(sizes, xc.options());
  if (y.numel() == 0) return {xc, y, 0, true};
  if (K == 0) return {xc, bias.defined() ? y.copy_(bias.expand_as(y)) : y.zero_(), 0, true};
  return {xc, y, xc.numel() / K, false};
}
