"""Kernels: a native CPU kernel for decode, Triton kernels for GPU (tested on CPU with TRITON_INTERPRET=1)."""
