"""Speed, measured against baselines in the same process: dense eager, the seed's eager mask
(topk + scatter, then a dense matmul), dense compiled, and actprune compiled.

Variants of one measurement are timed interleaved (A B C A B C ...), so drift in the machine's
speed reaches them all alike; each figure is the median of the repeats.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from actprune_compiler.api import compile_program, sparsify
from actprune_compiler.backends.dynamo import compile_dense, compile_model
from actprune_compiler.backends.inductor import inductor_with_nm_lowering, inference_call
from actprune_compiler.benchmark import compare
from actprune_compiler.benchmark.generation import several_compiled_models, timed_generate
from actprune_compiler.benchmark.machine import Window, quietness
from actprune_compiler.calibration import selected_linears
from actprune_compiler.export import export_causal_lm
from actprune_compiler.models.devices import model_device, synchronize
from actprune_compiler.sparsity.config import SparsityConfig


def seed_mask(x: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The seed's masking: topk over |x| per group, scatter a 0/1 mask, multiply."""
    groups = x.reshape(*x.shape[:-1], -1, m)
    index = groups.abs().topk(n, dim=-1).indices
    mask = torch.zeros_like(groups).scatter_(-1, index, 1.0)
    return (groups * mask).reshape(x.shape)


@contextlib.contextmanager
def seed_hooks(model: nn.Module, config: SparsityConfig):
    """The seed's module-level approach: mask the inputs of the selected nn.Linear in eager mode."""
    handles = []
    for layer in selected_linears(model, config).values():
        n, m = config.parsed_pattern.group(layer.in_features)
        handles.append(layer.register_forward_pre_hook(lambda mod, args, n=n, m=m: (seed_mask(args[0], n, m),)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Median seconds (and all samples) per variant, the variants taking turns."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(s), "samples_s": s} for name, s in samples.items()}


def with_ratios(timings: dict[str, dict], baselines: tuple[str, ...]) -> dict[str, dict]:
    for name, t in timings.items():
        for base in baselines:
            if base in timings and base != name:
                t[f"vs {base}"] = t["median_s"] / timings[base]["median_s"]
    return timings


def layer_shapes(model: nn.Module, config: SparsityConfig) -> list[tuple[int, int]]:
    return sorted({(layer.in_features, layer.out_features) for layer in selected_linears(model, config).values()})


class _NMLinear(nn.Linear):
    """An nn.Linear whose forward is nm_linear: the weight stays a parameter, as in a model."""

    def __init__(self, k: int, n_out: int, n: int, m: int) -> None:
        super().__init__(k, n_out, bias=False)
        self.n, self.m = n, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.actprune.nm_linear(x, self.weight, None, self.n, self.m)


def _layer_timings(k: int, n_out: int, tokens: int, n: int, m: int, repeats: int,
                   device: torch.device) -> dict[str, dict]:
    x = torch.randn(tokens, k, device=device)
    sparse_layer = _NMLinear(k, n_out, n, m).to(device).eval()
    dense_layer = nn.Linear(k, n_out, bias=False).to(device).eval()
    dense_layer.weight = sparse_layer.weight
    dense = inference_call(torch.compile(dense_layer, backend=inductor_with_nm_lowering), freeze=True)
    sparse = inference_call(torch.compile(sparse_layer, backend=inductor_with_nm_lowering), freeze=True)

    def seed():
        with torch.no_grad():
            return F.linear(seed_mask(x, n, m), sparse_layer.weight)

    variants = {"dense compiled": lambda: dense(x), "seed eager mask": seed, "actprune compiled": lambda: sparse(x)}
    timings = interleaved(variants, repeats, warmup=2)
    torch._dynamo.reset()
    return with_ratios(timings, ("dense compiled", "seed eager mask"))


def bench_layers(model: nn.Module, config: SparsityConfig, tokens: list[int], repeats: int) -> list[dict]:
    """Each distinct projection shape: dense F.linear, the seed's eager mask, nm_linear compiled (float32
    weights: config.quant is timed by the decode rows)."""
    rows = []
    for (k, n_out), t in tqdm([(s, t) for s in layer_shapes(model, config) for t in tokens], desc="layers"):
        n, m = config.parsed_pattern.group(k)
        rows.append({"shape": f"{t}x{k} -> {n_out}", **_layer_timings(k, n_out, t, n, m, repeats, model_device(model))})
    return rows


def _prefill_timings(model: nn.Module, config: SparsityConfig, dense, pruned, regional, ids: torch.Tensor,
                     repeats: int) -> dict[str, dict]:
    def eager():
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits

    def seed():
        with seed_hooks(model, config):
            return eager()

    variants = {"dense eager": eager, "seed eager mask": seed, "dense compiled": lambda: dense(ids),
                "actprune compiled": lambda: pruned(ids), "actprune compiled regional": lambda: regional(ids)}
    timings = interleaved(variants, repeats)  # the warm-up call compiles
    return with_ratios(timings, ("dense compiled", "seed eager mask", "dense eager"))


def bench_prefill(model: nn.Module, config: SparsityConfig, shapes: list[tuple[int, int]], repeats: int) -> list[dict]:
    """Whole-model forward at each (batch, seqlen): exported programs, compiled with Inductor (the sparse one
    also one decoder layer at a time, backends/regional.py)."""
    program = export_causal_lm(model)
    sparse = sparsify(program, config).program
    dense, pruned = compile_program(program, freeze=True), compile_program(sparse, freeze=True)
    regional = compile_program(sparse, regional=True)
    rows = []
    for batch, seqlen in tqdm(shapes, desc="prefill"):
        ids = torch.randint(0, model.config.vocab_size, (batch, seqlen), device=model_device(model))
        rows.append({"shape": f"batch {batch} x {seqlen}",
                     **_prefill_timings(model, config, dense, pruned, regional, ids, repeats)})
    return rows


def bench_decode(model: nn.Module, config: SparsityConfig, prompt_len: int, new_tokens: int, repeats: int, *,
                 model_spec: str = "", llamacpp: list[compare.Variant] | None = None
                 ) -> tuple[dict[str, dict], dict[str, Any]]:
    """Greedy generation with the KV cache, batch 1: decode tokens per second of each variant, and how quiet
    the machine was while they ran (in turn, `repeats` times).

    actprune is timed through both documented calls: compile_model (dynamic shapes, freezing; and
    regional) and the plain model.forward = torch.compile(model.forward, backend="actprune", options=...),
    with Hugging Face's generate, and through actprune's decode loop (the dense model, the config, and the
    config in float32 when it quantises). llamacpp: llama.cpp's variants (compare.llamacpp_variants), run on
    the same prompt ids, new tokens and threads.
    """
    with several_compiled_models():
        return _decode_timings(model, config, prompt_len, new_tokens, repeats, model_spec, llamacpp or [])


def _decode_loop_runs(model: nn.Module, config: SparsityConfig, ids: torch.Tensor, new_tokens: int,
                      model_spec: str, llamacpp: list[compare.Variant]) -> dict[str, Callable[[], dict]]:
    configs = [None, config] + ([config.replace(quant="none")] if config.quant != "none" else [])
    variants = [compare.Variant.actprune(c) for c in configs] + llamacpp
    loops = compare.decoders(model_spec, model, variants, ids[0].tolist(), new_tokens, torch.get_num_threads())
    return {(name if name.startswith("llama.cpp") else f"{name} decode loop"):
            (lambda run=run: {"decode_tokens_per_s": run()["tokens_per_s"]}) for name, (run, _) in loops.items()}


def _decode_timings(model: nn.Module, config: SparsityConfig, prompt_len: int, new_tokens: int,
                    repeats: int, model_spec: str, llamacpp: list[compare.Variant]) -> tuple[dict[str, dict], dict]:
    ids = torch.randint(0, model.config.vocab_size, (1, prompt_len), device=model_device(model))
    dense_c, pruned_c, plain_c, regional_c = (copy.deepcopy(model) for _ in range(4))
    compile_dense(dense_c, freeze=True)
    compile_model(pruned_c, config, freeze=True)  # as the dense baseline: peak speed
    plain_c.forward = torch.compile(plain_c.forward, backend="actprune", options={**config.to_dict(), "freeze": True})
    compile_model(regional_c, config, regional=True)

    def seed():
        with seed_hooks(model, config):
            return timed_generate(model, ids, new_tokens)

    runs = {"dense eager": lambda: timed_generate(model, ids, new_tokens), "seed eager mask": seed,
            "dense compiled": lambda: timed_generate(dense_c, ids, new_tokens),
            "actprune compile_model": lambda: timed_generate(pruned_c, ids, new_tokens),
            "actprune plain torch.compile": lambda: timed_generate(plain_c, ids, new_tokens),
            "actprune compile_model regional": lambda: timed_generate(regional_c, ids, new_tokens),
            **_decode_loop_runs(model, config, ids, new_tokens, model_spec, llamacpp)}
    for fn in runs.values():  # compile prefill and decode graphs
        fn()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    window = Window.start()
    for _ in tqdm(range(repeats), desc="decode"):
        for name, fn in runs.items():
            rates[name].append(fn()["decode_tokens_per_s"])
    window.stop()
    out = {name: {"tokens_per_s": statistics.median(r), "samples": r} for name, r in rates.items()}
    for name, r in out.items():
        for base in ("dense compiled", "seed eager mask", "dense eager"):
            if base != name:
                r[f"speed-up vs {base}"] = r["tokens_per_s"] / out[base]["tokens_per_s"]
    return out, quietness(window, rates)
