// actprune::quant_rows_linear: sparse_rows_linear's decode GEMV over quantised rows of W^T. A token
// that keeps N of every M inputs reads N/M of the rows, and a row of int4 codes is an eighth of a
// float row, so an 8:16 int4 decode step reads about a fourteenth of the float weight's bytes.
//
// Formats (rows of W^T: one row per input feature k, N values along the outputs):
//   int8     codes q[k, j] in [-127, 127], one float32 scale s[j] per output;
//            w = s[j] * q[k, j].   Bytes: K rows of N codes, then N scales (at a 64-byte boundary).
//   int4     groups of 64 consecutive outputs within a row, each with a float16 scale and minimum;
//   int4g32  the same with groups of 32;  w = float(scale) * q + float(min), q in [0, 15].
//            Bytes: K rows of N/2 code bytes, then N/G scales and N/G minimums (float16), so a kept
//            row is one contiguous run. In a group's G/2 code bytes, byte i holds output i (low
//            nibble) and output i + G/2 (high nibble): 16 bytes widen to 16 lanes whose low nibbles
//            are 16 consecutive outputs and whose high nibbles are the 16 outputs G/2 further on.
//   int4k32  the same codes, but a scale and minimum per output for each block of 32 consecutive rows
//            (inputs), as GGUF's Q4 blocks: a weight read from a Q4_1 file is held exactly.
//            Bytes: per block, its 32 rows of N/2 code bytes (byte i of each 16 holding output i and
//            i + 16 of those 32), then N float16 scales and N float16 minimums.
//
// The kernel factors the int4 product per group: x_k * w = (x_k * scale) * q + x_k * min, so its inner
// loop is widen + convert + one FMA per weight, and the x_k * min terms are summed per group and
// added once at the end. int4k32 factors per block instead: y_j += scale_j * (sum_k x_k q_kj) +
// min_j * (sum_k x_k) over the block's kept rows k, the sums held in L1 until the block's end.
// Threads split the kept rows (small N: each reads whole rows, and their partial sums are added at
// the end) or the outputs (large N, as for lm_head).
//
// Measured on one core of the development machine, reading a kept row costs about as much as
// reading it densely once rows are this short (the hardware prefetchers fetch the rows in between),
// so the kernel prefetches the rows it will read a few rows ahead to keep many lines in flight.
#include "linear_args.h"
#include "weight_cache.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define ACTPRUNE_QUANT_AVX512 1
#endif

namespace {

// ---- formats ---------------------------------------------------------------------------------------

struct Format {
  const char* name;
  Form form;
  int group;  // weights per scale/minimum; 0: one scale per output channel (int8)
  bool along_inputs;  // a group is `group` rows of one output, not `group` outputs of one row
  int lanes() const { return along_inputs ? 32 : group; }  // out_features must be a multiple (0: any)
};
constexpr Format kFormats[] = {{"int8", Form::int8_rows, 0, false}, {"int4", Form::int4_rows, 64, false},
                               {"int4g32", Form::int4g32_rows, 32, false}, {"int4k32", Form::int4k32_rows, 32, true}};

const Format& format_of(Form form) {
  for (const auto& f : kFormats) {
    if (f.form == form) return f;
  }
  TORCH_CHECK(false, "quant_rows: not a quantised form");
}

std::string format_list() {
  std::string names;
  for (const auto& f : kFormats) names += std::string(names.empty() ? "" : ", ") + f.name;
  return names;
}

// The packed rows as the kernels read them.
struct Int8Rows {
  const int8_t* codes;  // [K, N]
  const float* scales;  // [N]
  int64_t K, N;

  static int64_t bytes(int64_t K, int64_t N) { return int8_scales_offset(K * N) + N * 4; }
  Int8Rows(const at::Tensor& packed, int64_t K, int64_t N)
      : codes(reinterpret_cast<const int8_t*>(packed.const_data_ptr<uint8_t>())),
        scales(reinterpret_cast<const float*>(packed.const_data_ptr<uint8_t>() + int8_scales_offset(K * N))), K(K), N(N) {}
  const int8_t* row(int64_t k) const { return codes + k * N; }
};

struct Int4Rows {
  const uint8_t* data;
  int64_t K, N, G, groups, stride;  // stride: bytes per row, codes then scales then minimums

