"""Timed greedy generation with the KV cache: prefill time and decode tokens per second."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch

from actprune_compiler.models.devices import synchronize


@contextlib.contextmanager
def several_compiled_models() -> Iterator[None]:
    """Room for several compiled copies of one model class in a process (bench, --compare-dense).

    Dynamo keeps at most `recompile_limit` (8) graphs per code object, and every copy of a model
    shares its class's forward: past the limit a copy would silently run eagerly and be timed as
    if compiled. Here the limit is raised, and hitting it is an error instead.
    """
    with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        yield


class StepClock:
    """A logits processor that only records when each generated token's logits were ready."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        synchronize()  # on a GPU the logits are ready only once the queued kernels ran
        self.times.append(time.perf_counter())
        return scores


def timed_generate(model, ids: torch.Tensor, new_tokens: int) -> dict[str, Any]:
    from transformers import LogitsProcessorList  # here, not at the top: 0.3 s of import beyond torch's

    clock = StepClock()
    synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             logits_processor=LogitsProcessorList([clock]), pad_token_id=0)
    decode_steps = len(clock.times) - 1
    decode_s = clock.times[-1] - clock.times[0]
    return {"tokens": out[0, ids.shape[1]:].tolist(), "prefill_ms": (clock.times[0] - start) * 1e3,
            "decode_tokens_per_s": decode_steps / decode_s if decode_s > 0 else float("nan")}
