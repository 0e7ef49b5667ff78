"""Arguments shared by several subcommands.

Every flag is checked as it is parsed (argparse `type=` functions below) or at the top of run(),
so that a bad value fails in a second with one sentence, never after a model has loaded; what depends
on the model (its layers, positions, tokenizer) is checked right after the load, before any export or
compile (check_loaded, eval.runner.check_fits), in a sentence that names the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

from actprune_compiler.benchmark.llamacpp import WEIGHTS
from actprune_compiler.calibration.hooks import check_calibration_text
from actprune_compiler.eval.data import CALIB_SOURCES, calibration_text
from actprune_compiler.eval.harness import unknown_tasks, unknown_tasks_message  # lm_eval only if needed
from actprune_compiler.models.devices import DEVICE_CHOICES, resolve_device
from actprune_compiler.models.load import ALIASES, DEFAULT_MODEL, DTYPE_CHOICES, spec_problem
from actprune_compiler.passes.select_linears import check_selection
from actprune_compiler.sparsity.config import QUANT, TARGETS, SparsityConfig
from actprune_compiler.sparsity.corrections import CORRECTIONS
from actprune_compiler.sparsity.criteria import CRITERIA, WEIGHT_CRITERIA
from actprune_compiler.sparsity.recovery_methods import BATCH, DEFAULT_LR, RECOVERY, WEIGHT_LR_RATIO
from actprune_compiler.sparsity.rotation import ROTATIONS

# Config fields whose flag has another name.
FIELD_FLAGS = {"drop_bias": "--seed-compat"}


def flag(field: str) -> str:
    """The flag that sets a config field or evaluation option: seqlen -> --seqlen, drop_bias -> --seed-compat.
    Library checks take it to spell the settings they name as the command line does."""
    return FIELD_FLAGS.get(field, "--" + field.replace("_", "-"))


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum. argparse prefixes the flag ("argument --seqlen: ...")."""
    allowed = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; it must be {allowed}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; it must be {allowed}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; it must be a positive number") from None
    if not 0 < value < float("inf"):  # also catches nan
        raise argparse.ArgumentTypeError(f"{text} is out of range; it must be a positive finite number")
    return value


def example_limit(text: str) -> int | float:
    """lm-eval's --limit: a fraction of each task below 1, a whole count of examples from 1 up."""
    allowed = "it must be a fraction between 0 and 1 or a whole count of examples >= 1"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; {allowed}") from None
    if not value > 0:  # also catches nan
        raise argparse.ArgumentTypeError(f"{text} is too small; {allowed}")
    if value < 1:
        return value
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text} is not a whole count; {allowed}")
    return int(value)