  static int64_t row_bytes(int64_t N, int64_t G) { return N / 2 + 4 * (N / G); }
  Int4Rows(const at::Tensor& packed, int64_t K, int64_t N, int64_t G)
      : data(packed.const_data_ptr<uint8_t>()), K(K), N(N), G(G), groups(N / G), stride(row_bytes(N, G)) {}
  const uint8_t* codes(int64_t k) const { return data + k * stride; }
  const uint16_t* scales(int64_t k) const { return reinterpret_cast<const uint16_t*>(codes(k) + N / 2); }
  const uint16_t* mins(int64_t k) const { return scales(k) + groups; }
};

struct Int4KRows {
  static constexpr int64_t kBlock = 32;  // rows sharing a scale and minimum per output
  const uint8_t* data;
  int64_t K, N, stride;  // stride: bytes per block, its codes then scales then minimums

  static int64_t block_bytes(int64_t N) { return kBlock * N / 2 + 4 * N; }
  Int4KRows(const at::Tensor& packed, int64_t K, int64_t N)
      : data(packed.const_data_ptr<uint8_t>()), K(K), N(N), stride(block_bytes(N)) {}
  const uint8_t* codes(int64_t k) const { return data + k / kBlock * stride + k % kBlock * (N / 2); }
  const uint16_t* scales(int64_t block) const {
    return reinterpret_cast<const uint16_t*>(data + block * stride + kBlock * N / 2);
  }
  const uint16_t* mins(int64_t block) const { return scales(block) + N; }
  // Code q[k, j]: 32 outputs per 16 bytes, byte i holding output i (low nibble) and i + 16 (high).
  int code(int64_t k, int64_t j) const {
    const uint8_t b = codes(k)[j / 32 * 16 + j % 16];
    return j % 32 < 16 ? b & 15 : b >> 4;
  }
};

float half_to_float(uint16_t bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }

// ---- quantisation ----------------------------------------------------------------------------------

void check_finite(bool finite, const at::Tensor& weight, const Format& f) {
  TORCH_CHECK(finite, "quant_rows_linear: cannot quantise a weight ", weight.sizes(), " to ", f.name,
              " because it holds NaN, inf", f.group ? " or values beyond float16's range (+-65504)" : "",
              "; only finite weights can be quantised");
}

at::Tensor pack_int8(const at::Tensor& weight) {  // weight [N, K] float32
  const int64_t N = weight.size(0), K = weight.size(1);
  auto w = weight.contiguous();
  auto packed = at::empty({Int8Rows::bytes(K, N)}, weight.options().dtype(at::kByte));
  const float* src = w.const_data_ptr<float>();
  int8_t* codes = reinterpret_cast<int8_t*>(packed.data_ptr<uint8_t>());
  float* scales = reinterpret_cast<float*>(packed.data_ptr<uint8_t>() + int8_scales_offset(K * N));
  std::vector<char> finite(N, 1);
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) finite[j] = quantize_int8_channel(src + j * K, K, codes + j, N, scales[j]);
  });
  check_finite(std::all_of(finite.begin(), finite.end(), [](char c) { return c; }), weight, format_of(Form::int8_rows));
  return packed;
}

// One group's codes: min16 = min(w), scale16 = (max - min) / 15, q = round((w - min) / scale) in [0, 15]
// (all 0 for a constant group, or a range below float16's). Returns false if a value is not finite.
bool quantize_group(const float* w, int64_t G, uint8_t* q, c10::Half& scale16, c10::Half& min16) {
  bool finite = true;
  float lo = w[0], hi = w[0];
  for (int64_t i = 0; i < G; ++i) {
    const float v = w[i];
    if (!(std::fabs(v) <= 65504.0f)) finite = false;  // NaN fails this too
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  min16 = c10::Half(lo);
  scale16 = c10::Half((hi - lo) / 15.0f);
  const float m = min16, s = scale16;
  for (int64_t i = 0; i < G; ++i) {
    q[i] = s > 0.0f ? static_cast<uint8_t>(std::clamp(std::nearbyint((w[i] - m) / s), 0.0f, 15.0f)) : 0;
  }
  return finite;
}

at::Tensor pack_int4(const at::Tensor& weight, int64_t G) {  // weight [N, K] float32
  const int64_t N = weight.size(0), K = weight.size(1), groups = N / G;
  auto wt = weight.t().contiguous();  // rows of W^T: a group is G consecutive floats
  auto packed = at::empty({K * Int4Rows::row_bytes(N, G)}, weight.options().dtype(at::kByte));
  const float* src = wt.const_data_ptr<float>();
  uint8_t* data = packed.data_ptr<uint8_t>();
  const int64_t stride = Int4Rows::row_bytes(N, G);
  std::vector<char> finite(K, 1);
  at::parallel_for(0, K, 8, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> q(G);
    for (int64_t k = begin; k < end; ++k) {
      uint8_t* codes = data + k * stride;
      c10::Half* scales = reinterpret_cast<c10::Half*>(codes + N / 2);
      c10::Half* mins = scales + groups;
      for (int64_t g = 0; g < groups; ++g) {
        if (!quantize_group(src + k * N + g * G, G, q.data(), scales[g], mins[g])) finite[k] = 0;
        for (int64_t i = 0; i < G / 2; ++i) codes[g * G / 2 + i] = static_cast<uint8_t>(q[i] | (q[i + G / 2] << 4));
      }
    }
  });
  check_finite(std::all_of(finite.begin(), finite.end(), [](char c) { return c; }), weight,
               format_of(G == 64 ? Form::int4_rows : Form::int4g32_rows));
  return packed;
}

