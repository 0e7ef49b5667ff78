// Attention for a few query tokens over a static KV cache, reading only the cache rows the mask allows.
//
// A decode step has one query per head and a preallocated cache of max_len positions, most of them not
// yet written (or outside a sliding window). SDPA reads every position and, for grouped-query attention,
// Inductor first copies the keys and values once per query head (repeat_kv). Here each query head reads
// its key/value head in place, and only the allowed rows: one pass with an online softmax.
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

template <typename scalar_t>
void attend(const scalar_t* q, const scalar_t* k, const scalar_t* v, const bool* allowed, scalar_t* out,
            int64_t L, int64_t D, double scale) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> acc(D, acc_t(0)), query(D);
  for (int64_t d = 0; d < D; ++d) query[d] = static_cast<acc_t>(q[d]);
  acc_t running_max = -std::numeric_limits<acc_t>::infinity(), total = 0;
  for (int64_t l = 0; l < L; ++l) {
    if (!allowed[l]) continue;
    const scalar_t* key = k + l * D;
    acc_t score = 0;
#pragma omp simd reduction(+ : score)
    for (int64_t d = 0; d < D; ++d) score += query[d] * static_cast<acc_t>(key[d]);
    score *= static_cast<acc_t>(scale);
    if (score > running_max) {  // rescale what was summed under the old maximum
      const acc_t shrink = std::exp(running_max - score);
      total *= shrink;
      for (int64_t d = 0; d < D; ++d) acc[d] *= shrink;
      running_max = score;
    }
    const acc_t weight = std::exp(score - running_max);
    total += weight;
    const scalar_t* value = v + l * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) acc[d] += weight * static_cast<acc_t>(value[d]);
  }
  for (int64_t d = 0; d < D; ++d) out[d] = static_cast<scalar_t>(total > 0 ? acc[d] / total : acc_t(0));
}

}  // namespace

// q [B, H, T, D], k and v [B, Hkv, L, D] with H a multiple of Hkv, mask [B, 1 or H, T, L] bool (true:
// attend) -> [B, T, H, D]. A query with no allowed position gets zeros.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                            double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "decode_attention: q, k and v must be 4-D");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 4, "decode_attention: a 4-D bool mask expected");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), L = k.size(2);
  TORCH_CHECK(H % Hkv == 0 && v.size(1) == Hkv && v.size(2) == L && k.size(3) == D && v.size(3) == D,
              "decode_attention: shapes do not fit: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
  TORCH_CHECK(mask.size(0) == B && (mask.size(1) == 1 || mask.size(1) == H) && mask.size(2) == T &&
              mask.size(3) == L, "decode_attention: mask ", mask.sizes(), " does not fit q ", q.sizes(), " and L=", L);
  auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), mc = mask.contiguous();
  auto out = at::empty({B, T, H, D}, q.options());
  const int64_t group = H / Hkv, mask_heads = mc.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention", [&] {
    const scalar_t* qp = qc.data_ptr<scalar_t>();
    const scalar_t* kp = kc.data_ptr<scalar_t>();
    const scalar_t* vp = vc.data_ptr<scalar_t>();
    const bool* mp = mc.data_ptr<bool>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * H * T, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / (H * T), h = (i / T) % H, t = i % T;
        const int64_t kv_head = b * Hkv + h / group;
        const bool* allowed = mp + ((b * mask_heads + (mask_heads == 1 ? 0 : h)) * T + t) * L;
        attend<scalar_t>(qp + ((b * H + h) * T + t) * D, kp + kv_head * L * D, vp + kv_head * L * D, allowed,
                         op + ((b * T + t) * H + h) * D, L, D, scale);
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(actprune, CPU, m) { m.impl("decode_attention", &decode_attention); }
