"""Quality beside speed, in one run: WikiText-2 perplexity and greedy decode speed of the dense model and its
pruned (and quantised) variants, and of llama.cpp on the model's own GGUF file.

Perplexity is scored on the same windows for every variant (actprune through its compiled program, llama.cpp
through its logits, both by eval/perplexity.py). Decode is the decode loop's (decode/) for actprune and
llama.cpp's own loop, the same prompt ids and tokens for both; the variants take turns, so drift in the
machine's speed reaches them all alike, and the load average and the spread of the repeats are reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from actprune_compiler.benchmark import llamacpp
from actprune_compiler.benchmark.machine import Window, quietness
from actprune_compiler.decode.loop import Decoder
from actprune_compiler.eval.data import load_wikitext2
from actprune_compiler.eval.perplexity import perplexity, resolve_bos
from actprune_compiler.eval.runner import EvalOptions, evaluate
from actprune_compiler.models.load import gguf_file
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.quant import bits_read_per_weight, layer_format

PROMPT = "The quick brown fox jumps over the lazy dog because"


@dataclass(frozen=True)
class Variant:
    """A point of the comparison: actprune with `config` (None: the dense model), or llama.cpp running the
    model's GGUF file as it is (weights "file") or converted to F32, F16 or Q8_0."""

    name: str
    config: SparsityConfig | None = None
    llamacpp: str | None = None

    @classmethod
    def actprune(cls, config: SparsityConfig | None) -> Variant:
        return cls(config.label if config else "dense", config)

    @classmethod
    def llama(cls, weights: str, gguf: Path) -> Variant:
        shown = llamacpp.file_type(gguf) if weights == "file" else weights
        return cls(f"llama.cpp {shown}", llamacpp=weights)


def llamacpp_variants(model_spec: str, weights: list[str] | tuple[str, ...]) -> list[Variant]:
    """llama.cpp's variants, checked before any model loads: llama-cpp-python is installed, the model has a
    GGUF file, and each conversion is made (once; they are cached)."""
    if weights:
        llamacpp.require()
    return [Variant.llama(w, gguf_for(model_spec, w)) for w in weights]


def gguf_for(model_spec: str, weights: str) -> Path:
    source = gguf_file(model_spec)
    if source is None:
        raise ValueError(f"llama.cpp runs GGUF files; model {model_spec!r} is not an alias or a .gguf file")
    return source if weights == "file" else llamacpp.converted(source, weights)


def weights_read_per_token(model: nn.Module, variant: Variant, model_spec: str) -> int:
    """Bytes of weights one decode step reads: each linear layer's kept fraction of its rows, in its format
    (float32, or the quantised codes with their scales), for the layers the config's modules and exclude
    select (layers skip_sensitive keeps dense count as pruned, and a rotation's Q is not counted).
    llama.cpp: every tensor of its GGUF file but the token embedding, of which a token reads one row, unless
    the file has no output matrix and multiplies by the embedding instead (tied)."""
    if variant.llamacpp is not None:
        return llamacpp.weights_read_per_token(gguf_for(model_spec, variant.llamacpp))
    config, total = variant.config, 0.0
    for path, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        out_features, in_features = module.weight.shape
        pruned = config is not None and config.selects(path)
        keep, group = config.parsed_pattern.group(in_features) if pruned else (1, 1)
        fmt = "none" if config is None else layer_format(config.quant, pruned, in_features)
        bits = 32 * keep / group if fmt == "none" else bits_read_per_weight(fmt, out_features, in_features,
                                                                            keep / group)
        total += out_features * in_features * bits / 8
    return round(total)


def llamacpp_perplexity(model_spec: str, weights: str, tokenizer, options: EvalOptions, threads: int) -> dict:
    engine = llamacpp.LlamaCpp(gguf_for(model_spec, weights), threads, context=options.seqlen, logits=True)
    try:
        text = load_wikitext2("test", options.data_dir)
        return perplexity(lambda batch: torch.stack([engine.logits(row.tolist()) for row in batch]), tokenizer,
                          text.text, seqlen=options.seqlen, max_windows=options.max_windows,
                          bos=resolve_bos(options.bos, tokenizer), progress=options.progress)
    finally:
        engine.close()


def quality(model_spec: str, model, tokenizer, variants: list[Variant], options: EvalOptions,
            threads: int) -> dict[str, dict]:
    """Each variant's perplexity result on the same windows."""
    out = {}
    for variant in variants:
        if variant.llamacpp is None:
            result = evaluate(model_spec, variant.config, options, loaded=(model, tokenizer))
            out[variant.name] = {**result["metrics"]["wikitext2"], "compile_s": result["stages_s"].get("compile_s")}
        else:
            out[variant.name] = llamacpp_perplexity(model_spec, variant.llamacpp, tokenizer, options, threads)
    return out