at::Tensor pack_int4k(const at::Tensor& weight) {  // weight [N, K] float32
  constexpr int64_t B = Int4KRows::kBlock;
  const int64_t N = weight.size(0), K = weight.size(1), blocks = K / B;
  auto w = weight.contiguous();  // a group is B consecutive floats of one output's row of W
  auto packed = at::empty({blocks * Int4KRows::block_bytes(N)}, weight.options().dtype(at::kByte));
  const float* src = w.const_data_ptr<float>();
  uint8_t* data = packed.data_ptr<uint8_t>();
  const int64_t stride = Int4KRows::block_bytes(N);
  std::vector<char> finite(N / 32, 1);
  // A thread takes whole runs of 32 outputs: outputs i and i + 16 share their code bytes.
  at::parallel_for(0, N / 32, 1, [&](int64_t begin, int64_t end) {
    uint8_t low[B], high[B];
    for (int64_t run = begin; run < end; ++run) {
      for (int64_t b = 0; b < blocks; ++b) {
        uint8_t* block = data + b * stride;
        c10::Half* scales = reinterpret_cast<c10::Half*>(block + B * N / 2);
        c10::Half* mins = scales + N;
        for (int64_t i = 0; i < 16; ++i) {
          const int64_t j = run * 32 + i;
          bool ok = quantize_group(src + j * K + b * B, B, low, scales[j], mins[j]);
          ok &= quantize_group(src + (j + 16) * K + b * B, B, high, scales[j + 16], mins[j + 16]);
          if (!ok) finite[run] = 0;
          for (int64_t r = 0; r < B; ++r) block[r * (N / 2) + run * 16 + i] = static_cast<uint8_t>(low[r] | (high[r] << 4));
        }
      }
    }
  });
  check_finite(std::all_of(finite.begin(), finite.end(), [](char c) { return c; }), weight,
               format_of(Form::int4k32_rows));
  return packed;
}

// ---- the kept rows of a token ----------------------------------------------------------------------

struct Kept {
  std::vector<int32_t> rows;
  std::vector<float> values;
  int64_t count = 0;
  bool finite = true;  // no NaN or inf among the values
};

// The inputs x_k != 0 of one token (NaN and inf are nonzero: they reach the output as in a dense GEMM).
void find_kept(const float* x, int64_t K, Kept& kept) {
  kept.rows.resize(K + 16);  // + 16: a vector store may write a full register past the last kept row
  kept.values.resize(K + 16);
  int64_t count = 0;
  bool finite = true;
  int64_t k = 0;
#ifdef ACTPRUNE_QUANT_AVX512
  const __m512 zero = _mm512_setzero_ps(), infinity = _mm512_set1_ps(INFINITY);
  __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i sixteen = _mm512_set1_epi32(16);
  for (; k + 16 <= K; k += 16, index = _mm512_add_epi32(index, sixteen)) {
    const __m512 v = _mm512_loadu_ps(x + k);
    const __mmask16 nonzero = _mm512_cmp_ps_mask(v, zero, _CMP_NEQ_UQ);
    // |v| < inf is false for inf and NaN
    if (_mm512_mask_cmp_ps_mask(nonzero, _mm512_abs_ps(v), infinity, _CMP_NLT_UQ)) finite = false;
    _mm512_storeu_si512(kept.rows.data() + count, _mm512_maskz_compress_epi32(nonzero, index));
    _mm512_storeu_ps(kept.values.data() + count, _mm512_maskz_compress_ps(nonzero, v));
    count += __builtin_popcount(nonzero);
  }
#endif
  for (; k < K; ++k) {
    if (x[k] != 0.0f) {
      kept.rows[count] = static_cast<int32_t>(k);
      kept.values[count++] = x[k];
      if (!std::isfinite(x[k])) finite = false;
    }
  }
  kept.count = count;
  kept.finite = finite;
}

