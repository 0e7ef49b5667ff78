"""Timed greedy generation with the KV cache: prefill time and decode tokens per second."""

from __future__ import annotations

import time
from typing import Any

import torch


class StepClock:
    """A logits processor that only records when each generated token's logits were ready."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def timed_generate(model, ids: torch.Tensor, new_tokens: int) -> dict[str, Any]:
    from transformers import LogitsProcessorList

    clock = StepClock()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             logits_processor=LogitsProcessorList([clock]), pad_token_id=0)
    decode_steps = len(clock.times) - 1
    decode_s = clock.times[-1] - clock.times[0]
    return {"tokens": out[0, ids.shape[1]:].tolist(), "prefill_ms": (clock.times[0] - start) * 1e3,
            "decode_tokens_per_s": decode_steps / decode_s if decode_s > 0 else float("nan")}
