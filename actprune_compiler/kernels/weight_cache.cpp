// The weight cache shared by the native kernels: each form of a weight (W^T, W in 2 MiB pages, the
// packed W, the quantised rows of W^T) is made once and reused while the weight is unchanged.
#include "huge_pages.h"
#include "weight_cache.h"

#include <c10/util/intrusive_ptr.h>

#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

// Each form (W^T, W in 2 MiB pages, the packed W, the quantised rows of W^T) is made once per weight and
// reused while the weight is unchanged: the kept-rows kernel reads rows of W^T, and transposing on every
// call would copy the whole weight, costing more than the GEMV saves; packing costs more than a prefill
// GEMM, and quantising more still. An entry holds its weight weakly (it dies with the weight, and the
// weak reference keeps the address from being reused meanwhile) and is checked against the weight's data
// pointer, layout and version counter, so an in-place update (load_state_dict, copy_ under no_grad) is
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

at::Tensor make_form(const at::Tensor& weight, Form form) {
  at::NoGradGuard no_grad;
  if (form == Form::packed) {
    static const auto reorder = mkldnn_op("mkldnn::_reorder_linear_weight");
    return call_boxed(reorder, {weight.detach().contiguous(), c10::IValue()});  // no batch-size hint
  }
  at::Tensor value = form == Form::transposed      ? weight.detach().t()
                     : form == Form::rows          ? weight.detach()
                     : form == Form::int8_dot_rows ? pack_int8_dot_rows(weight)
                                                   : quantize_rows(weight, form);
  // What a decode step streams goes into 2 MiB pages (huge_pages.h); the CUDA kernels' W^T stays on the GPU.
  return value.device().is_cpu() ? huge_page_copy(value) : value.contiguous();
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