// ---- the row loops ---------------------------------------------------------------------------------

constexpr int64_t kChunk = 2048;  // outputs per block of accumulators: 8 KB of float32, in L1
constexpr int64_t kAhead = 16;    // rows prefetched ahead: enough lines in flight to cover memory latency
constexpr int kRows = 4;          // rows per pass over the accumulators: a quarter of their loads and stores

void prefetch_range(const void* begin, int64_t bytes) {
#ifdef ACTPRUNE_QUANT_AVX512
  const char* p = static_cast<const char*>(begin);
  for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
  _mm_prefetch(p + bytes - 1, _MM_HINT_T0);
#else
  (void)begin;
  (void)bytes;
#endif
}

// acc[j] += sum over the kept rows i in [r0, r1) of values[i] * q[rows[i], j0 + j], j < width.
void int8_rows(const Int8Rows& w, const Kept& kept, int64_t r0, int64_t r1, int64_t j0, int64_t width, float* acc) {
  const int32_t* rows = kept.rows.data();
  const float* values = kept.values.data();
  int64_t r = r0;
#ifdef ACTPRUNE_QUANT_AVX512
  for (; r + kRows <= r1; r += kRows) {
    for (int i = 0; i < kRows; ++i) prefetch_range(w.row(rows[std::min(r + kAhead + i, r1 - 1)]) + j0, width);
    const int8_t* q0 = w.row(rows[r]) + j0;
    const int8_t* q1 = w.row(rows[r + 1]) + j0;
    const int8_t* q2 = w.row(rows[r + 2]) + j0;
    const int8_t* q3 = w.row(rows[r + 3]) + j0;
    const __m512 v0 = _mm512_set1_ps(values[r]), v1 = _mm512_set1_ps(values[r + 1]);
    const __m512 v2 = _mm512_set1_ps(values[r + 2]), v3 = _mm512_set1_ps(values[r + 3]);
    // Whole vectors unmasked: a masked store read back by the next pass's masked load would stall
    // store-to-load forwarding. The last, partial vector of an N that is not a multiple of 16 is masked.
    for (int64_t j = 0; j < width; j += 16) {
      const bool whole = width - j >= 16;
      const __mmask16 m = whole ? __mmask16(0xFFFF) : __mmask16((1u << (width - j)) - 1);
      auto widen = [&](const int8_t* q) {
        const __m128i bytes = whole ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + j)) : _mm_maskz_loadu_epi8(m, q + j);
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
      };
      __m512 a = whole ? _mm512_loadu_ps(acc + j) : _mm512_maskz_loadu_ps(m, acc + j);
      a = _mm512_fmadd_ps(widen(q0), v0, a);
      a = _mm512_fmadd_ps(widen(q1), v1, a);
      a = _mm512_fmadd_ps(widen(q2), v2, a);
      a = _mm512_fmadd_ps(widen(q3), v3, a);
      if (whole) {
        _mm512_storeu_ps(acc + j, a);
      } else {
        _mm512_mask_storeu_ps(acc + j, m, a);
      }
    }
  }
#endif
  for (; r < r1; ++r) {
    const int8_t* q = w.row(rows[r]) + j0;
    const float v = values[r];
    for (int64_t j = 0; j < width; ++j) acc[j] += v * static_cast<float>(q[j]);
  }
}

