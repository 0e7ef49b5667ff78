// actprune::nm_select_cpu: the N:M mask on CPU, the same rule as actprune::nm_select (ops/select.py):
// in each group of M scores, an element's rank is the number of members that beat it (a higher
// score, or an equal one at a lower index), and it keeps its value when the rank is below N.
//
// Inductor can generate this loop itself (lowering/inductor.py), but it unrolls the M comparisons
// into the C++ of every graph that masks, both vectorised and scalar, which made a sparse model's
// generated code nearly three times the dense model's, all of it compiled at every cold start.
// Compiled here once per machine instead, the graphs call it like a GEMM.
//
// Vectorised across the group as Inductor's loop is, and a little faster than it (0.9 ms against
// 1.2-1.4 ms for a 512 x 576 input at 8:16, one thread).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <type_traits>
#include <vector>

namespace {

// A group's scores as vectors of floats (GCC/Clang vector extensions: the compiler picks the widest
// instructions the machine has), 16 lanes at most; a larger group is ranked 16 members at a time.
template <int W> struct Lanes;
template <> struct Lanes<4> { typedef float f __attribute__((vector_size(16))); typedef int32_t i __attribute__((vector_size(16))); };
template <> struct Lanes<8> { typedef float f __attribute__((vector_size(32))); typedef int32_t i __attribute__((vector_size(32))); };
template <> struct Lanes<16> { typedef float f __attribute__((vector_size(64))); typedef int32_t i __attribute__((vector_size(64))); };

// float32 scores, M a power of two up to 64: each lane holds one member's rank, and each of the M
// members is compared with all lanes at once (a comparison is -1 where true, so the rank subtracts it).
template <int M, typename value_t>
void select_vectorised(const float* scores, const value_t* values, value_t* out, int64_t begin, int64_t end,
                       int64_t n) {
  constexpr int W = M < 16 ? M : 16;
  using vf = typename Lanes<W>::f;
  using vi = typename Lanes<W>::i;
  const vi zero = {};
  vi lane;
  for (int j = 0; j < W; ++j) lane[j] = j;
  for (int64_t g = begin; g < end; ++g) {
    const float* s = scores + g * M;
    for (int c = 0; c < M; c += W) {
      vf mine;
      std::memcpy(&mine, s + c, sizeof mine);
      const vi position = lane + c;
      vi rank = zero;
      for (int k = 0; k < M; ++k) {
        const vf member = s[k] + (vf){};
        rank -= (member > mine) | ((member == mine) & ((zero + k) < position));
      }
      const vi keep = rank < (zero + static_cast<int32_t>(n));
      const value_t* v = values + g * M + c;
      value_t* o = out + g * M + c;
      if constexpr (std::is_same_v<value_t, float>) {  // the select as a bitwise and: pruned values become +0
        vi bits;
        std::memcpy(&bits, v, sizeof bits);
        bits &= keep;
        std::memcpy(o, &bits, sizeof bits);
      } else {
        for (int j = 0; j < W; ++j) o[j] = keep[j] ? v[j] : value_t(0);
      }
    }
  }
}

// Any other group size or float64 scores: the same rule, one element at a time.
template <typename score_t, typename value_t>
void select_any(const score_t* scores, const value_t* values, value_t* out, int64_t begin, int64_t end,
                int64_t n, int64_t m) {
  std::vector<int32_t> rank(m);
  for (int64_t g = begin; g < end; ++g) {
    const score_t* s = scores + g * m;
    std::fill(rank.begin(), rank.end(), 0);
    for (int64_t k = 0; k < m; ++k) {
      const score_t member = s[k];
      for (int64_t j = 0; j < m; ++j) rank[j] += (member > s[j]) | ((member == s[j]) & (k < j));
    }
    for (int64_t j = 0; j < m; ++j) out[g * m + j] = rank[j] < n ? values[g * m + j] : value_t(0);
  }
}

template <typename value_t>
void select(const float* scores, const value_t* values, value_t* out, int64_t groups, int64_t n, int64_t m) {
  // Enough groups per task that a thread's share outweighs waking it (a decode token has ~100 groups).
  at::parallel_for(0, groups, 4096, [&](int64_t begin, int64_t end) {
    switch (m) {
      case 4: return select_vectorised<4>(scores, values, out, begin, end, n);
      case 8: return select_vectorised<8>(scores, values, out, begin, end, n);
      case 16: return select_vectorised<16>(scores, values, out, begin, end, n);
      case 32: return select_vectorised<32>(scores, values, out, begin, end, n);
      case 64: return select_vectorised<64>(scores, values, out, begin, end, n);
      default: return select_any(scores, values, out, begin, end, n, m);
    }
  });
}

template <typename value_t>
void select(const double* scores, const value_t* values, value_t* out, int64_t groups, int64_t n, int64_t m) {
  at::parallel_for(0, groups, 4096, [&](int64_t begin, int64_t end) {
    select_any(scores, values, out, begin, end, n, m);
  });
}

}  // namespace

// groups: [..., M] scores (float32, or float64 in a float64 run; NaN already +inf); values: the same
// shape, any floating dtype. Returns values with all but the N best-scored of each group set to 0.
at::Tensor nm_select_cpu(const at::Tensor& groups, const at::Tensor& values, int64_t n) {
  TORCH_CHECK(groups.device().is_cpu() && values.device().is_cpu(), "nm_select_cpu: CPU tensors only");
  TORCH_CHECK(groups.sizes() == values.sizes() && groups.dim() >= 1,
              "nm_select_cpu: scores and values of one shape [..., M] expected, got ", groups.sizes(), " and ",
              values.sizes());
  TORCH_CHECK(groups.scalar_type() == at::kFloat || groups.scalar_type() == at::kDouble,
              "nm_select_cpu: float32 or float64 scores expected, got ", groups.scalar_type());
  const int64_t m = groups.size(-1);
  auto scores = groups.contiguous();
  auto vals = values.contiguous();
  auto out = at::empty_like(vals);
  const int64_t count = m ? vals.numel() / m : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, vals.scalar_type(), "nm_select_cpu", [&] {
    if (scores.scalar_type() == at::kFloat) {
      select(scores.data_ptr<float>(), vals.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), count, n, m);
    } else {
      select(scores.data_ptr<double>(), vals.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), count, n, m);
    }
  });
  return out;
}

// The schema is defined in kernels/cpu.py, with the others.
TORCH_LIBRARY_IMPL(actprune, CPU, m) {
  m.impl("nm_select_cpu", &nm_select_cpu);
}
