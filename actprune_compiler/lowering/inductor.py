"""nm_linear for Inductor: ATen ops it fuses, with the mask as one Pointwise loop.

The reference kernel ranks with a sort and scatters. Here nm_linear expands into the criterion
and corrections as ATen ops around actprune::nm_select, and nm_select has a lowering of its
own: one Pointwise IR node whose body compares each element with the m members of its group
(broadcast loads, vectorised along the group) and selects the value or 0 in the same loop.
Expanding the comparisons as m separate ATen ops computes the same thing but multiplies
Inductor's IR, and its compile time, several-fold.

On CPU the mask is a call of actprune's native kernel (kernels/nm_select.cpp, the same rule, compiled
once per machine) instead of that loop: Inductor's C++ for the loop, in every masking kernel of every
graph, was most of what a sparse model's cold compile added to the dense model's.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._inductor import decomposition, ir
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch._inductor.lowering import lowerings, register_lowering
from torch._inductor.virtualized import ops

import actprune_compiler.ops  # noqa: F401  (registers the ops lowered here)
from actprune_compiler.kernels import cpu  # registers actprune's CPU kernels
from actprune_compiler.kernels.gpu import gpu_path_supports, record_lowering
from actprune_compiler.ops.select import prune_by_rank
from actprune_compiler.sparsity.activation import sparsify_activation
from actprune_compiler.sparsity.corrections import CORRECTIONS
from actprune_compiler.sparsity.masks import prune_sorted
from actprune_compiler.sparsity.quant import quant_format, quantize_input

log = logging.getLogger("actprune")

# Pairwise ranking costs m comparisons per element: right for N:M groups, wrong for unstructured
# top-k over a whole row (m = in_features), where a sort is cheaper.
MAX_PAIRWISE_GROUP = 64


# At most this many tokens per call take the decode kernel (more tokens share the dense GEMM's
# single pass over W better than they each read their own kept rows). Measured per layer at 1, 4 and 8 tokens:
# results/bench-smollm2-135m-8-16/bench.md (docs/performance.md says how).
DECODE_MAX_TOKENS = 4


@functools.cache
def _say_native_kernel_missing(error: str | None) -> None:
    log.warning("the native kernels and their weight cache could not be built (%s); the mask is Inductor's "
                "generated loop, and decode steps and the prefill multiply the masked input with the dense, unpacked "
                "GEMM instead: same results, dense speed and a longer compile", error)


def native_kernels() -> bool:
    """Whether the native kernels (decode kernel, packed prefill GEMM) are built; says so once if not."""
    if not cpu.available():
        _say_native_kernel_missing(cpu.build_error())
        return False
    return True


def uses_packed_gemm(x: Tensor) -> bool:
    """Whether a GEMM on input x calls actprune::packed_linear: float32 on a CPU with oneDNN, weights
    that stay graph inputs (Inductor packs frozen ones itself), and the native kernels built."""
    return not torch._inductor.config.freezing and cpu.packs_weights(x) and native_kernels()


def native_mask(x: Tensor) -> bool:
    """Whether the mask is the native CPU kernel's (kernels/nm_select.cpp) rather than a loop Inductor
    generates: on CPU, whenever the native kernels are built. Same rule, same results; Inductor's
    generated loop unrolls the m comparisons into every masking kernel of every graph, all of it
    compiled at every cold start."""
    return x.device.type == "cpu" and native_kernels()


def uses_dense_gemv(x: Tensor) -> bool:
    """Whether a dense linear on input x calls actprune::dense_gemv, which streams W's rows (dot products)
    from the weight cache's copy in 2 MiB pages: one float32 token on the CPU, the native kernels built. On
    SmolLM2-135M's shapes, one token at a time with the weights in model order, its GEMVs took 0.72x
    oneDNN's packed GEMV's time, and a call from Python 2.1 us against 11.9 (scripts/bench_quant_rows.py).
    Not for 2 tokens or more: oneDNN's GEMM is built for those."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and decode_sized(x) and math.prod(x.shape[:-1]) == 1
            and native_kernels())