// For the int4 groups [g0, g0 + groups) of the kept rows i in [r0, r1): acc[j] += sum of
// (values[i] * scale) * q over the group's outputs j, and offset[g] += sum of values[i] * min.
// offset: kChunk / G floats, 64-byte aligned (whole vectors are read and written).
template <int G>
void int4_rows(const Int4Rows& w, const Kept& kept, int64_t r0, int64_t r1, int64_t g0, int64_t groups, float* acc,
               float* offset) {
  const int32_t* rows = kept.rows.data();
  const float* values = kept.values.data();
  int64_t r = r0;
#ifdef ACTPRUNE_QUANT_AVX512
  constexpr int64_t kMaxGroups = kChunk / G;
  alignas(64) float factor[kRows][kMaxGroups];  // values[i] * scale of each group
  const __m512i low_nibble = _mm512_set1_epi32(15);
  const bool whole_rows = groups == w.groups;  // codes, scales and minimums: one contiguous run a row
  for (; r + kRows <= r1; r += kRows) {
    for (int i = 0; i < kRows; ++i) {
      const int64_t ahead = rows[std::min(r + kAhead + i, r1 - 1)];
      if (whole_rows) {
        prefetch_range(w.codes(ahead), w.stride);
      } else {
        prefetch_range(w.codes(ahead) + g0 * G / 2, groups * G / 2);
        prefetch_range(w.scales(ahead) + g0, groups * 2);
        prefetch_range(w.mins(ahead) + g0, groups * 2);
      }
    }
    // Each row's factors, and the minimums' sum kept in a register across the rows: a masked store
    // to `offset` read back by the next row's masked load would stall store-to-load forwarding.
    for (int64_t g = 0; g < groups; g += 16) {
      const __mmask16 m = groups - g >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (groups - g)) - 1);
      __m512 sum = _mm512_load_ps(offset + g);  // offset holds kChunk / G floats, a multiple of 16
      for (int i = 0; i < kRows; ++i) {
        const int64_t k = rows[r + i];
        const __m512 v = _mm512_set1_ps(values[r + i]);
        const __m512 scale = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w.scales(k) + g0 + g));
        const __m512 min = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w.mins(k) + g0 + g));
        _mm512_store_ps(&factor[i][g], _mm512_mul_ps(v, scale));
        sum = _mm512_fmadd_ps(v, min, sum);
      }
      _mm512_store_ps(offset + g, sum);
    }
    const uint8_t* codes[kRows];
    for (int i = 0; i < kRows; ++i) codes[i] = w.codes(rows[r + i]) + g0 * G / 2;
    for (int64_t g = 0; g < groups; ++g) {
      __m512 sum[G / 16];
      for (int h = 0; h < G / 16; ++h) sum[h] = _mm512_loadu_ps(acc + g * G + 16 * h);
      for (int i = 0; i < kRows; ++i) {
        const __m512 a = _mm512_set1_ps(factor[i][g]);
        for (int h = 0; h < G / 32; ++h) {
          const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes[i] + g * G / 2 + 16 * h)));
          sum[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(b, low_nibble)), a, sum[h]);
          sum[h + G / 32] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), a, sum[h + G / 32]);
        }
      }
      for (int h = 0; h < G / 16; ++h) _mm512_storeu_ps(acc + g * G + 16 * h, sum[h]);
    }
  }
#endif
  for (; r < r1; ++r) {
    const int64_t k = rows[r];
    const float v = values[r];
    const uint8_t* codes = w.codes(k) + g0 * G / 2;
    for (int64_t g = 0; g < groups; ++g) {
      const float a = v * half_to_float(w.scales(k)[g0 + g]);
      offset[g] += v * half_to_float(w.mins(k)[g0 + g]);
      for (int64_t i = 0; i < G / 2; ++i) {
        const uint8_t b = codes[g * G / 2 + i];
        acc[g * G + i] += a * static_cast<float>(b & 15);
        acc[g * G + G / 2 + i] += a * static_cast<float>(b >> 4);
      }
    }
  }
}

// A token with a NaN or inf input: the dense product with the dequantised weights, element by element,
// so that inf * w gives +-inf as a dense GEMM does (the factored form would give inf * 0 = NaN for q = 0).
void int4_exact(const Int4Rows& w, const Kept& kept, float* y) {
  std::fill(y, y + w.N, 0.0f);
  for (int64_t r = 0; r < kept.count; ++r) {
    const int64_t k = kept.rows[r];
    const float v = kept.values[r];
    for (int64_t j = 0; j < w.N; ++j) {
      const int64_t g = j / w.G, i = j % w.G;
      const uint8_t b = w.codes(k)[g * w.G / 2 + i % (w.G / 2)];
      const float q = static_cast<float>(i < w.G / 2 ? b & 15 : b >> 4);
      y[j] += v * (half_to_float(w.scales(k)[g]) * q + half_to_float(w.mins(k)[g]));
    }
  }
}

#ifdef ACTPRUNE_QUANT_AVX512
// sum[j] += sum over the R rows of v[i] * q[i][j] for j < width (a multiple of 32): each row read front
// to back (the prefetchers follow R streams), the sums loaded and stored once per R rows.
template <int R>
inline void int4k_pass(const uint8_t* const* q, const float* v, int64_t width, float* sum) {
  const __m512i low_nibble = _mm512_set1_epi32(15);
  __m512 a[R];
  for (int i = 0; i < R; ++i) a[i] = _mm512_set1_ps(v[i]);
  for (int64_t j = 0; j < width; j += 32) {
    __m512 lo = _mm512_load_ps(sum + j), hi = _mm512_load_ps(sum + j + 16);
    for (int i = 0; i < R; ++i) {
      const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q[i] + j / 2)));
      lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(b, low_nibble)), a[i], lo);
      hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), a[i], hi);
    }
    _mm512_store_ps(sum + j, lo);
    _mm512_store_ps(sum + j + 16, hi);
  }
}
#endif

