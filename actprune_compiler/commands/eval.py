"""actprune eval: WikiText-2 perplexity and lm-eval zero-shot accuracy of the compiled (pruned) model."""

from __future__ import annotations

import argparse
from typing import Any

from actprune_compiler.commands.common import add_config_args, add_model_args, config_from_args
from actprune_compiler.tables import format_table


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default="wikitext2",
                   help="comma-separated: wikitext2, arc_easy, arc_challenge, boolq, piqa, winogrande, hellaswag")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window length (tokens)")
    p.add_argument("--max-windows", type=int, default=None, help="score only the first N windows")
    p.add_argument("--batch-size", type=int, default=1, help="windows (ppl) or requests (lm-eval) per forward")
    p.add_argument("--bos", default="auto", help="auto | window | start | none (see README: perplexity)")
    p.add_argument("--limit", type=float, default=None, help="examples per zero-shot task (lm-eval --limit)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--apply-chat-template", action="store_true")
    p.add_argument("--data-dir", default=None, help="evaluation data folder (default: ../shared/data)")
    p.add_argument("--no-compile", action="store_true",
                   help="score the uncompiled program (reference kernels): quick quality checks; recorded")


def options_from_args(args: argparse.Namespace):
    from actprune_compiler.eval.runner import EvalOptions

    limit = args.limit if args.limit is None or args.limit < 1 else int(args.limit)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    return EvalOptions(tasks=tasks, seqlen=args.seqlen, max_windows=args.max_windows, batch_size=args.batch_size,
                       bos=args.bos, limit=limit, num_fewshot=args.num_fewshot,
                       apply_chat_template=args.apply_chat_template, data_dir=args.data_dir,
                       calib_data=args.calib_data, compile=not args.no_compile)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="perplexity and zero-shot accuracy of the compiled (pruned) model")
    add_model_args(p)
    add_config_args(p, pattern_default=None)
    add_eval_args(p)
    p.add_argument("--output", default=None, help="write the result JSON here (atomically)")
    return p


def result_row(result: dict[str, Any]) -> dict[str, Any]:
    """One line in the seed's columns."""
    metrics = result["metrics"]
    row = {"model": result["model"], "pruning": result["pruning"]}
    if "wikitext2" in metrics:
        row["wikitext2 ppl"] = round(metrics["wikitext2"]["ppl"], 3)
    for task, value in metrics.items():
        if task != "wikitext2":
            m = value["metrics"]
            row[task] = f"{m['acc']:.3f} ± {m.get('acc_stderr', float('nan')):.3f}"
    row["runtime (min)"] = round(result["runtime_s"] / 60, 2)
    row["compile (s)"] = round(result["stages_s"]["compile_s"], 1) if result["compiled"] else "not compiled"
    row["replaced linears"] = result["replaced_linears"]
    return row


def run(args: argparse.Namespace) -> int:
    from actprune_compiler.eval.runner import evaluate, write_result

    result = evaluate(args.model, config_from_args(args), options_from_args(args), dtype=args.dtype)
    row = result_row(result)
    print(format_table([row], list(row)))
    if args.output:
        write_result(args.output, result)
        print(f"wrote {args.output}")
    return 0