def decode_sized(x: Tensor) -> bool:
    """Whether x has a decode step's shape: static sizes, at most DECODE_MAX_TOKENS tokens."""
    # Look at each dimension: Size.numel() would turn symbolic sizes into a guard on their value
    # and recompile the graph for every new prompt length.
    dims = x.shape[:-1]
    return all(isinstance(d, int) for d in dims) and math.prod(dims) <= DECODE_MAX_TOKENS


def use_decode_kernel(x: Tensor, correction: str) -> bool:
    """Decode-sized static shapes, a sparse GEMM input, and a kernel for the device: the native one
    on CPU, the Triton GEMV on CUDA. Both take W^T from the native cache keyed by the weight
    (kernels/sparse_rows.cpp), so this holds with and without Inductor's freezing."""
    if not decode_sized(x) or CORRECTIONS[correction].token_shift is not None or x.device.type not in ("cpu", "cuda"):
        return False
    return native_kernels()


def nm_linear_decomposed(x: Tensor, weight: Tensor, bias: Tensor | None, n: int, m: int,
                         criterion: str = "magnitude", correction: str = "none",
                         score_scale: Tensor | None = None, shift: Tensor | None = None, quant: str = "none") -> Tensor:
    decode = use_decode_kernel(x, correction)
    fused_gpu = x.device.type == "cuda" and not decode and gpu_path_supports(m, criterion, correction, x.dtype)
    packed = not decode and uses_packed_gemm(x)
    prune = prune_sorted if m > MAX_PAIRWISE_GROUP else cpu.prune_native if native_mask(x) else prune_by_rank
    gemm = "decode kernel over kept rows" if decode else "packed GEMM" if packed else "dense GEMM"
    if quant != "none":
        gemm += f" ({quant} rows)" if decode else " (dequantised weight)"
    mask = {prune_sorted: "sort", cpu.prune_native: "native rank", prune_by_rank: "rank loop"}[prune]
    kernel = "triton masked GEMM (or cuSPARSELt)" if fused_gpu else f"{mask} mask + {gemm}"
    record_lowering(x, n, m, criterion, correction, kernel, decode_sized(x))
    if fused_gpu:
        # Triton GEMM with the mask in its prologue (or cuSPARSELt for 2:4): no pass over memory.
        return torch.ops.actprune.nm_matmul(x, weight, bias, n, m, score_scale)
    x_sparse = sparsify_activation(x, n, m, criterion, correction, score_scale, shift, prune)
    if decode:
        # The kernel reads only the rows of W^T under kept inputs, as float32 or as quantised codes.
        if quant != "none":
            return torch.ops.actprune.quant_rows_linear(x_sparse, weight, bias, quant)
        return torch.ops.actprune.sparse_rows_linear(x_sparse, weight, bias)
    return dense_gemm(x_sparse, weight, bias, packed)


def dense_gemm(x: Tensor, weight: Tensor, bias: Tensor | None, packed: bool) -> Tensor:
    """The prefill's GEMM: on a weight packed once in the native cache, or torch's."""
    if packed:
        return torch.ops.actprune.packed_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def quant_linear_decomposed(x: Tensor, weight: Tensor, bias: Tensor | None, quant: str) -> Tensor:
    """A dense layer's quantised weight: decode steps read every row's codes (int8a8: int8 dot products with
    the input quantised by the kernel); the prefill multiplies by the dequantised weight the graph holds
    (quantised once more, exactly, by the kernel's cache), int8a8's input quantised as the kernel does."""
    input_block = quant_format(quant, *weight.shape).input_block
    if decode_sized(x) and x.device.type == "cpu" and native_kernels():
        if input_block:  # the kernel's block is INPUT_BLOCK, the format's only one
            return torch.ops.actprune.int8_gemv(x, weight, bias)
        return torch.ops.actprune.quant_rows_linear(x, weight, bias, quant)
    if input_block:
        x = quantize_input(x, input_block)
    return dense_gemm(x, weight, bias, uses_packed_gemm(x))


def _register_decompositions() -> None:
    """nm_linear's and quant_linear's expansions go into Inductor's own table rather than a `decompositions=`
    argument: Inductor cannot hash a custom table (it holds pybind functions), so it would bypass its FX graph
    cache for every graph and each process would compile from scratch."""
    table = decomposition.decompositions
    if torch.ops.actprune.nm_linear.default not in table:
        # looked up at each expansion, so that a replaced nm_linear_decomposed (a test's fault injection) is used
        table[torch.ops.actprune.nm_linear.default] = lambda *args, **kwargs: nm_linear_decomposed(*args, **kwargs)
        table[torch.ops.actprune.quant_linear.default] = quant_linear_decomposed
        decomposition.fast_random_decomps.cache_clear()  # a cached copy of the table