// acc[j] += sum over the blocks of the kept rows i in [r0, r1) of scale[b, j0 + j] * sum_i values[i] *
// q[rows[i], j0 + j] + min[b, j0 + j] * sum_i values[i], for j < width (a multiple of 32). Kept rows come
// in increasing order, so a block's rows are one run of them; its sums are kept in `sum` (kChunk floats,
// 64-byte aligned) until the block's scales and minimums apply.
void int4k_rows(const Int4KRows& w, const Kept& kept, int64_t r0, int64_t r1, int64_t j0, int64_t width, float* acc,
                float* sum) {
  const int32_t* rows = kept.rows.data();
  const float* values = kept.values.data();
  for (int64_t r = r0, e = r0; r < r1; r = e) {
    const int64_t block = rows[r] / Int4KRows::kBlock;
    float xsum = 0.0f;
    for (; e < r1 && rows[e] / Int4KRows::kBlock == block; ++e) xsum += values[e];
    std::fill(sum, sum + width, 0.0f);
    int64_t i = r;
#ifdef ACTPRUNE_QUANT_AVX512
    for (; i + kRows <= e; i += kRows) {
      const uint8_t* q[kRows];
      for (int h = 0; h < kRows; ++h) {
        q[h] = w.codes(rows[i + h]) + j0 / 2;
        prefetch_range(w.codes(rows[std::min(i + kAhead + h, r1 - 1)]) + j0 / 2, width / 2);
      }
      int4k_pass<kRows>(q, values + i, width, sum);
    }
    for (; i < e; ++i) {
      const uint8_t* q = w.codes(rows[i]) + j0 / 2;
      int4k_pass<1>(&q, values + i, width, sum);
    }
    if (e < r1) {  // the next block's parameters
      prefetch_range(w.scales(rows[e] / Int4KRows::kBlock) + j0, width * 2);
      prefetch_range(w.mins(rows[e] / Int4KRows::kBlock) + j0, width * 2);
    }
    const __m512 xs = _mm512_set1_ps(xsum);
    for (int64_t j = 0; j < width; j += 16) {
      const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.scales(block) + j0 + j)));
      const __m512 min = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.mins(block) + j0 + j)));
      _mm512_storeu_ps(acc + j, _mm512_fmadd_ps(scale, _mm512_load_ps(sum + j), _mm512_fmadd_ps(min, xs, _mm512_loadu_ps(acc + j))));
    }
#else
    for (; i < e; ++i) {
      for (int64_t j = 0; j < width; ++j) sum[j] += values[i] * static_cast<float>(w.code(rows[i], j0 + j));
    }
    for (int64_t j = 0; j < width; ++j) {
      acc[j] += half_to_float(w.scales(block)[j0 + j]) * sum[j] + half_to_float(w.mins(block)[j0 + j]) * xsum;
    }
#endif
  }
}

// A token with a NaN or inf input: y = x @ dequantised W^T element by element (see int4_exact).
void int4k_exact(const Int4KRows& w, const Kept& kept, float* y) {
  std::fill(y, y + w.N, 0.0f);
  for (int64_t r = 0; r < kept.count; ++r) {
    const int64_t k = kept.rows[r], block = k / Int4KRows::kBlock;
    const float v = kept.values[r];
    for (int64_t j = 0; j < w.N; ++j) {
      y[j] += v * (half_to_float(w.scales(block)[j]) * static_cast<float>(w.code(k, j)) + half_to_float(w.mins(block)[j]));
    }
  }
}

// ---- the op ----------------------------------------------------------------------------------------

// Threads split the kept rows while a token's accumulators fit in one block (each thread then reads
// whole rows, one contiguous run each, and the partial sums are added at the end), else the outputs.
// Below kMinParallel multiply-adds a call stays on one thread: measured with smollm2's weights in
// model order on 2 threads, 576 -> 192 (55K at 8:16, 110K dense) is faster on one, 576 -> 576 at
// 8:16 (166K) on two.
constexpr int64_t kMinParallel = 1 << 17;

struct Plan {
  int64_t parts;
  bool split_rows;
};

Plan plan(int64_t work, int64_t N) {
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (threads <= 1 || work < kMinParallel) return {1, false};
  return {threads, N <= kChunk};
}

// [begin, end) of part p of n items split into `parts`, at multiples of `align`.
std::pair<int64_t, int64_t> share(int64_t n, int64_t p, int64_t parts, int64_t align) {
  auto cut = [&](int64_t q) { return q == parts ? n : std::min(n, n * q / parts / align * align); };
  return {cut(p), cut(p + 1)};
}