def decoders(model_spec: str, model, variants: list[Variant], prompt: list[int], new_tokens: int,
              threads: int, cpp_wrapper: bool = False, **options: Any) -> dict[str, tuple[Callable[[], dict], dict]]:
    """Each variant's generation as a function of no arguments, after a first generation that compiles the
    step (its compile and first-token times are returned beside it). cpp_wrapper: as Decoder takes it."""
    ids = torch.tensor([prompt], device=next(model.parameters()).device)
    runs = {}
    for variant in tqdm(variants, desc="compile the decode steps"):
        if variant.llamacpp is None:
            extra = options if variant.config is not None else {}
            decoder = Decoder(model, variant.config, max_length=len(prompt) + new_tokens, cpp_wrapper=cpp_wrapper,
                              **extra)
            first = decoder.generate(ids, new_tokens)

            def run(decoder=decoder) -> dict:
                g = decoder.generate(ids, new_tokens)
                return {"tokens": g.tokens, "first_token_s": g.first_token_s, "tokens_per_s": g.decode_tokens_per_s}

            runs[variant.name] = (run, {"compile_s": first.compile_s, "cold_first_token_s": first.first_token_s})
        else:
            start = time.perf_counter()
            engine = llamacpp.LlamaCpp(gguf_for(model_spec, variant.llamacpp), threads,
                                       context=len(prompt) + new_tokens)
            load_s = time.perf_counter() - start

            def run(engine=engine) -> dict:
                r = engine.decode(prompt, new_tokens)
                return {"tokens": r["tokens"], "first_token_s": r["first_token_s"],
                        "tokens_per_s": r["decode_tokens_per_s"]}

            runs[variant.name] = (run, {"load_s": load_s})
    return runs


def speed(model_spec: str, model, tokenizer, variants: list[Variant], *, new_tokens: int, repeats: int,
          threads: int, prompt: str = PROMPT, calib_text: str | None = None, cpp_wrapper: bool = False
          ) -> dict[str, Any]:
    """Greedy decode of `new_tokens` tokens after `prompt`, every variant in turn, `repeats` times: the median
    tokens/s and first-token time of each, its samples, and whether the machine was quiet. calib_text: for
    configs that calibrate (as compile_model takes it)."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids[0].tolist()
    runs = decoders(model_spec, model, variants, ids, new_tokens, threads, cpp_wrapper, tokenizer=tokenizer,
                    calib_text=calib_text)
    samples: dict[str, list[dict]] = {name: [] for name in runs}
    window = Window.start()
    for _ in tqdm(range(repeats), desc="decode, variants in turn"):
        for name, (run, _) in runs.items():
            samples[name].append(run())
    window.stop()
    rows = {}
    for name, (_, first) in runs.items():
        rates = [s["tokens_per_s"] for s in samples[name]]
        rows[name] = {"tokens_per_s": statistics.median(rates), "samples": rates,
                      "first_token_s": statistics.median(s["first_token_s"] for s in samples[name]),
                      "tokens": samples[name][-1]["tokens"], **first}
    machine = quietness(window, {n: r["samples"] for n, r in rows.items()})
    return {"prompt_tokens": len(ids), "new_tokens": new_tokens, "repeats": repeats, "decode": rows,
            "machine": machine}


def table_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """One row per variant: perplexity, decode tokens/s (and against the dense model), first token, compile."""
    decode, ppl = result["speed"]["decode"], result["quality"]
    dense = decode.get("dense", {}).get("tokens_per_s")
    rows = []
    for name, d in decode.items():
        compile_s = d.get("compile_s")
        rows.append({"variant": name, "wikitext2 ppl": f"{ppl[name]['ppl']:.2f}",
                     "decode tokens/s": f"{d['tokens_per_s']:.1f}",
                     "vs dense": f"{d['tokens_per_s'] / dense:.2f}x" if dense else "",
                     "first token (ms)": f"{d['first_token_s'] * 1e3:.0f}",
                     "step compile (s)": f"{compile_s:.1f}" if compile_s is not None else "n/a (llama.cpp)",
                     **_bytes_columns(result.get("weights_read_mb", {}).get(name), d["tokens_per_s"])})
    return rows


def _bytes_columns(mb: float | None, tokens_per_s: float) -> dict[str, str]:
    """Weights read per token, and the read bandwidth that speed stands for (its distance from the machine's)."""
    if mb is None:
        return {}
    return {"weights read (MB/token)": f"{mb:.1f}", "weight GB/s": f"{mb * tokens_per_s / 1e3:.1f}"}


def plot(result: dict[str, Any], path: Path) -> None:
    """Decode tokens/s against perplexity, one labelled point per variant (up and to the right is better)."""
    import matplotlib  # the optional eval extra; 0.35 s to import pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from actprune_compiler.reporting.files import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4.5))
    llama = 0
    for name, d in result["speed"]["decode"].items():
        ppl = result["quality"][name]["ppl"]
        if name.startswith("llama.cpp"):  # its points share actprune dense's perplexity: labels below, staggered
            style, offset, llama = {"marker": "s", "color": "tab:gray"}, (5, -12 - 10 * (llama % 2)), llama + 1
        else:
            style = {"marker": "o", "color": "tab:blue" if name.startswith("dense") else "tab:green"}
            offset = (5, 4)
        ax.scatter(d["tokens_per_s"], ppl, s=40, **style)
        ax.annotate(name, (d["tokens_per_s"], ppl), textcoords="offset points", xytext=offset, fontsize=8)
    ax.margins(x=0.1, y=0.15)  # room for the labels at the edges
    windows = result["windows"]
    ax.set(xlabel="greedy decode tokens/s, batch 1 (higher is better)",
           ylabel=f"WikiText-2 perplexity, {windows} window{'s' if windows != 1 else ''} (lower is better)",
           title=f"{result['model']}: quality and speed ({result['threads']} threads, {result['date']})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
