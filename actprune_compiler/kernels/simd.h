// 16 floats as one vector (GCC vector extensions): one AVX-512 register, two AVX ones, whatever the
// machine the extension is built on (-march=native). Loads and stores need only a float's alignment.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef float Vec __attribute__((vector_size(64), aligned(4)));
constexpr int64_t kLanes = 16;

inline Vec load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
inline void store(float* p, Vec v) { *reinterpret_cast<Vec*>(p) = v; }

// The lanes' sum as a tree. Added one by one, they form a chain of 15 dependent adds, which took as long
// as streaming a row of 576 floats; and with AVX-512, going through memory (a 64-byte store and reloads)
// made SmolLM2's lm_head GEMV 20% slower than the register-to-register reduction.
inline float lane_sum(Vec v) {
#ifdef __AVX512F__
  return _mm512_reduce_add_ps(reinterpret_cast<__m512>(v));
#else
  float s[kLanes];
  std::memcpy(s, &v, sizeof s);
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
    for (int64_t i = 0; i < width; ++i) s[i] += s[i + width];
  }
  return s[0];
#endif
}
