"""One decode step, compiled once and then called directly, without Dynamo.

The step feeds the token in `token` at position `position` through the model and its static cache, and writes
the greedy next token back into `token` and the next position into `position`, all inside one graph. Every
tensor the graph reads (the two buffers, the cache, the weights) is the same object at every call, so after
Dynamo has traced the step once, its compiled graph is called with the inputs it was traced with: no guards
are evaluated, nothing is recompiled, and the Python around a token is one function call.

That is sound only while those objects are the model's own: `matches` checks it, and the loop traces again
when a parameter or buffer was replaced (load_state_dict copies in place and keeps them).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence

import torch
from torch import fx, nn

from actprune_compiler.decode.attention import decode_attention_while_tracing

Backend = Callable[[fx.GraphModule, Sequence[torch.Tensor]], Callable]


def greedy_step(model: nn.Module, cache, token: torch.Tensor, position: torch.Tensor) -> None:
    """Feed `token` at `position`; write the greedy next token into `token` and the next position into
    `position`. The model is an argument so that Dynamo spells its modules as the model does
    (L['model'].model.layers[0] -> model.layers.0), which is how the passes find their per-layer values."""
    logits = model(input_ids=token, past_key_values=cache, cache_position=position, use_cache=True).logits
    token.copy_(logits[:, -1].argmax(-1, keepdim=True))
    position.add_(1)


class CompiledStep:
    def __init__(self, model: nn.Module, cache, backend: Backend) -> None:
        device = next(model.parameters()).device
        self.model, self.cache = model, cache
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self._state = self._model_state()
        graphs: list[tuple[Callable, list]] = []

        def capture(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> Callable:
            compiled = backend(gm, example_inputs)
            graphs.append((compiled, list(example_inputs)))
            return compiled

        # A code object of its own: Dynamo counts compilations per code object (recompile_limit, 8), and a
        # process that makes many decoders (a bench, a test suite) would otherwise run the ninth one eagerly.
        own = types.FunctionType(greedy_step.__code__.replace(), greedy_step.__globals__, greedy_step.__name__)
        traced = torch.compile(own, backend=capture, fullgraph=True, dynamic=False)
        with torch.no_grad(), decode_attention_while_tracing(model):
            # traces and compiles; also runs the step once, which the caller undoes by resetting
            traced(model, cache, self.token, self.position)
        if len(graphs) != 1:
            raise RuntimeError(f"the decode step compiled into {len(graphs)} graphs; one was expected")
        self._graph, self._inputs = graphs[0]

    def _model_state(self) -> list[int]:
        return [id(t) for t in (*self.model.parameters(), *self.model.buffers())]

    def matches(self, model: nn.Module) -> bool:
        """Whether the graph still reads `model`'s own parameters and buffers."""
        return model is self.model and self._model_state() == self._state

    def __call__(self) -> None:
        self._graph(*self._inputs)
