"""actprune: N:M activation sparsity for LLMs as a PyTorch compiler pass.

    model, tokenizer = load_model("smollm2-135m")
    pruned = sparsify(model, SparsityConfig(pattern="8:16"))
    logits = compile_program(pruned.program)(input_ids)

or, in ordinary PyTorch code (KV-cache generation included):

    model = compile_model(model, SparsityConfig(pattern="8:16"))   # torch.compile backend "actprune"

or greedy decoding at full speed (a static KV cache, one compiled single-token step):

    tokens = generate(model, input_ids, 32, SparsityConfig(pattern="8:16")).tokens
"""

# First, before the seconds of imports below: a command's process (actprune, actprune-lm-eval) handles
# Ctrl-C and SIGTERM from its first instant; a program importing the library keeps its own handlers.
from actprune_compiler.reporting.signals import handle_signals_if_command

handle_signals_if_command()

from actprune_compiler import ops  # noqa: E402,F401  (registers actprune::nm_linear)
from actprune_compiler.api import (  # noqa: E402
    Decoder,
    Generation,
    SparsifiedProgram,
    compile_model,
    compile_program,
    count_ops,
    generate,
    load_model,
    sparsify,
)
from actprune_compiler.backends.dynamo import register  # noqa: E402
from actprune_compiler.export import export_causal_lm  # noqa: E402
from actprune_compiler.reporting.runinfo import VERSION as __version__  # noqa: E402
from actprune_compiler.sparsity.config import SparsityConfig, parse_pattern  # noqa: E402

register()  # torch.compile(..., backend="actprune")

__all__ = ["Decoder", "Generation", "SparsityConfig", "SparsifiedProgram", "compile_model", "compile_program",
           "count_ops", "export_causal_lm", "generate", "load_model", "parse_pattern", "sparsify", "__version__"]
