"""actprune generate: greedy continuation with a KV cache through the torch.compile backend, timed."""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch

from actprune_compiler.commands.common import (
    add_config_args,
    add_model_args,
    calibration_input,
    check_loaded,
    config_from_args,
    positive_int,
)
from actprune_compiler.generation import several_compiled_models, timed_generate
from actprune_compiler.runinfo import Timer, format_times
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.tables import format_table


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("generate", help="generate text with the sparse model (KV cache), print tokens/s")
    add_model_args(p)
    add_config_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--compare-dense", action="store_true", help="also run the dense model, compiled the same way")
    p.add_argument("--inner-backend", default="inductor", choices=["inductor", "eager"])
    p.add_argument("--regional", action="store_true",
                   help="trace the model whole but compile each kind of decoder layer once (one compiled layer "
                        "for every layer): compiles in a fraction of the time")
    return p


def run_variant(model, ids: torch.Tensor, new_tokens: int, options: dict[str, Any] | None, *, tokenizer=None,
                calib_text: str | None = None, regional: bool = False,
                config: SparsityConfig | None = None) -> dict[str, Any]:
    """Compile (a warm-up generate builds the prefill and decode graphs), then time a second run.

    times: setup_s (calibration, when the method needs it), compile_s (the warm-up generate: Dynamo,
    actprune's passes and Inductor, or Inductor's cache on a warm start, plus one run), run_s (the timed
    generate); first_token_s: from the start of setup to the warm-up's first token."""
    from actprune_compiler.backends import dynamo

    dynamo.LOG.reset()
    timer = Timer()
    with timer("setup_s"):
        if options is None:  # the baseline: Inductor as it comes, weights as inputs like compile_model's
            dynamo.compile_dense(model, regional=regional)
        else:
            dynamo.compile_model(model, options, tokenizer=tokenizer, calib_text=calib_text, regional=regional)
    with timer("compile_s"):
        first = timed_generate(model, ids, new_tokens)
    with timer("run_s"):
        result = timed_generate(model, ids, new_tokens)
    result["times"] = timer.seconds
    result["first_token_s"] = timer.seconds["setup_s"] + first["prefill_ms"] / 1e3
    result["graphs"] = len(dynamo.LOG.graphs) if options is not None else None
    return result


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
    from actprune_compiler.models import load_model

    config = config_from_args(args)
    if config is None:
        raise ValueError("actprune generate needs a pattern such as 8:16")
    calib_text, source = calibration_input(args, config)  # missing calibration data fails before the model loads
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, args.dtype, args.device)
    load_s = time.perf_counter() - start
    ids = prompt_ids(args, model, tokenizer)
    check_loaded(model, tokenizer, config, (calib_text, source))
    variants = {config.label: {**config.to_dict(), "inner_backend": args.inner_backend}}
    if args.compare_dense:
        variants["dense"] = None
    rows = []
    for name, options in variants.items():
        with several_compiled_models():
            result = run_variant(copy.deepcopy(model), ids, args.max_new_tokens, options, tokenizer=tokenizer,
                                 calib_text=calib_text, regional=args.regional, config=config)
        print(f"\n[{name}] {args.prompt}{tokenizer.decode(result['tokens'], skip_special_tokens=True)}")
        print(f"{format_times({'load_s': load_s, **result['times']})}; first token {result['first_token_s']:.1f} s "
              "after the load")
        rows.append({"model": name, "prefill (ms)": round(result["prefill_ms"], 1),
                     "decode tokens/s": round(result["decode_tokens_per_s"], 2),
                     "graphs": result["graphs"] if result["graphs"] is not None else "-",
                     "compile + first run (s)": round(result["times"]["compile_s"], 1)})
    if len(rows) == 2:
        rows[0]["vs dense"] = f"{rows[0]['decode tokens/s'] / rows[1]['decode tokens/s']:.2f}x"
    print()
    print(format_table(rows, list(rows[0])))
    return 0
