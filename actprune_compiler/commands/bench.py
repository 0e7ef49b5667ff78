"""actprune bench: prefill, decode and per-layer timings against dense and the seed's eager mask."""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from actprune_compiler.benchmark import bench, compare
from actprune_compiler.benchmark.llamacpp import WEIGHTS
from actprune_compiler.benchmark.machine import machine_line
from actprune_compiler.benchmark.startup import cold_and_warm
from actprune_compiler.commands.common import (
    add_config_args,
    add_model_args,
    check_loaded,
    config_from_args,
    llamacpp_list,
    non_negative_int,
    positive_int,
    positive_int_list,
    shape_list,
)
from actprune_compiler.models.load import load_model
from actprune_compiler.reporting.files import atomic_write, check_output_folder, file_name_part, write_json
from actprune_compiler.reporting.runinfo import versions
from actprune_compiler.reporting.tables import format_table


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="time dense, the seed's eager mask and actprune in one process")
    add_model_args(p)
    add_config_args(p)
    # String defaults go through type= too: args.prefill is a list of (batch, seqlen), args.layer_tokens of ints.
    p.add_argument("--prefill", type=shape_list, default="1x512,8x512",
                   help="batch x seqlen shapes for whole-model prefill")
    p.add_argument("--layer-tokens", type=positive_int_list, default="1,4,8,512",
                   help="token counts for the per-layer GEMMs (small ones: where the decode kernel pays)")
    p.add_argument("--decode-tokens", type=non_negative_int, default=32,
                   help="tokens generated per decode run (0: skip)")
    p.add_argument("--prompt-len", type=positive_int, default=32)
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--vs-llamacpp", nargs="?", type=llamacpp_list, const=["file"], default=[], metavar="WEIGHTS",
                   help="also decode with llama.cpp on the model's GGUF file, interleaved with actprune's variants: "
                        f"'file' (the default: its own weights) and/or converted to {', '.join(WEIGHTS)}, "
                        "comma-separated (needs llama-cpp-python)")
    p.add_argument("--startup", action="store_true",
                   help="also time cold and warm starts (fresh processes: load, compile, first token) of the "
                        "dense and the sparse model, without freezing (Inductor caches no frozen graph)")
    p.add_argument("--startup-only", action="store_true",
                   help="time only the cold and warm starts (--startup without the in-process timings)")
    p.add_argument("--out", default=None, help="folder for bench.json, bench.md, bench.png")
    return p


def _ms(t: dict) -> str:
    return f"{t['median_s'] * 1e3:.3g}"


def timing_rows(rows: list[dict], kind: str) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        for variant, t in row.items():
            if variant == "shape":
                continue
            out.append({"measure": kind, "shape": row["shape"], "variant": variant, "median ms": _ms(t),
                        "vs dense compiled": f"{t.get('vs dense compiled', 1.0):.3f}",
                        "vs seed eager mask": f"{t.get('vs seed eager mask', 1.0):.3f}"})
    return out


STARTS = {"decode loop": False, "hf-generate regional": True}  # how each start generates -> regional


def startup_rows(startup: dict[str, dict[str, dict[str, dict]]]) -> list[dict[str, Any]]:
    """One row per (mode, variant, cold/warm) from {mode: {variant: {"cold": ..., "warm": ...}}}: where the
    seconds of a fresh process went, and the sparse start's compile (setup + the first generate) against the
    dense one's in the same mode and kind of start."""
    def compile_s(run: dict) -> float:  # setup, then the first generate (compiles, or loads from the cache)
        return run["times"]["setup_s"] + run["times"]["compile_s"]

    rows = []
    for mode, variants in startup.items():
        dense = variants["dense"]
        for variant, starts in variants.items():
            for kind, run in starts.items():
                t, cache = run["times"], run["inductor_cache"]
                hits, misses = cache.get("fxgraph_cache_hit", 0), cache.get("fxgraph_cache_miss", 0)
                rows.append({"mode": mode, "variant": variant, "start": kind, "imports (s)": f"{t['imports_s']:.1f}",
                             "load (s)": f"{t['load_s']:.1f}", "compile + generate (s)": f"{compile_s(run):.1f}",
                             "vs dense": f"{compile_s(run) / compile_s(dense[kind]):.2f}x",
                             "first token (s)": f"{run['first_token_s']:.1f}",
                             "process (s)": f"{run['process_s']:.1f}", "cache hits/misses": f"{hits}/{misses}",
                             "decode tokens/s": f"{run['decode_tokens_per_s']:.1f}"})
    return rows


