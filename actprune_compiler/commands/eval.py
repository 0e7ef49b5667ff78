"""actprune eval: WikiText-2 perplexity and lm-eval zero-shot accuracy of the compiled (pruned) model."""

from __future__ import annotations

import argparse
from typing import Any

from actprune_compiler.commands.common import (
    add_config_args,
    add_model_args,
    calibration_input,
    config_from_args,
    example_limit,
    existing_folder,
    int_at_least,
    non_negative_int,
    positive_int,
    task_list,
)
from actprune_compiler.eval.perplexity import BOS_MODES
from actprune_compiler.tables import format_table


def add_eval_args(p: argparse.ArgumentParser) -> None:
    # A string default goes through type= too, so args.tasks is always a tuple of known tasks.
    p.add_argument("--tasks", type=task_list, default="wikitext2",
                   help="comma-separated: wikitext2, arc_easy, arc_challenge, boolq, piqa, winogrande, hellaswag")
    p.add_argument("--seqlen", type=int_at_least(2), default=2048,  # one token predicts nothing
                   help="perplexity window length (tokens)")
    p.add_argument("--max-windows", type=positive_int, default=None, help="score only the first N windows")
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="windows (ppl) or requests (lm-eval) per forward")
    p.add_argument("--bos", default="auto", choices=BOS_MODES, help="see README: perplexity")
    p.add_argument("--limit", type=example_limit, default=None,
                   help="examples per zero-shot task (lm-eval --limit): a fraction below 1 or a count")
    p.add_argument("--num-fewshot", type=non_negative_int, default=None)
    p.add_argument("--apply-chat-template", action="store_true")
    p.add_argument("--data-dir", type=existing_folder, default=None,
                   help="evaluation data folder (default: $ACTPRUNE_DATA_DIR, else the project's data/)")
    p.add_argument("--allow-hub", action="store_true",
                   help="tasks whose data is not local are fetched from the Hugging Face hub "
                        "(default: missing data fails before the model loads)")
    p.add_argument("--no-compile", action="store_true",
                   help="score the uncompiled program (reference kernels): quick quality checks; recorded")


def options_from_args(args: argparse.Namespace):
    from actprune_compiler.eval.runner import EvalOptions

    return EvalOptions(tasks=args.tasks, seqlen=args.seqlen, max_windows=args.max_windows,
                       batch_size=args.batch_size, bos=args.bos, limit=args.limit, num_fewshot=args.num_fewshot,
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


def check_local_data(args: argparse.Namespace, config) -> None:
    """Refuse, before the model loads, a run whose data is not in the data folder (it would go to the hub)."""
    from actprune_compiler.eval.data import find_data_dir, missing_data, where_data_goes

    calibrates = config is not None and (config.needs_calibration() or config.skip_sensitive)
    calibration = (args.calib_data or "wikitext2-validation") if calibrates else None
    missing = missing_data(args.tasks, args.data_dir, calibration)
    if missing:
        root = find_data_dir(args.data_dir)
        searched = f"the data folder {root}" if root else "any data folder"
        raise FileNotFoundError(
            f"evaluation data not found in {searched}: {'; '.join(missing)}; put each at its path under DATA, "
            f"with DATA {where_data_goes()}; or pass --allow-hub to fetch it from the Hugging Face hub")


def check_torchrun_tasks(tasks: tuple[str, ...], processes: int) -> None:
    """Under torchrun only perplexity is sharded here; actprune's lm-eval wrapper scores every request
    in every process, so zero-shot tasks would be computed K times over, not split."""
    zero_shot = [t for t in tasks if t != "wikitext2"]
    if processes > 1 and zero_shot:
        raise ValueError(f"zero-shot tasks ({', '.join(zero_shot)}) under torchrun go through actprune-lm-eval "
                         "(the lm-eval CLI); under torchrun, actprune eval takes --tasks wikitext2 only")


def run(args: argparse.Namespace) -> int:
    from actprune_compiler.eval import distributed
    from actprune_compiler.eval.runner import evaluate, write_result
    from actprune_compiler.files import check_output_file

    check_torchrun_tasks(args.tasks, distributed.world())
    distributed.prepare_rank()  # own Inductor cache and share of the cores, before anything compiles
    device = distributed.rank_device(args.device)  # under torchrun on CUDA: cuda:LOCAL_RANK
    config, options = config_from_args(args), options_from_args(args)
    check_output_file(args.output)  # before the model loads, not after an hour of scoring
    if not args.allow_hub:
        check_local_data(args, config)
    text, source = calibration_input(args, config)  # read now: a bad calibration source fails at once
    with distributed.process_group(device):
        result = evaluate(args.model, config, options, dtype=args.dtype, device=device,
                          calib_text=(text, source) if text is not None else None)
        processes = distributed.world()
        if not distributed.is_main():  # every rank holds the same result; rank 0 alone reports it
            return 0
    result["processes"] = processes
    row = result_row(result)
    print(format_table([row], list(row)))
    if args.output:
        write_result(args.output, result)
        print(f"wrote {args.output}")
    return 0
