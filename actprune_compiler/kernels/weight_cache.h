// The weight cache shared by the native kernels (weight_cache.cpp): each form of a weight is derived
// once and reused while the weight is unchanged (same data pointer, layout, dtype and version counter),
// and dies with the weight.
#pragma once

#include <torch/extension.h>

#include <string>
#include <utility>
#include <vector>

enum class Form {
  transposed,  // W^T, row-major [K, N]: the float decode kernel's rows
  rows,        // W itself, row-major [N, K]: the dense GEMV's rows (dense_gemv.cpp)
  packed,      // oneDNN's blocked W: the prefill GEMM
  int8_rows,   // W^T quantised to int8 rows (quant_rows.cpp)
  int4_rows,   // W^T quantised to int4 rows, groups of 64 outputs
  int4g32_rows,  // the same, groups of 32 outputs
  int4k32_rows,  // W^T quantised to int4, groups of 32 inputs (blocks of 32 rows)
  int8_dot_rows,  // W's own rows quantised to int8 (codes + 128): the int8 dot-product GEMV (int8_gemv.cpp)
};
constexpr int kForms = 8;

// The weight's copy in that form, made on the first call and reused while the weight is unchanged.
// The forms a decode step reads (all but `packed`) lie in 2 MiB pages on the CPU (huge_pages.h).
at::Tensor cached(const at::Tensor& weight, Form form);
at::Tensor transposed(const at::Tensor& weight);
std::pair<int64_t, int64_t> cache_stats();  // (hits, misses)
void clear_cache();

// Builds a quantised form (quant_rows.cpp, int8_gemv.cpp); the cache calls them on a miss.
at::Tensor quantize_rows(const at::Tensor& weight, Form form);
at::Tensor pack_int8_dot_rows(const at::Tensor& weight);

// int8 per output channel, shared by the forms that hold those codes (quant_rows.cpp): the channel's K
// weights w quantised to codes[k * stride] in [-127, 127] under the returned `scale`; false if a weight is
// not finite.
bool quantize_int8_channel(const float* w, int64_t K, int8_t* codes, int64_t stride, float& scale);
// Where an int8 form's scales start after its `count` codes: the next 64-byte boundary.
inline int64_t int8_scales_offset(int64_t count) { return (count + 63) / 64 * 64; }

// The quantised forms by name, as actprune::quant_rows_linear's `fmt` spells them (quant_rows.cpp).
Form quant_form(const std::string& fmt);
std::vector<std::string> quant_format_names();

// oneDNN's ops, called through the dispatcher: the packed form and the packed GEMM.
inline c10::OperatorHandle mkldnn_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

inline at::Tensor call_boxed(const c10::OperatorHandle& op, torch::jit::Stack stack) {
  op.callBoxed(&stack);
  return stack[0].toTensor();
}
