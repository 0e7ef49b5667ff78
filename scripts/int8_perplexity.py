"""How much int8 weights cost in perplexity, per channel against per block of 32 inputs, dense or N:M.

The eager model (no compiler), its linear layers' weights replaced by their dequantised values, and at
an N:M pattern each projection's input masked by actprune's own rule (sparsity.activation). Variants:
- float32;
- int8: actprune's format int8 (one scale per output channel) on every linear layer, lm_head included;
- int8, lm_head float32: the projections' share of that cost;
- int8 per block of 32: a scale per 32 consecutive inputs of each output (GGUF's Q8_0 blocks, float16
  scales), a finer int8 than actprune's, on the projections; lm_head per channel.
WikiText-2 test, non-overlapping windows of 2048 tokens. Run it alone, e.g.
    flock /tmp/actprune-heavy.lock python scripts/int8_perplexity.py --model smollm2-135m --windows 16
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
from torch import Tensor

from actprune_compiler.eval.data import load_wikitext2
from actprune_compiler.eval.perplexity import perplexity, resolve_bos
from actprune_compiler.models.load import load_model
from actprune_compiler.sparsity.activation import sparsify_activation
from actprune_compiler.sparsity.config import DEFAULT_MODULES
from actprune_compiler.sparsity.masks import prune_sorted
from actprune_compiler.sparsity.quant import dequantized


def int8_per_block(w: Tensor, block: int = 32) -> Tensor:
    """Symmetric int8 with a float16 scale per `block` consecutive inputs of each output (Q8_0's rule)."""
    groups = w.reshape(w.shape[0], -1, block)
    scale = (groups.abs().amax(-1, keepdim=True) / 127).half().float()
    codes = torch.where(scale > 0, torch.round(groups / scale).clamp(-127, 127), torch.zeros_like(groups))
    return (codes * scale).reshape(w.shape)


VARIANTS: dict[str, Callable[[str, Tensor], Tensor]] = {
    "float32": lambda name, w: w,
    "int8": lambda name, w: dequantized(w, "int8"),
    "int8, lm_head float32": lambda name, w: w if name == "lm_head" else dequantized(w, "int8"),
    "int8 per block of 32": lambda name, w: dequantized(w, "int8") if name == "lm_head" else int8_per_block(w),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--pattern", default="8:16", help="N:M, or 'none' for the dense model")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="float32 always runs first: the others are compared with it")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    model.eval()
    text = load_wikitext2().text
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    floats = {name: m.weight.detach().clone() for name, m in linears.items()}
    if args.pattern != "none":
        n, m = map(int, args.pattern.split(":"))
        for name, module in linears.items():
            if name.rsplit(".", 1)[-1] in DEFAULT_MODULES:
                module.register_forward_pre_hook(lambda mod, inputs, n=n, m=m: (
                    sparsify_activation(inputs[0], n, m, "magnitude", "none", None, None, prune_sorted),))
    results = {}
    for variant in ["float32", *(v for v in args.variants if v != "float32")]:
        weight_of = VARIANTS[variant]
        for name, module in linears.items():  # a Parameter of its own: a tied lm_head stops sharing the embedding
            module.weight = torch.nn.Parameter(weight_of(name, floats[name]), requires_grad=False)
        with torch.no_grad():
            ppl = perplexity(lambda batch: model(batch).logits, tokenizer, text, max_windows=args.windows,
                             bos=resolve_bos("auto", tokenizer), progress=False)["ppl"]
        results[variant] = ppl
        print(f"| {args.model} | {args.pattern} | {variant} | {ppl:.2f} | {ppl / results['float32'] - 1:+.1%} |",
              flush=True)
    print(json.dumps({"model": args.model, "pattern": args.pattern, "windows": args.windows, "ppl": results}))


if __name__ == "__main__":
    main()
