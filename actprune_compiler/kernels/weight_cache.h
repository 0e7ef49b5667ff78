// The weight cache shared by the native kernels (defined in sparse_rows.cpp): each form of a weight
// is derived once and reused while the weight is unchanged (same data pointer, layout, dtype and
// version counter), and dies with the weight.
#pragma once

#include <torch/extension.h>

#include <string>
#include <vector>

enum class Form {
  transposed,  // W^T, row-major [K, N]: the float decode kernel's rows
  packed,      // oneDNN's blocked W: the prefill GEMM
  int8_rows,   // W^T quantised to int8 rows (quant_rows.cpp)
  int4_rows,   // W^T quantised to int4 rows, groups of 64 outputs
  int4g32_rows,  // the same, groups of 32 outputs
  int4k32_rows,  // W^T quantised to int4, groups of 32 inputs (blocks of 32 rows)
};
constexpr int kForms = 6;

// The weight's copy in that form, made on the first call and reused while the weight is unchanged.
at::Tensor cached(const at::Tensor& weight, Form form);

// Builds a quantised form (quant_rows.cpp); the cache calls it on a miss.
at::Tensor quantize_rows(const at::Tensor& weight, Form form);

// The quantised forms by name, as actprune::quant_rows_linear's `fmt` spells them (quant_rows.cpp).
Form quant_form(const std::string& fmt);
std::vector<std::string> quant_format_names();