def existing_folder(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the folder is empty; give an existing folder")
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not an existing folder")
    return text


def model_spec(text: str) -> str:
    """An argparse type: a model that may exist (models.load.spec_problem), checked before anything loads."""
    if (problem := spec_problem(text)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def calib_source(text: str) -> str:
    """A named calibration split or an existing text file (eval.data.calibration_text reads it later)."""
    if text not in CALIB_SOURCES and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is neither {', '.join(CALIB_SOURCES)} nor an existing text file")
    return text


def comma_items(text: str, what: str, allowed: str, *, once: bool = False) -> list[str]:
    """The non-empty items of a comma-separated value, or one sentence: none given, or (once) one given twice."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"no {what} given; {allowed}")
    if once and len(set(items)) < len(items):
        raise argparse.ArgumentTypeError(f"{text} names a {what} twice; give each once")
    return items


def task_list(text: str) -> tuple[str, ...]:
    """Comma-separated tasks, checked now so that a typo does not surface after perplexity has run."""
    items = comma_items(text, "task", "give wikitext2 or any lm-eval task or group")
    tasks = tuple(dict.fromkeys(items))  # ordered, de-duplicated
    if unknown := unknown_tasks(tasks):
        raise argparse.ArgumentTypeError(unknown_tasks_message(unknown))
    return tasks


def positive_int_list(text: str) -> list[int]:
    """'1,4,8,512' -> [1, 4, 8, 512]."""
    items = comma_items(text, "value", "give comma-separated positive integers such as 1,4,8")
    bad = next((item for item in items if not item.isdigit() or int(item) < 1), None)
    if bad is not None:
        raise argparse.ArgumentTypeError(f"{bad!r} in {text!r} is not a positive integer; "
                                         "give comma-separated positive integers such as 1,4,8")
    return [int(item) for item in items]


def shape_list(text: str) -> list[tuple[int, int]]:
    """'1x512,8x512' -> [(1, 512), (8, 512)]: batch x sequence length."""
    allowed = "give comma-separated BATCHxSEQLEN shapes of positive integers such as 1x512,8x512"
    items = comma_items(text, "shape", allowed)
    shapes = []
    for item in items:
        parts = [p.strip() for p in item.lower().split("x")]
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"{item!r} in {text!r} is not a shape; {allowed}")
        shapes.append((int(parts[0]), int(parts[1])))
    return shapes


def device_name(text: str) -> str:
    """An argparse type: a device this machine has ('cuda:3' on a one-GPU machine fails here)."""
    try:
        return str(resolve_device(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_placement_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_name, default=None,
                   help=f"{DEVICE_CHOICES} (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default="default", choices=list(DTYPE_CHOICES),
                   help="default: bfloat16 on CUDA, float32 on the CPU; auto: the checkpoint's dtype")


def add_model_args(p: argparse.ArgumentParser, *, artifact: bool = False) -> None:
    """artifact: the command also takes an `actprune compile` folder as --model (eval does)."""
    p.add_argument("--model", type=model_spec, default=DEFAULT_MODEL,
                   help=f"alias ({', '.join(ALIASES)}), local HF folder, .gguf file or hub id" +
                   (", or an artifact folder from actprune compile (its program.pt2 is scored as saved)"
                    if artifact else ""))
    add_placement_args(p)


LLAMACPP_WEIGHTS = ("file", *WEIGHTS)  # 'file': the GGUF file's own weights
QUANT_HELP = ("quantise every pruned layer's weight as rows of W^T: int8 (per output channel), int4 (groups of 64 "
              "outputs), int4g32 (groups of 32 outputs) or int4k32 (groups of 32 inputs, as GGUF's Q4 blocks: a Q4_1 "
              "file's weights exactly), and lm_head in int8 with its input quantised too (int8a8); "
              "decode steps read only the kept rows' codes (float32, CPU)")


def choice_list(what: str, choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    """A type= for comma-separated choices ('none,int8,int4'), each one of `choices`."""
    allowed = f"give comma-separated ones of {', '.join(choices)}"

    def parse(text: str) -> list[str]:
        items = comma_items(text, what, allowed)
        if bad := [item for item in items if item not in choices]:
            raise argparse.ArgumentTypeError(f"{', '.join(bad)} is not a {what}; {allowed}")
        return comma_items(text, what, allowed, once=True)
    return parse


quant_list = choice_list("quantisation format", QUANT)
llamacpp_list = choice_list("llama.cpp weight type ('file': the GGUF file's own)", LLAMACPP_WEIGHTS)


# The flags' defaults are SparsityConfig's, read from the class so that the two never disagree.
CONFIG_DEFAULTS = SparsityConfig()


def add_config_args(p: argparse.ArgumentParser, pattern_default: str | None = CONFIG_DEFAULTS.pattern, *,
                    pattern: bool = True, quant: bool = True) -> None:
    """The SparsityConfig flags; pattern=False and quant=False leave --pattern and --quant to the command
    (compare and bench take several)."""
    # --pattern, --criterion and --correction are checked together by SparsityConfig (the criteria
    # depend on --target); config_from_args builds it first thing in every run().
    d = CONFIG_DEFAULTS
    if pattern:
        p.add_argument("--pattern", default=pattern_default,
                       help="N:M (e.g. 8:16) or an unstructured ratio (50%%)" +
                       ("; 'none' for the dense model" if pattern_default is None else ""))
    p.add_argument("--target", default=d.target, choices=list(TARGETS))
    p.add_argument("--criterion", default=d.criterion,
                   help=f"activation: {', '.join(CRITERIA)}; weight: {', '.join(WEIGHT_CRITERIA)}")
    p.add_argument("--correction", default=d.correction, choices=list(CORRECTIONS))
    p.add_argument("--modules", default=",".join(d.modules),
                   help="comma-separated fnmatch patterns on module path or name (lm_head only if named)")
    p.add_argument("--exclude", default=",".join(d.exclude), help="comma-separated patterns of layers to keep dense")
    p.add_argument("--skip-sensitive", type=non_negative_int, default=d.skip_sensitive, metavar="K",
                   help="keep the K layers with the largest output error (see actprune sensitivity) dense")
    p.add_argument("--calib-data", type=calib_source, default=None,
                   help="calibration text: wikitext2-validation (default), wikitext2-train, or a text file")
    p.add_argument("--seed-compat", action="store_true",
                   help="drop the bias of activation-pruned layers as the seed's module swap does (it is kept "
                        "by default; the seed's Qwen collapse comes from dropping it)")
    p.add_argument("--recovery", default=d.recovery, choices=list(RECOVERY),
                   help="learn values against the dense model on calibration text, folded into weight and bias: "
                        + "; ".join(f"{m.name}: {m.summary}" for m in RECOVERY.values() if m.trains))
    p.add_argument("--recovery-steps", type=non_negative_int, default=d.recovery_steps,
                   help=f"optimiser steps of {BATCH} calibration sequences each (--recovery)")
    p.add_argument("--recovery-lr", type=positive_float, default=d.recovery_lr,
                   help=f"Adam's learning rate for the learned vectors (weights: {WEIGHT_LR_RATIO} of it); "
                        f"default {DEFAULT_LR}")
    p.add_argument("--rotation", default=d.rotation, choices=list(ROTATIONS),
                   help="pca: mask each input in the principal directions of its calibration inputs, interleaved "
                        "across groups (W Q folded; x @ Q, K*K multiply-adds per token, runs at run time and is "
                        "reported); pca_contiguous: the same in rank order (the ablation)")
    if quant:
        p.add_argument("--quant", default=d.quant, choices=list(QUANT), help=QUANT_HELP)
    p.add_argument("--calib-samples", type=positive_int, default=d.calib_samples, help="calibration sequences")
    p.add_argument("--calib-seqlen", type=positive_int, default=d.calib_seqlen, help="tokens per calibration sequence")


def config_from_args(args: argparse.Namespace) -> SparsityConfig | None:
    """The config the flags describe; None for --pattern none (the dense model). SparsityConfig's sentences
    start with the field they are about; here it is spelled as its flag ("--pattern '3:2' is invalid")."""
    if args.pattern is None or str(args.pattern).lower() in ("none", "dense"):
        if getattr(args, "quant", "none") != "none":
            raise ValueError(f"--quant {args.quant} quantises the rows a pruned model keeps, and --pattern none is the "
                             "dense float model; give an N:M --pattern with it")
        return None
    if getattr(args, "quant", "none") != "none" and (str(args.device or "").startswith("cuda")
                                                     or args.dtype not in ("default", "float32", "auto")):
        raise ValueError(f"--quant {args.quant} runs on actprune's float32 CPU kernels; use it with --device cpu and "
                         f"--dtype float32 (given: --device {args.device or 'default'}, --dtype {args.dtype})")
    try:
        return SparsityConfig(pattern=args.pattern, target=args.target, criterion=args.criterion,
                              correction=args.correction, modules=args.modules,
                              exclude=tuple(x for x in args.exclude.split(",") if x.strip()),
                              skip_sensitive=args.skip_sensitive, calib_samples=args.calib_samples,
                              calib_seqlen=args.calib_seqlen, drop_bias=args.seed_compat, recovery=args.recovery,
                              recovery_steps=args.recovery_steps, recovery_lr=args.recovery_lr,
                              rotation=args.rotation, quant=args.quant)
    except ValueError as error:
        field, _, rest = str(error).partition(" ")
        if field in {f.name for f in dataclasses.fields(SparsityConfig)}:
            raise ValueError(f"{flag(field)} {rest}") from None
        raise


def recovery_line(learned: dict) -> str:
    """One line on what a recovery method learned and what it cost (compile and eval print it)."""
    return (f"recovery {learned['method']}: {learned['steps']} steps on {learned['train_tokens']:,} calibration "
            f"tokens ({learned['seconds']:.0f} s{', read from the store' if learned['from_store'] else ''}); "
            f"held-out KL to dense {learned['kl_held_out_before']:.4f} -> {learned['kl_held_out_after']:.4f}")


def rotation_line(cost: dict) -> str:
    """One line on what the rotations cost at run time (compile and eval print it)."""
    return (f"rotation: {cost['rotations']} x @ Q products serve {cost['rotated_layers']} layers, "
            f"{cost['macs_per_token']:,} extra multiply-adds per token = {cost['extra_flops_fraction']:.1%} of the "
            f"pruned GEMMs' (dense) work; {cost['constant_values']:,} constant values")


def check_loaded(model, tokenizer, config: SparsityConfig, calibration: tuple[str | None, str] = (None, "")) -> None:
    """What the flags ask of the model, checked right after the load and before any export or compile: its
    linear layers (--modules, --exclude, --pattern, --skip-sensitive), and its tokenizer and the calibration
    text (--calib-samples x --calib-seqlen) when the config calibrates. calibration: calibration_input's."""
    check_selection(model, config, flag)
    text, source = calibration
    if text is not None:
        check_calibration_text(tokenizer, text, source, config, flag)


def calibration_input(args: argparse.Namespace, config: SparsityConfig | None) -> tuple[str | None, str]:
    """(text, description) when the config needs calibration text (statistics or sensitivity), else (None, '')."""
    if config is None or not (config.needs_calibration() or config.skip_sensitive):
        return None, ""
    return calibration_text(args.calib_data, getattr(args, "data_dir", None))