class PostGradPass(CustomGraphPass):
    """actprune's post-grad pass: computations repeated on the same inputs are done once, and its uuid
    puts actprune's lowering code (and whether the native kernels are there) into Inductor's cache key,
    so that a cached graph is never reused after that code changed (Inductor hashes its own code, not
    the decompositions registered here).

    nm_linear expands once per linear, so q, k and v (and gate and up), which read one input, each
    compute the same mask. Inductor can merge such copies inside its generated loops; calls of the native mask are
    opaque to it, and without this pass each would run."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        merge_repeated_work(graph)

    def uuid(self) -> bytes:
        return _lowering_hash(cpu.available())


def merge_repeated_work(graph: torch.fx.Graph) -> int:
    """Common subexpressions of a functional (post-grad, not yet re-inplaced) graph: a call of an op with the
    same arguments as an earlier one is replaced by it, as AOTAutograd's own CSE does for training graphs.
    Ops that mutate or draw random numbers are left alone, and so are new buffers other than scalar
    constants (a later pass may fill a buffer in place). Returns how many were merged."""
    first: dict[str, torch.fx.Node] = {}
    merged = 0
    for node in list(graph.nodes):
        target = node.target
        if (node.op != "call_function" or not isinstance(target, torch._ops.OpOverload) or target._schema.is_mutable
                or torch.Tag.nondeterministic_seeded in target.tags):
            continue
        if not node.all_input_nodes and not (target is torch.ops.aten.full.default and node.args[0] == []):
            continue
        key = f"{target} {node.args!r} {node.kwargs!r}"  # an argument node prints as its unique name
        if key in first:
            node.replace_all_uses_with(first[key])
            graph.erase_node(node)
            merged += 1
        else:
            first[key] = node
    return merged


@functools.cache
def _lowering_hash(native_kernels: bool) -> bytes:
    package = Path(__file__).resolve().parents[1]
    files = sorted(str(p) for folder in ("lowering", "sparsity", "kernels", "ops") for p in (package / folder).glob("*")
                   if p.suffix in (".py", ".cpp"))
    return get_hash_for_files(tuple(files), extra=f"native kernels (mask, GEMMs, decode): {native_kernels}")


POST_GRAD_PASS = PostGradPass()


def _register_select_lowering() -> None:
    target = torch.ops.actprune.nm_select.default
    if target in lowerings:
        return

    @register_lowering(target, type_promotion_kind=None)
    def nm_select_lowering(groups, values, n):
        # Scores are read m + 1 times per element: materialise them once rather than inline their
        # producer (norm, activation, criterion) into every read, which makes Inductor's C++
        # codegen, and so the compile, several times slower.
        groups.realize()
        load_score, load_value, size = groups.make_loader(), values.make_loader(), groups.get_size()
        m = int(size[-1])

        # Everything in float32, masks included: mixing float and int32 vector masks sends
        # Inductor's C++ down a lane-by-lane path. Counts up to 64 are exact in float32.
        def inner_fn(index):
            *outer, j = index
            mine = load_score(index)
            position = ops.index_expr(j, torch.float32)
            rank = ops.constant(0.0, torch.float32)
            for k in range(m):
                member = load_score([*outer, k])  # the same value across the group: a broadcast load
                beats = ops.gt(member, mine)
                if k < m - 1:  # ties go to the lower index: member k beats later positions
                    earlier = ops.lt(ops.constant(float(k), torch.float32), position)
                    beats = ops.or_(beats, ops.and_(ops.eq(member, mine), earlier))
                rank = ops.add(rank, ops.to_dtype(beats, torch.float32))
            keep = ops.lt(rank, ops.constant(float(n), torch.float32))
            return ops.where(keep, load_value(index), ops.constant(0.0, values.get_dtype()))

        return ir.Pointwise.create(device=values.get_device(), dtype=values.get_dtype(), inner_fn=inner_fn,
                                   ranges=list(size))


_register_select_lowering()
_register_decompositions()