at::Tensor quant_rows_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                             c10::string_view fmt) {
  const Form form = quant_form(std::string(fmt));
  const Format& f = format_of(form);
  check_float_linear("quant_rows_linear", x, weight);
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(f.lanes() == 0 || N % f.lanes() == 0, "quant_rows_linear: format ", f.name,
              f.along_inputs ? " packs the codes of " : " quantises groups of ", f.lanes(),
              " outputs together, so out_features must be a multiple of ", f.lanes(), ", but this layer (", K, " -> ", N,
              ") has ", N, "; allowed: int4 for multiples of 64, int4g32 and int4k32 for multiples of 32, int8 for any");
  TORCH_CHECK(!f.along_inputs || K % f.group == 0, "quant_rows_linear: format ", f.name, " quantises groups of ", f.group,
              " inputs, so in_features must be a multiple of ", f.group, ", but this layer (", K, " -> ", N, ") has ", K,
              "; allowed: int4, int4g32 or int8");
  const at::Tensor b = float_bias("quant_rows_linear", bias, N);
  // A decode call costs a few us, so it allocates little: no views, and scratch reused across calls.
  const LinearIO io = linear_io(x, b, N, K);
  if (io.answered) return io.y;
  const int64_t T = io.T;
  const at::Tensor packed = cached(weight, form);
  const float* xs = io.x.const_data_ptr<float>();
  const float* bs = b.defined() ? b.const_data_ptr<float>() : nullptr;
  float* ys = io.y.data_ptr<float>();

  // The calling thread's scratch, named by reference: inside the parallel region a thread_local
  // would be each worker's own, empty copy.
  static thread_local std::vector<Kept> kept_scratch;
  static thread_local std::vector<float> partial_scratch;
  std::vector<Kept>& kept = kept_scratch;
  std::vector<float>& partial = partial_scratch;
  if (static_cast<int64_t>(kept.size()) < T) kept.resize(T);
  int64_t work = 0;
  for (int64_t t = 0; t < T; ++t) {
    find_kept(xs + t * K, K, kept[t]);
    work += kept[t].count * N;
  }
  const Plan p = plan(work, N);
  if (p.split_rows) partial.resize((p.parts - 1) * T * N);  // parts 1.. of the row split

  // Each part adds its kept rows' products into its outputs (whole runs of `align` of them), and `finish`
  // turns a token's summed outputs j0.. into y (int8: the per-channel scale; all: the bias). Tokens with a
  // NaN or inf input are left to exact_tokens when `exact_apart` (int8 needs none: scale * sum of x * q is
  // the dense product, inf * 0 = NaN included; the int4 formats' factored sums would turn inf * 0 into NaN).
  auto by_rows = [&](bool exact_apart, int64_t align, auto&& rows, auto&& finish) {
    at::parallel_for(0, p.parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t part = begin; part < end; ++part) {
        const auto [j0, j1] = p.split_rows ? std::pair<int64_t, int64_t>{0, N} : share(N, part, p.parts, align);
        for (int64_t t = 0; t < T; ++t) {
          if (exact_apart && !kept[t].finite) continue;
          const auto [r0, r1] = p.split_rows ? share(kept[t].count, part, p.parts, kRows)
                                             : std::pair<int64_t, int64_t>{0, kept[t].count};
          float* out = (p.split_rows && part > 0) ? partial.data() + ((part - 1) * T + t) * N : ys + t * N;
          for (int64_t j = j0; j < j1; j += kChunk) {
            const int64_t width = std::min(kChunk, j1 - j);
            std::fill(out + j, out + j + width, 0.0f);
            rows(kept[t], r0, r1, j, width, out + j);
            if (!p.split_rows) finish(out + j, j, width);
          }
        }
      }
    });
    if (p.split_rows) {
      for (int64_t t = 0; t < T; ++t) {
        if (exact_apart && !kept[t].finite) continue;
        float* out = ys + t * N;
        for (int64_t part = 1; part < p.parts; ++part) {
          const float* add = partial.data() + ((part - 1) * T + t) * N;
          for (int64_t j = 0; j < N; ++j) out[j] += add[j];
        }
        finish(out, 0, N);
      }
    }
  };
  auto add_bias = [&](float* out, int64_t j0, int64_t width) {
    if (bs) {
      for (int64_t j = 0; j < width; ++j) out[j] += bs[j0 + j];
    }
  };
  // The tokens by_rows left apart: exact(kept, y) writes the element-by-element product, then the bias.
  auto exact_tokens = [&](auto&& exact) {
    for (int64_t t = 0; t < T; ++t) {
      if (kept[t].finite) continue;
      exact(kept[t], ys + t * N);
      add_bias(ys + t * N, 0, N);
    }
  };

  if (form == Form::int8_rows) {
    const Int8Rows w(packed, K, N);
    by_rows(false, 16, [&](const Kept& k, int64_t r0, int64_t r1, int64_t j, int64_t width, float* acc) {
      int8_rows(w, k, r0, r1, j, width, acc);
    }, [&](float* out, int64_t j0, int64_t width) {
      for (int64_t j = 0; j < width; ++j) out[j] = w.scales[j0 + j] * out[j] + (bs ? bs[j0 + j] : 0.0f);
    });
  } else if (form == Form::int4k32_rows) {
    const Int4KRows w(packed, K, N);
    by_rows(true, f.lanes(), [&](const Kept& k, int64_t r0, int64_t r1, int64_t j, int64_t width, float* acc) {
      alignas(64) float sum[kChunk];  // on each thread's own stack
      int4k_rows(w, k, r0, r1, j, width, acc, sum);
    }, add_bias);
    exact_tokens([&](const Kept& k, float* out) { int4k_exact(w, k, out); });
  } else {
    const int64_t G = f.group;
    const Int4Rows w(packed, K, N, G);
    auto int4 = G == 64 ? &int4_rows<64> : &int4_rows<32>;
    by_rows(true, G, [&](const Kept& k, int64_t r0, int64_t r1, int64_t j, int64_t width, float* acc) {
      alignas(64) float offset[kChunk / 32] = {};  // each group's sum of x * min
      int4(w, k, r0, r1, j / G, width / G, acc, offset);
      for (int64_t i = 0; i < width / G; ++i) {
        for (int64_t h = i * G; h < (i + 1) * G; ++h) acc[h] += offset[i];
      }
    }, add_bias);
    exact_tokens([&](const Kept& k, float* out) { int4_exact(w, k, out); });
  }
  return io.y;
}

}  // namespace

static uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

static float float_of(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// The scale is max|w| / 127 rounded to 17 significant bits, so that s * q is exact in float32 for |q| <= 127:
// the dequantised weight then quantises again to the same codes and the same scale, and the prefill (which
// multiplies by the dequantised weight) and this cache's copy of it agree exactly.
bool quantize_int8_channel(const float* w, int64_t K, int8_t* codes, int64_t stride, float& scale) {
  bool finite = true;
  float amax = 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    if (!std::isfinite(w[k])) finite = false;
    amax = std::max(amax, std::fabs(w[k]));
  }
  // a zero output channel: its codes are 0 whatever the scale
  const float s = scale = amax == 0.0f ? 1.0f : float_of((bits_of(amax / 127.0f) + 32u) & ~63u);
  for (int64_t k = 0; k < K; ++k) {
    codes[k * stride] = static_cast<int8_t>(std::clamp(std::nearbyint(w[k] / s), -127.0f, 127.0f));
  }
  return finite;
}

Form quant_form(const std::string& fmt) {
  for (const auto& f : kFormats) {
    if (fmt == f.name) return f.form;
  }
  TORCH_CHECK(false, "quant_rows_linear: unknown format '", fmt, "'; allowed: ", format_list());
}

std::vector<std::string> quant_format_names() {
  std::vector<std::string> names;
  for (const auto& f : kFormats) names.emplace_back(f.name);
  return names;
}

at::Tensor quantize_rows(const at::Tensor& weight, Form form) {
  const Format& f = format_of(form);
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat,
              "quant_rows_linear: a float32 weight [N, K] expected, got ", weight.scalar_type(), " ", weight.sizes());
  TORCH_CHECK(f.lanes() == 0 || weight.size(0) % f.lanes() == 0, "quant_rows_linear: format ", f.name,
              " needs out_features divisible by ", f.lanes(), ", got weight ", weight.sizes());
  TORCH_CHECK(!f.along_inputs || weight.size(1) % f.group == 0, "quant_rows_linear: format ", f.name,
              " needs in_features divisible by ", f.group, ", got weight ", weight.sizes());
  at::NoGradGuard no_grad;
  auto w = weight.detach();
  if (f.group == 0) return pack_int8(w);
  return f.along_inputs ? pack_int4k(w) : pack_int4(w, f.group);
}

// The schema is defined in kernels/cpu.py, with the others.
TORCH_LIBRARY_IMPL(actprune, CPU, m) {
  m.impl("quant_rows_linear", &quant_rows_linear);
}
