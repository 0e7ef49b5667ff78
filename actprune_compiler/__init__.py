"""actprune: N:M activation sparsity for LLMs as a PyTorch compiler pass.

    model, tokenizer = load_model("smollm2-135m")
    pruned = sparsify(model, SparsityConfig(pattern="8:16"))
    logits = compile_program(pruned.program)(input_ids)

or, in ordinary PyTorch code (KV-cache generation included):

    model = compile_model(model, SparsityConfig(pattern="8:16"))   # torch.compile backend "actprune"
"""

from actprune_compiler import ops  # noqa: F401  (registers actprune::nm_linear)
from actprune_compiler.api import (
    SparsifiedProgram,
    compile_model,
    compile_program,
    count_ops,
    load_model,
    sparsify,
)
from actprune_compiler.backends.dynamo import register
from actprune_compiler.export import export_causal_lm
from actprune_compiler.reporting.runinfo import VERSION as __version__
from actprune_compiler.sparsity.config import SparsityConfig, parse_pattern

register()  # torch.compile(..., backend="actprune")

__all__ = ["SparsityConfig", "SparsifiedProgram", "compile_model", "compile_program", "count_ops", "export_causal_lm",
           "load_model", "parse_pattern", "sparsify", "__version__"]
