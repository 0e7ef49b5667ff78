"""actprune generate: greedy continuation, timed. By default the decode loop (decode/: a static KV cache and one
compiled single-token step); --hf-generate runs Hugging Face's generate() through the torch.compile backend."""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
from torch._dynamo.utils import counters

from actprune_compiler.backends import dynamo
from actprune_compiler.benchmark.generation import several_compiled_models, timed_generate
from actprune_compiler.commands.common import (
    add_config_args,
    add_model_args,
    calibration_input,
    check_loaded,
    config_from_args,
    positive_int,
)
from actprune_compiler.decode.loop import Decoder
from actprune_compiler.models.load import load_model
from actprune_compiler.reporting.files import check_output_file, write_json
from actprune_compiler.reporting.runinfo import Timer, format_times, seconds_since_process_start
from actprune_compiler.reporting.tables import format_table
from actprune_compiler.sparsity.config import SparsityConfig


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("generate", help="generate text with the sparse model and time it (--pattern none: the "
                                        "dense model, compiled the same way)")
    add_model_args(p)
    add_config_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--compare-dense", action="store_true", help="also run the dense model, compiled the same way")
    p.add_argument("--inner-backend", default="inductor", choices=list(dynamo.INNER_BACKENDS))
    p.add_argument("--hf-generate", action="store_true",
                   help="Hugging Face's generate() with its dynamic KV cache through the torch.compile backend "
                        "(compile_model), instead of actprune's decode loop; two graphs, prefill and decode")
    p.add_argument("--regional", action="store_true",
                   help="with --hf-generate: trace the model whole but compile each kind of decoder layer once "
                        "(one compiled layer for every layer): compiles in a fraction of the time")
    p.add_argument("--json-out", default=None, metavar="FILE",
                   help="also write this start's timings as JSON: stage times, the first token counted from the "
                        "process start, decode tokens/s, Inductor's FX graph cache hits and misses (actprune bench "
                        "--startup runs this command and reads them)")
    return p


def decode_loop(model, ids: torch.Tensor, new_tokens: int, config: SparsityConfig | None, *, eos: int | None,
                tokenizer=None, calib_text: str | None = None, inner_backend: str = "inductor") -> dict[str, Any]:
    """One generation by the decode loop, the step compiled on the way to the first token.

    times: setup_s (calibration and learned values, when the method needs them), compile_s (tracing and
    compiling the step, or loading it from Inductor's cache), run_s (the prompt and the new tokens);
    first_token_s: from the start of setup to the first new token; ready_at: perf_counter() when setup ended."""
    dynamo.LOG.reset()
    timer = Timer()
    with timer("setup_s"):
        options = {} if config is None else {"tokenizer": tokenizer, "calib_text": calib_text,
                                             "inner_backend": inner_backend}
        decoder = Decoder(model, config, max_length=ids.shape[1] + new_tokens, **options)
    ready_at = time.perf_counter()
    generation = decoder.generate(ids, new_tokens, eos_token_id=eos)
    timer.seconds["compile_s"] = round(generation.compile_s, 3)
    timer.seconds["run_s"] = round(time.perf_counter() - ready_at - generation.compile_s, 3)
    return {"tokens": generation.tokens, "times": timer.seconds, "ready_at": ready_at,
            "first_token_s": timer.seconds["setup_s"] + generation.first_token_s,
            "first_after_setup_s": generation.first_token_s,
            "decode_tokens_per_s": generation.decode_tokens_per_s, "graphs": 1}


def hf_generate(model, ids: torch.Tensor, new_tokens: int, config: SparsityConfig | None, *, tokenizer=None,
                calib_text: str | None = None, regional: bool = False,
                inner_backend: str = "inductor") -> dict[str, Any]:
    """Hugging Face's generate() through the torch.compile backend: a warm-up generate compiles the prefill
    and decode graphs, a second one is timed (times and first_token_s as decode_loop's)."""
    dynamo.LOG.reset()
    timer = Timer()
    with timer("setup_s"):
        if config is None:  # the baseline: Inductor as it comes, weights as inputs like compile_model's
            dynamo.compile_dense(model, regional=regional)
        else:
            dynamo.compile_model(model, config, tokenizer=tokenizer, calib_text=calib_text, regional=regional,
                                 inner_backend=inner_backend)
    ready_at = time.perf_counter()
    with several_compiled_models(), timer("compile_s"):
        first = timed_generate(model, ids, new_tokens)
    with timer("run_s"):
        result = timed_generate(model, ids, new_tokens)
    return {"tokens": result["tokens"], "times": timer.seconds, "ready_at": ready_at,
            "first_token_s": timer.seconds["setup_s"] + first["prefill_ms"] / 1e3,
            "first_after_setup_s": first["prefill_ms"] / 1e3, "decode_tokens_per_s": result["decode_tokens_per_s"],
            "graphs": len(dynamo.LOG.graphs) if config is not None else None}


