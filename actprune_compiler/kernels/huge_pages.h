// Memory in 2 MiB pages for the weight forms a decode step streams (huge_pages.cpp).
#pragma once

#include <torch/extension.h>

// A contiguous copy of a CPU tensor in memory the OS is asked to back with 2 MiB pages (Linux's
// transparent huge pages; elsewhere, or where they are off, an ordinary copy).
at::Tensor huge_page_copy(const at::Tensor& tensor);
