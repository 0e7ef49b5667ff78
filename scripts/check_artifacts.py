"""Acceptance check of `actprune compile`: for each pattern (and the weight target), compile through the CLI,
load DIR/program.pt2 with torch.export.load, and compare its logits with an independent masked reference
(numpy masks applied by nn.Linear hooks, or numpy-pruned weights). Prints one row per artifact.

    python scripts/check_artifacts.py --model smollm2-135m --dtype float64 --out out/check
    python scripts/check_artifacts.py --model tiny-llama --out out/check     # a tiny random Llama, saved first
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import DEFAULT, numpy_keep_mask, reference_logits, selected  # noqa: E402

import actprune_compiler  # noqa: E402,F401  (registers the custom ops torch.export.load needs)
from actprune_compiler import load_model  # noqa: E402

CASES = [("2:4", "activation"), ("8:16", "activation"), ("16:32", "activation"), ("2:4", "weight")]


def save_tiny_llama(folder: Path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def weight_pruned_logits(model, ids, n: int, m: int) -> torch.Tensor:
    """Prune every selected weight by numpy magnitude N:M along its input dim, run, then restore it."""
    saved = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and selected(name, DEFAULT):
                w = module.weight.detach().to(torch.float64).numpy()
                saved[name] = module.weight.detach().clone()
                keep = numpy_keep_mask(np.abs(w), n, m)
                module.weight.copy_(torch.from_numpy(np.where(keep, w, 0.0)))
        try:
            return model(input_ids=ids, use_cache=False).logits
        finally:
            for name, module in model.named_modules():
                if name in saved:
                    module.weight.copy_(saved[name])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a model spec, or 'tiny-llama'")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--out", default="out/check")
    args = parser.parse_args()
    out = Path(args.out)
    spec = save_tiny_llama(out / "tiny-llama-hf") if args.model == "tiny-llama" else args.model
    model, _ = load_model(spec, args.dtype)
    ids = torch.randint(0, model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    rows = []
    for pattern, target in CASES:
        folder = out / f"{Path(spec).name}-{pattern.replace(':', '-')}-{target}"
        start = time.perf_counter()
        subprocess.run(["actprune", "compile", "--model", spec, "--pattern", pattern, "--target", target,
                        "--dtype", args.dtype, "--out", str(folder), "--force"], check=True, stdout=subprocess.DEVNULL)
        cli_s = time.perf_counter() - start
        report = json.loads((folder / "report.json").read_text())
        n, m = (int(v) for v in pattern.split(":"))
        with torch.no_grad():
            got = torch.export.load(folder / "program.pt2").module()(ids)
            expected = (reference_logits(model, ids, n, m) if target == "activation"
                        else weight_pruned_logits(model, ids, n, m))
        files = sorted(p.name for p in folder.iterdir())
        rows.append({"pattern": pattern, "target": target, "replaced": report["totals"]["replaced"],
                     "max_abs_err": (got - expected).abs().max().item(), "files": files,
                     "export_s": report["timings"].get("export_s"),
                     "check_s": report["check"]["seconds"], "check_passed": report["check"]["passed"],
                     "compiled_vs_reference": report["check"].get("max_relative_diff"),
                     "cli_total_s": cli_s})
        print(json.dumps(rows[-1]), flush=True)
    worst = max(r["max_abs_err"] for r in rows)
    print(f"{spec} ({args.dtype}): worst max |artifact - reference| = {worst:.3g}")
    return 0 if worst < (1e-4 if args.dtype == "float64" else 1e-3) else 1


if __name__ == "__main__":
    raise SystemExit(main())