def start_record(args: argparse.Namespace, config: SparsityConfig | None, started: tuple[float, float],
                 load_s: float, result: dict[str, Any]) -> dict[str, Any]:
    """What --json-out writes about this start. started: (seconds since the process start, perf_counter())
    taken together when run() began, so first_token_s counts from the process start."""
    since_start, at = started
    first_token = since_start + result["ready_at"] - at + result["first_after_setup_s"]
    return {"model": args.model, "pattern": config.pattern if config else "none",
            "loop": "hf-generate" if args.hf_generate else "decode loop", "regional": args.regional,
            "new_tokens": args.max_new_tokens,
            "times": {"imports_s": round(since_start, 3), "load_s": round(load_s, 3), **result["times"]},
            "first_token_s": round(first_token, 3), "tokens": result["tokens"],
            "decode_tokens_per_s": round(result["decode_tokens_per_s"], 2),
            "rewritten_per_graph": dynamo.report()["rewritten_per_graph"],
            "inductor_cache": {k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}}


def prompt_ids(args: argparse.Namespace, model, tokenizer) -> torch.Tensor:
    """The prompt's token ids, after checking what the flags ask of this model and tokenizer: a tokenizer
    (with a chat template for --chat), a prompt of at least one token, and room for --max-new-tokens in
    the model's positions."""
    if tokenizer is None:
        raise ValueError(f"model {args.model!r} has no tokenizer; generate needs one")
    if args.chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"--chat wraps the prompt in the tokenizer's chat template, and the tokenizer of model "
                         f"{args.model!r} has none; drop --chat")
    text = (tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], tokenize=False,
                                          add_generation_prompt=True) if args.chat else args.prompt)
    ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    if ids.shape[1] == 0:
        raise ValueError(f"--prompt {args.prompt!r} is no token at all for the tokenizer of model {args.model!r}; "
                         "give a prompt with some text")
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and ids.shape[1] + args.max_new_tokens > positions:
        room = positions - ids.shape[1]
        raise ValueError(f"--max-new-tokens {args.max_new_tokens} after a prompt of {ids.shape[1]} tokens runs past "
                         f"the {positions} positions of model {args.model!r}; "
                         + (f"give --max-new-tokens {room} or less" if room > 0 else "give a shorter --prompt"))
    return ids


def run(args: argparse.Namespace) -> int:
    # interpreter start, imports and argument parsing: the first stage of a start that --json-out records
    started = (seconds_since_process_start(), time.perf_counter()) if args.json_out else None
    config = config_from_args(args)
    if config is None and args.compare_dense:
        raise ValueError("--compare-dense runs the dense model beside a pattern; give --pattern N:M, or drop "
                         "--compare-dense")
    if args.json_out and args.compare_dense:
        raise ValueError("--json-out records the start of one model; drop --compare-dense")
    if args.regional and not args.hf_generate:
        raise ValueError("--regional compiles Hugging Face's generate() graphs layer by layer; add --hf-generate, or "
                         "drop --regional (the decode loop compiles one single-token step)")
    check_output_file(args.json_out, "--json-out")
    calib_text, source = calibration_input(args, config)  # missing calibration data fails before the model loads
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, args.dtype, args.device)
    load_s = time.perf_counter() - start
    ids = prompt_ids(args, model, tokenizer)
    if config is not None:
        check_loaded(model, tokenizer, config, (calib_text, source))
    variants = {config.label: config} if config else {}
    if config is None or args.compare_dense:  # --pattern none: the dense model, compiled the same way
        variants["dense"] = None
    rows = []
    for index, (name, variant) in enumerate(variants.items()):
        # a later variant gets its own copy: a weight target prunes the parameters in place
        target = model if index == 0 else copy.deepcopy(model)
        if args.hf_generate:
            result = hf_generate(target, ids, args.max_new_tokens, variant, tokenizer=tokenizer,
                                 calib_text=calib_text, regional=args.regional, inner_backend=args.inner_backend)
        else:
            result = decode_loop(target, ids, args.max_new_tokens, variant, eos=tokenizer.eos_token_id,
                                 tokenizer=tokenizer, calib_text=calib_text, inner_backend=args.inner_backend)
        print(f"\n[{name}] {args.prompt}{tokenizer.decode(result['tokens'], skip_special_tokens=True)}")
        print(f"{format_times({'load_s': load_s, **result['times']})}; first token {result['first_token_s']:.1f} s "
              "after the load")
        rows.append({"model": name, "new tokens": len(result["tokens"]),
                     "first token (s)": round(result["first_token_s"], 2),
                     "decode tokens/s": round(result["decode_tokens_per_s"], 2),
                     "compile (s)": round(result["times"]["compile_s"], 1)})
    if len(rows) == 2:
        rows[0]["vs dense"] = f"{rows[0]['decode tokens/s'] / rows[1]['decode tokens/s']:.2f}x"
    print()
    print(format_table(rows, list(rows[0])))
    if args.json_out:
        write_json(args.json_out, start_record(args, config, started, load_s, result))
    return 0
