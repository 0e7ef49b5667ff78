"""actprune compare: perplexity and decode speed of the dense model, its pruned (and quantised) variants and
llama.cpp, in one run, as a table, JSON and a plot of tokens/s against perplexity."""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from actprune_compiler.benchmark import compare
from actprune_compiler.benchmark.llamacpp import WEIGHTS
from actprune_compiler.benchmark.machine import machine_line
from actprune_compiler.commands.common import (
    add_config_args,
    add_model_args,
    calibration_input,
    check_loaded,
    comma_items,
    config_from_args,
    existing_folder,
    llamacpp_list,
    positive_int,
    quant_list,
)
from actprune_compiler.eval.runner import EvalOptions
from actprune_compiler.models.load import load_model
from actprune_compiler.reporting.files import atomic_write, check_output_folder, write_json
from actprune_compiler.reporting.runinfo import versions
from actprune_compiler.reporting.tables import format_table
from actprune_compiler.sparsity.config import QUANT


def pattern_list(text: str) -> list[str]:
    """'8:16,16:32' -> ['8:16', '16:32'] (each is checked as a SparsityConfig pattern when the configs are built)."""
    return comma_items(text, "pattern", "give comma-separated patterns such as 8:16,16:32", once=True)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="perplexity and decode speed of dense, pruned and llama.cpp in one table")
    add_model_args(p)
    add_config_args(p, pattern=False, quant=False)
    p.add_argument("--pattern", type=pattern_list, default=["8:16"], dest="patterns",
                   help="comma-separated N:M patterns (or ratios) to compare with the dense model")
    p.add_argument("--quant", type=quant_list, default=["none"], dest="quants",
                   help=f"comma-separated weight formats, each pattern run in each: {', '.join(QUANT)} (none: "
                        "float32 weights)")
    p.add_argument("--llamacpp", type=llamacpp_list, default=[],
                   help="also run llama.cpp on the model's GGUF file: 'file' (its own weights) and/or the same "
                        f"weights converted to {', '.join(WEIGHTS)} (needs llama-cpp-python)")
    p.add_argument("--max-windows", type=positive_int, default=4, help="WikiText-2 test windows scored")
    p.add_argument("--seqlen", type=positive_int, default=2048)
    p.add_argument("--new-tokens", type=positive_int, default=32, help="tokens generated per decode run")
    p.add_argument("--repeats", type=positive_int, default=3, help="decode runs per variant, variants in turn")
    p.add_argument("--cpp-wrapper", action="store_true",
                   help="actprune's decode steps call their kernels from C++ rather than Python: faster steps "
                        "(about 1.2x on SmolLM2-135M at 8:16 int4g32), a cold compile about four times as long")
    p.add_argument("--data-dir", type=existing_folder, default=None, help="where the evaluation data lies")
    p.add_argument("--out", default="out/compare", help="folder for compare.json, compare.md and compare.png")
    return p


def run(args: argparse.Namespace) -> int:
    configs = [config_from_args(argparse.Namespace(**{**vars(args), "pattern": pattern, "quant": quant}))
               for pattern in args.patterns for quant in args.quants]
    configs = [c for c in configs if c is not None]
    check_output_folder(args.out, force=True, flag="--out", replaced=False)  # writes its three files, one by one
    out = Path(args.out)
    calib_text, source = calibration_input(args, configs[0]) if configs else (None, "")
    llama = compare.llamacpp_variants(args.model, args.llamacpp)
    model, tokenizer = load_model(args.model, args.dtype, args.device)
    for config in configs:
        check_loaded(model, tokenizer, config, (calib_text, source))
    threads = torch.get_num_threads()
    variants = [compare.Variant.actprune(c) for c in (None, *configs)]
    variants += llama
    options = EvalOptions(tasks=("wikitext2",), seqlen=args.seqlen, max_windows=args.max_windows, regional=True,
                          data_dir=args.data_dir, calib_data=args.calib_data)
    result: dict[str, Any] = {"model": args.model, "configs": [c.to_dict() for c in configs],
                              "variants": [v.name for v in variants], "windows": args.max_windows,
                              "threads": threads, "cpp_wrapper": args.cpp_wrapper,
                              "date": time.strftime("%Y-%m-%d"), "versions": versions(),
                              "command": "actprune " + shlex.join(sys.argv[1:])}
    # a weight target prunes the parameters in place: the speed runs get a model the quality runs left alone
    pristine = copy.deepcopy(model) if any(c.target == "weight" for c in configs) else model
    result["quality"] = compare.quality(args.model, model, tokenizer, variants, options, threads)
    result["speed"] = compare.speed(args.model, pristine, tokenizer, variants, new_tokens=args.new_tokens,
                                    repeats=args.repeats, threads=threads, calib_text=calib_text,
                                    cpp_wrapper=args.cpp_wrapper)
    result["weights_read_mb"] = {v.name: compare.weights_read_per_token(pristine, v, args.model) / 1e6
                                 for v in variants}
    rows = compare.table_rows(result)
    text = [f"# actprune compare: {args.model} ({result['date']}, {threads} threads)", "",
            f"`{result['command']}`", "",
            f"WikiText-2 perplexity on the first {args.max_windows} windows of {args.seqlen} tokens; greedy decode of "
            f"{args.new_tokens} tokens after a {result['speed']['prompt_tokens']}-token prompt, batch 1, medians of "
            f"{args.repeats} runs with the variants in turn; first token: the prompt and the first new token, the "
            f"step already compiled; step compile: tracing and compiling the decode step, its calls in "
            f"{'C++' if args.cpp_wrapper else 'Python'} (cold or from Inductor's "
            f"cache). {machine_line(result['speed']['machine'])}", "",
            format_table(rows, list(rows[0]), markdown=True)]
    print("\n".join(text))
    write_json(out / "compare.json", result)
    atomic_write(out / "compare.md", lambda tmp: Path(tmp).write_text("\n".join(text) + "\n"))
    compare.plot(result, out / "compare.png")
    print(f"\nwrote {out}/compare.json, compare.md, compare.png")
    return 0