def decode_rows(decode: dict[str, dict]) -> list[dict[str, Any]]:
    return [{"variant": name, "tokens/s": f"{r['tokens_per_s']:.2f}",
             "vs dense compiled": f"{r.get('speed-up vs dense compiled', 1.0):.2f}x",
             "vs seed eager mask": f"{r.get('speed-up vs seed eager mask', 1.0):.2f}x"} for name, r in decode.items()]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib  # the optional eval extra; 0.35 s to import pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels, ratios = [], []
    for row in result["prefill"]:
        for variant in ("seed eager mask", "actprune compiled"):
            labels.append(f"{row['shape']}\n{variant}")
            ratios.append(row[variant]["vs dense compiled"])
    axes[0].bar(range(len(ratios)), ratios, color=["tab:red", "tab:green"] * len(result["prefill"]))
    axes[0].axhline(1.0, color="gray", linestyle=":")
    axes[0].set(xticks=range(len(labels)), title="prefill time / dense compiled (lower is better)")
    axes[0].set_xticklabels(labels, fontsize=7)
    if result.get("decode"):
        names = list(result["decode"])
        axes[1].bar(names, [result["decode"][n]["tokens_per_s"] for n in names])
        axes[1].set(title="greedy decode tokens/s, batch 1 (higher is better)")
        axes[1].tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{result['model']} {result['config']['pattern']} ({result['machine']})", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config is None or config.target != "activation":
        raise ValueError("bench times activation pruning: give --pattern N:M")
    plain = ("magnitude", "none", 0, "none", "none")
    if (config.criterion, config.correction, config.skip_sensitive, config.recovery, config.rotation) != plain:
        # Every static criterion costs what magnitude costs at run time (|x| times a constant); the
        # per-layer timings use magnitude, so a different method would be reported under its name but not timed.
        raise ValueError(f"bench times the plain magnitude mask; {config.label!r} is not benchmarked (leave "
                         "--criterion, --correction, --skip-sensitive, --recovery and --rotation at their defaults)")
    if config.quant != "none" and (args.startup or args.startup_only):
        raise ValueError(f"--startup times the float32 start of --pattern {config.pattern}; drop --quant "
                         f"{config.quant} for it (the decode rows time the quantised step)")
    default = f"results/bench-{file_name_part(args.model)}-{config.pattern.replace(':', '-')}"
    out = Path(default if args.out is None else args.out)
    # files in it are replaced one by one; a file there, or a folder that cannot be written, fails now
    check_output_folder(default if args.out is None else args.out, force=True, inputs=(args.model,), replaced=False)
    llama = compare.llamacpp_variants(args.model, args.vs_llamacpp)
    model, _ = load_model(args.model, args.dtype, args.device)
    check_loaded(model, None, config)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    result: dict[str, Any] = {"model": args.model, "config": config.to_dict(), "repeats": args.repeats,
                              "threads": torch.get_num_threads(), "versions": versions(), "machine": machine,
                              "date": time.strftime("%Y-%m-%d"), "command": "actprune " + shlex.join(sys.argv[1:])}
    if not args.startup_only:
        result["layers"] = bench.bench_layers(model, config, args.layer_tokens, args.repeats)
        result["prefill"] = bench.bench_prefill(model, config, args.prefill, args.repeats)
        if args.decode_tokens:
            result["decode"], result["decode_machine"] = bench.bench_decode(
                model, config, args.prompt_len, args.decode_tokens, args.repeats, model_spec=args.model,
                llamacpp=llama)
    if args.startup or args.startup_only:
        with tempfile.TemporaryDirectory(prefix="actprune-startup-") as folder:
            place = {"dtype": args.dtype, "device": args.device}
            variants = (("dense", None), (config.label, config.pattern))
            result["startup"] = {
                mode: {name: cold_and_warm(args.model, pattern, folder, regional=regional, **place)
                       for name, pattern in variants} for mode, regional in STARTS.items()}
    how = (f"Medians of {args.repeats} interleaved repeats" if "prefill" in result
           else "Each start is one fresh process")
    text = [f"# actprune bench: {args.model} {config.pattern} ({result['date']}, {result['machine']})", "",
            f"`{result['command']}`. {how}; ratios are time / baseline (below 1 is faster)."]
    if "prefill" in result:
        text += ["", "## prefill (whole model) and per-layer GEMMs", "",
                 format_table(timing_rows(result["prefill"], "prefill") + timing_rows(result["layers"], "layer"),
                              ["measure", "shape", "variant", "median ms", "vs dense compiled", "vs seed eager mask"],
                              markdown=True)]
    if "decode" in result:
        text += ["", f"## greedy decode, batch 1, prompt {args.prompt_len}, {args.decode_tokens} new tokens", "",
                 machine_line(result["decode_machine"]), "",
                 format_table(decode_rows(result["decode"]), ["variant", "tokens/s", "vs dense compiled",
                                                              "vs seed eager mask"], markdown=True)]
    if "startup" in result:
        text += ["", "## cold and warm starts (fresh processes, no freezing)", "",
                 "Each start is `actprune generate` in a fresh process, generating "
                 f"{result['startup']['decode loop']['dense']['cold']['new_tokens']} tokens. decode loop: the "
                 "default command (one compiled single-token step over a static KV cache); hf-generate regional: "
                 "`--hf-generate --regional` (Hugging Face's generate, its prefill and decode graphs traced whole "
                 "and compiled one kind of decoder layer at a time), which generates twice and times the second. "
                 "Cold: an empty Inductor cache; warm: a second process with the cache the cold one filled. Both "
                 "load the model from actprune's dequantised copy. first token: from the process start (the "
                 "interpreter's start and the imports included) to the first generated token. vs dense: against "
                 "the dense start in the same mode.", "",
                 format_table(startup_rows(result["startup"]), list(startup_rows(result["startup"])[0]),
                              markdown=True)]
    print("\n".join(text))
    write_json(out / "bench.json", result)
    atomic_write(out / "bench.md", lambda tmp: Path(tmp).write_text("\n".join(text) + "\n"))
    if "prefill" in result:
        plot(result, out / "bench.png")
    print(f"\nwrote {out}/bench.json, bench.md" + (", bench.png" if "prefill" in result else ""))
    return 0
