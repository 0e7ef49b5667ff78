"""Greedy generation with a static KV cache and one compiled single-token step (gpt-fast's design, on the CPU).

    decoder = Decoder(model, SparsityConfig("8:16"))   # or Decoder(model) for the dense model
    result = decoder.generate(input_ids, 32)           # the step compiles on the first call, once

The prompt goes through the same step one token at a time, so a generation compiles one graph in all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from actprune_compiler.backends.dynamo import actprune_backend, backend_options
from actprune_compiler.backends.inductor import inductor_with_nm_lowering
from actprune_compiler.decode import cache as kv
from actprune_compiler.decode.step import Backend, CompiledStep
from actprune_compiler.sparsity.config import SparsityConfig

# Inductor's checks of every buffer's size and alignment cost about 2% of a SmolLM2 decode step; the step's
# shapes are static and were checked when it was traced.
_STEP_INDUCTOR_CONFIG = {"size_asserts": False, "alignment_asserts": False}


@dataclass
class Generation:
    """The new tokens and how long they took. first_token_s counts from the call (compiling included on the
    first call); decode_tokens_per_s counts the tokens after the first, as a steady-state rate."""

    tokens: list[int]
    first_token_s: float
    decode_tokens_per_s: float
    compile_s: float = 0.0
    step_times_s: list[float] = field(default_factory=list, repr=False)


def step_backend(model: nn.Module, config: SparsityConfig | None, **options) -> Backend:
    """How the step's graph is compiled: actprune's backend for a config (options as compile_model takes
    them: tokenizer, calib_text, stats, ...; the weights stay graph inputs), Inductor for the dense model."""
    if config is None:
        if options:
            raise ValueError(f"{', '.join(sorted(options))} apply to a sparsity config; the dense model takes none")
        return inductor_with_nm_lowering
    options = backend_options(model, config, **options)
    return lambda gm, example_inputs: actprune_backend(gm, example_inputs, options)


class Decoder:
    """Greedy generation for one model: `config` None is the dense model; options go to step_backend.
    max_length: positions of the static cache, prompt and new tokens together (a longer generation needs
    another decoder, whose step is compiled for its length). cpp_wrapper: Inductor writes the step's calls
    in C++ rather than Python; on SmolLM2-135M at 8:16 int4g32 the step then runs about 1.2x as fast (its
    Python calls were a third of a token's time), and its cold compile takes about four times as long."""

    def __init__(self, model: nn.Module, config: SparsityConfig | None = None, *, max_length: int = 512,
                 backend: Backend | None = None, cpp_wrapper: bool = False, **options) -> None:
        limit = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length {max_length} exceeds the model's {limit} positions; use at most {limit}")
        if backend is None:
            backend = step_backend(model, config, **options)
        self.model, self.config, self.backend, self.max_length = model, config, backend, max_length
        self.inductor_config = {**_STEP_INDUCTOR_CONFIG, "cpp_wrapper": cpp_wrapper}
        self.cache = kv.static_cache(model, max_length)
        self.step: CompiledStep | None = None

    def _ready_step(self) -> float:
        """Trace and compile the step unless the compiled one still reads this model; the seconds it took."""
        if self.step is not None and self.step.matches(self.model):
            return 0.0
        start = time.perf_counter()
        with (torch._inductor.config.patch(self.inductor_config),
              torch._dynamo.config.patch(specialize_float=True)):
            self.step = CompiledStep(self.model, self.cache, self.backend)
        return time.perf_counter() - start

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *,
                 eos_token_id: int | None = None) -> Generation:
        """Greedy continuation of one prompt ([1, P] token ids): at most max_new_tokens new tokens, fewer when
        eos_token_id is given and generated."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
            raise ValueError(f"the decode loop takes one non-empty prompt, input_ids of shape [1, P]; "
                             f"got {list(input_ids.shape)}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        length = input_ids.shape[1] + max_new_tokens
        if length > self.max_length:
            raise ValueError(f"the prompt ({input_ids.shape[1]} tokens) and {max_new_tokens} new tokens need "
                             f"{length} positions, and this decoder holds {self.max_length}; make it with "
                             f"max_length >= {length}")
        start = time.perf_counter()
        compile_s = self._ready_step()
        step = self.step
        kv.reset(self.cache)
        step.position.zero_()
        for token in input_ids[0].tolist():  # the prompt, one step per token
            step.token.fill_(token)
            step()
        tokens = [int(step.token)]
        first_token_s = time.perf_counter() - start
        times = []
        while len(tokens) < max_new_tokens and tokens[-1] != eos_token_id:
            begin = time.perf_counter()
            step()
            tokens.append(int(step.token))
            times.append(time.perf_counter() - begin)
        rate = len(times) / sum(times) if times else float("nan")
        return Generation(tokens, first_token_s, rate, compile_s, times)
