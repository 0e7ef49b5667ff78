"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse

from actprune_compiler.models import ALIASES, DEFAULT_MODEL, DTYPES
from actprune_compiler.sparsity.config import DEFAULT_MODULES, SparsityConfig
from actprune_compiler.sparsity.corrections import CORRECTIONS
from actprune_compiler.sparsity.criteria import CRITERIA, WEIGHT_CRITERIA


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"alias ({', '.join(ALIASES)}), local HF folder, .gguf file or hub id")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))


def add_config_args(p: argparse.ArgumentParser, pattern_default: str | None = "8:16") -> None:
    p.add_argument("--pattern", default=pattern_default,
                   help="N:M (e.g. 8:16) or an unstructured ratio (50%%)" +
                   ("; 'none' for the dense model" if pattern_default is None else ""))
    p.add_argument("--target", default="activation", choices=["activation", "weight"])
    p.add_argument("--criterion", default="magnitude",
                   help=f"activation: {', '.join(CRITERIA)}; weight: {', '.join(WEIGHT_CRITERIA)}")
    p.add_argument("--correction", default="none", choices=list(CORRECTIONS))
    p.add_argument("--modules", default=",".join(DEFAULT_MODULES),
                   help="comma-separated fnmatch patterns on module path or name (lm_head only if named)")
    p.add_argument("--exclude", default="", help="comma-separated patterns of layers to keep dense")
    p.add_argument("--skip-sensitive", type=int, default=0, metavar="K",
                   help="keep the K layers with the largest output error (see actprune sensitivity) dense")
    p.add_argument("--calib-data", default=None,
                   help="calibration text: wikitext2-validation (default), wikitext2-train, or a text file")
    p.add_argument("--calib-samples", type=int, default=16, help="calibration sequences")
    p.add_argument("--calib-seqlen", type=int, default=512, help="tokens per calibration sequence")


def config_from_args(args: argparse.Namespace) -> SparsityConfig | None:
    """The config the flags describe; None for --pattern none (the dense model)."""
    if args.pattern is None or str(args.pattern).lower() in ("none", "dense"):
        return None
    return SparsityConfig(pattern=args.pattern, target=args.target, criterion=args.criterion,
                          correction=args.correction, modules=args.modules,
                          exclude=tuple(x for x in args.exclude.split(",") if x.strip()),
                          skip_sensitive=args.skip_sensitive, calib_samples=args.calib_samples,
                          calib_seqlen=args.calib_seqlen)


def calibration_input(args: argparse.Namespace, config: SparsityConfig | None) -> tuple[str | None, str]:
    """(text, description) when the config needs calibration text (statistics or sensitivity), else (None, '')."""
    if config is None or not (config.needs_calibration() or config.skip_sensitive):
        return None, ""
    from actprune_compiler.eval.data import calibration_text

    return calibration_text(args.calib_data, getattr(args, "data_dir", None))
