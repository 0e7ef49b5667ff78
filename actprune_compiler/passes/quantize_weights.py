"""quant: every linear layer's weight replaced by its dequantised values, the format named on its node.

Runs after the activation pass, so the weight quantised is the one the layer multiplies by: a recovery
method's learned weight, or W Q under a rotation. A pruned layer's nm_linear gets `quant`; a layer left
dense (lm_head, excluded or sensitive layers) becomes actprune.quant_linear, which reads all of its rows.
A weight shared with an embedding (tied lm_head) is substituted for the linear layer alone: the
embedding keeps its float rows.

Layers left dense take int8 weights under any format (int8a8, sparsity/quant.py): they read every row anyway,
and lm_head's error goes straight into the logits (on smollm2-135m at 8:16 with int4 projections, an int4
lm_head raises the perplexity by 13% over an int8 one; llama.cpp's Q4 files keep their output matrix at 6 or 8
bits for the same reason).
"""

from __future__ import annotations

import torch

from actprune_compiler.passes.graph_host import GraphHost
from actprune_compiler.passes.select_linears import LinearSite, format_node
from actprune_compiler.sparsity.quant import check_quantizable, dequantized, layer_format


def quantize_weights(host: GraphHost, sites: list[LinearSite], quant: str) -> dict[str, str]:
    """Quantise every site's weight (dense ones in int8a8, sparsity.quant.layer_format); return the format per
    module path."""
    done = {}
    for site in sites:
        weight = host.value(site.weight)
        check_quantizable(weight, quant)
        fmt = layer_format(quant, site.selected, weight.shape[1])
        weight_node = host.substitute(site.weight, f"{site.path}.quantized_weight", dequantized(weight, fmt))
        site.node.replace_input_with(site.weight, weight_node)
        if site.selected:
            site.node.kwargs = {**site.node.kwargs, "quant": fmt}
        else:
            with host.graph.inserting_before(site.node):
                new = host.graph.call_function(torch.ops.actprune.quant_linear.default,
                                               (site.x, weight_node, site.bias, fmt))
            new.meta.update(site.node.meta)
            site.node.replace_all_uses_with(new)
            host.graph.erase_node(site.node)
            site.node = new
        site.after = format_node(site.node)
        done[site.path] = fmt
    return done
