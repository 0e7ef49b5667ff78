// y = x @ W^T + b for a few tokens whose activations are mostly zero, reading only the rows of
// W^T (one per input feature) that a token actually uses. At decode a token that keeps N of every
// M features needs N/M of the weight bytes, and decode is bound by weight bytes.
//
// And the prefill's y = x @ W^T + b with W packed in oneDNN's blocked layout, as Inductor packs a
// frozen weight: packed once per weight here, so a graph whose weights are inputs (regional
// compilation, the FX graph cache) gets the frozen graph's GEMM (about a fifth less time on CPU).
//
// Threads split the output columns, so each one streams contiguous segments of the kept rows
// into private accumulators (fp32, or fp64 for double); no reduction across threads is needed.
//
// Everything a decode call does lives here, W^T cache included, and the op's CPU kernel is
// registered with the dispatcher from C++: a model makes one call per rewritten linear per token
// (210 for smollm2-135m), and a Python kernel costs about 20 us a call, a quarter of the time the
// GEMV itself takes.
#include "weight_cache.h"

#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/intrusive_ptr.h>

#include <mutex>
#include <unordered_map>
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

// W^T (and the packed W, and the quantised rows of W^T), made once per weight and reused while the
// weight is unchanged: the decode kernel reads rows of W^T, and transposing on every call would copy
// the whole weight, costing more than the GEMV saves; packing costs more than a prefill GEMM, and
// quantising more still. An entry holds its
// weight weakly (it dies with the weight, and the weak reference keeps
// the address from being reused meanwhile) and is checked against the weight's data pointer,
// layout and version counter, so an in-place update (load_state_dict, copy_ under no_grad) is
// seen. An update through `.data` bypasses the version counter: clear the cache after one.
using WeakTensor = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

int64_t version_of(const at::Tensor& tensor) {  // -1 for an inference tensor, which has no counter
  const auto& counter = tensor.unsafeGetTensorImpl()->version_counter();
  return counter.enabled() ? static_cast<int64_t>(counter.current_version()) : -1;
}

struct Derived {
  WeakTensor weight;
  const void* data;
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype;
  int64_t version;
  at::Tensor value;

  bool describes(const at::Tensor& w) const {
    return !weight.expired() && data == w.const_data_ptr() && w.sizes() == c10::IntArrayRef(sizes) &&
           w.strides() == c10::IntArrayRef(strides) && w.scalar_type() == dtype && version_of(w) == version;
  }
};

c10::OperatorHandle mkldnn_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

at::Tensor call_boxed(const c10::OperatorHandle& op, torch::jit::Stack stack) {
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

at::Tensor make_form(const at::Tensor& weight, Form form) {
  at::NoGradGuard no_grad;
  if (form == Form::transposed) return weight.detach().t().contiguous();
  if (form == Form::packed) {
    static const auto reorder = mkldnn_op("mkldnn::_reorder_linear_weight");
    return call_boxed(reorder, {weight.detach().contiguous(), c10::IValue()});  // no batch-size hint
  }
  return quantize_rows(weight, form);
}

std::mutex cache_mutex;  // two threads at once must not both copy a large weight
std::unordered_map<const c10::TensorImpl*, Derived> caches[kForms];  // by Form
int64_t hits = 0, misses = 0;

}  // namespace

at::Tensor cached(const at::Tensor& weight, Form form) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto& cache = caches[static_cast<int>(form)];
  auto found = cache.find(weight.unsafeGetTensorImpl());
  if (found != cache.end() && found->second.describes(weight)) {
    ++hits;
    return found->second.value;
  }
  ++misses;
  for (auto it = cache.begin(); it != cache.end();) {  // drop the copies of weights that died
    it = it->second.weight.expired() ? cache.erase(it) : std::next(it);
  }
  Derived entry{WeakTensor(weight.getIntrusivePtr()), weight.const_data_ptr(), weight.sizes().vec(),
                weight.strides().vec(), weight.scalar_type(), version_of(weight), make_form(weight, form)};
  auto value = entry.value;
  cache.insert_or_assign(weight.unsafeGetTensorImpl(), std::move(entry));
  return value;
}

at::Tensor transposed(const at::Tensor& weight) { return cached(weight, Form::transposed); }

std::pair<int64_t, int64_t> cache_stats() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  return {hits, misses};
}

void clear_cache() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  for (auto& cache : caches) cache.clear();
  hits = misses = 0;
}

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
  m.def("cache_stats", &cache_stats, "(hits, misses) of the weight cache (W^T, packed W and quantised rows)");
  m.def("clear_cache", &clear_cache, "forget every cached W^T, packed W and quantised rows");
}
