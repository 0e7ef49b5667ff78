// A decode step reads every weight byte it needs once, front to back. In 4 KiB pages that is a TLB miss
// every 4 KiB, and in a virtual machine each miss walks two page tables: on a 2-core VM, SmolLM2-135M's
// 211 dense GEMVs of a token took 7.5-8.8 ms with their weights in 2 MiB pages against 10-11 ms in
// 4 KiB pages, the same kernel (docs/performance.md). llama.cpp gets large pages from the page cache
// of its mapped GGUF file; torch's allocator gets 4 KiB pages unless huge pages are on for everything.
//
// Most forms are far smaller than 2 MiB (a 4-bit k_proj of SmolLM2 is 55 KiB), so they are carved one
// after another out of shared chunks of huge pages. Space is not reused inside a chunk: a full chunk goes
// back to the OS when the last form in it dies, and the chunk being filled, when it empties, gives its
// pages back and starts again from its beginning. Forms larger than a quarter of a chunk get a chunk of
// their own. A model's forms are made together and live together, so little is held by dead ones.
#include "huge_pages.h"

#include <algorithm>
#include <cstdint>
#include <mutex>

#ifdef __linux__
#include <sys/mman.h>
#endif

#ifdef __linux__
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kChunk = size_t(64) << 20;
constexpr size_t kAlign = 64;  // a cache line: every form starts on one

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct Chunk {
  char* base;
  size_t size;
  size_t used = 0;
  int64_t live = 0;  // forms in it not yet freed
};

// Never destroyed: forms held by other static objects (the weight cache) are freed at exit, in an order
// across files that C++ leaves open.
std::mutex& arena_mutex = *new std::mutex;
Chunk* shared_chunk = nullptr;  // where the next small form goes

Chunk* map_chunk(size_t bytes) {
  const size_t size = round_up(bytes, kHugePage);
  // Map one huge page more than needed and cut the ends, so the chunk starts on a 2 MiB boundary.
  char* raw = static_cast<char*>(mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (raw == MAP_FAILED) return nullptr;
  char* base = reinterpret_cast<char*>(round_up(reinterpret_cast<uintptr_t>(raw), kHugePage));
  if (base > raw) munmap(raw, base - raw);
  if (raw + kHugePage > base) munmap(base + size, raw + kHugePage - base);
  madvise(base, size, MADV_HUGEPAGE);  // a request: refused where huge pages are off, and then harmless
  return new Chunk{base, size};
}

void unmap_chunk(Chunk* chunk) {
  munmap(chunk->base, chunk->size);
  delete chunk;
}

void release(Chunk* chunk) {
  std::lock_guard<std::mutex> lock(arena_mutex);
  if (--chunk->live > 0) return;
  if (chunk != shared_chunk) {
    unmap_chunk(chunk);
  } else {
    madvise(chunk->base, chunk->used, MADV_DONTNEED);  // empty again: its pages back to the OS,
    chunk->used = 0;                                    // its address range to the next forms
  }
}

// Room for `bytes` in 2 MiB pages, and the chunk it lies in; nullptr if the OS gave no memory.
std::pair<char*, Chunk*> reserve(size_t bytes) {
  std::lock_guard<std::mutex> lock(arena_mutex);
  Chunk* chunk = nullptr;
  if (bytes > kChunk / 4) {
    chunk = map_chunk(bytes);
  } else {
    if (!shared_chunk || shared_chunk->used + bytes > shared_chunk->size) {
      if (shared_chunk && shared_chunk->live == 0) unmap_chunk(shared_chunk);
      shared_chunk = map_chunk(kChunk);  // a full one stays mapped until its last form dies
    }
    chunk = shared_chunk;
  }
  if (!chunk) return {nullptr, nullptr};
  char* at = chunk->base + chunk->used;
  chunk->used += round_up(bytes, kAlign);
  ++chunk->live;
  return {at, chunk};
}

}  // namespace

at::Tensor huge_page_copy(const at::Tensor& tensor) {
  TORCH_CHECK(tensor.device().is_cpu(), "huge_page_copy: a CPU tensor expected, got one on ", tensor.device());
  const size_t bytes = tensor.numel() * tensor.element_size();
  auto [at, chunk] = bytes ? reserve(bytes) : std::pair<char*, Chunk*>{nullptr, nullptr};
  if (!at) return tensor.contiguous().clone();  // nothing to place, or no memory mapped: torch's allocator
  at::Tensor copy = at::from_blob(at, tensor.sizes(), [chunk](void*) { release(chunk); }, tensor.options());
  copy.copy_(tensor);
  return copy;
}

#else

at::Tensor huge_page_copy(const at::Tensor& tensor) { return tensor.contiguous().clone(); }

#endif
