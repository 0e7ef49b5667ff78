"""WikiText-2 perplexity the seed's way: tokenize once, non-overlapping windows, mean token NLL."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from actprune_compiler.eval.distributed import all_reduce_sums, is_main, shard, world

BOS_MODES = ("auto", "window", "start", "none")


def resolve_bos(mode: str, tokenizer) -> str:
    """auto: what the tokenizer does by default on the whole text, as the seed (GPTQ-style) code has it:
    one BOS at the very start when it adds one (Gemma, Llama-2), none otherwise (SmolLM2, Qwen).
    'window' (a BOS per window, which Gemma scores better with) is an option, not the default."""
    if mode not in BOS_MODES:
        raise ValueError(f"--bos {mode!r} is unknown; allowed: {', '.join(BOS_MODES)}")
    if mode != "auto":
        if mode != "none" and tokenizer.bos_token_id is None:
            raise ValueError(f"--bos {mode} needs a BOS token, and this tokenizer has none; use --bos none")
        return mode
    probe = tokenizer("a").input_ids
    adds_bos = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    return "start" if adds_bos else "none"


def make_windows(ids: torch.Tensor, seqlen: int, bos: str, bos_id: int | None,
                 max_windows: int | None) -> torch.Tensor:
    """[windows, seqlen] token ids; with bos == 'window' each one is BOS + seqlen-1 text tokens."""
    if bos == "start":
        ids = torch.cat([torch.tensor([bos_id]), ids])
    step = seqlen - 1 if bos == "window" else seqlen
    count = ids.numel() // step
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    windows = ids[: count * step].view(count, step)
    if bos == "window":
        windows = torch.cat([torch.full((count, 1), bos_id), windows], dim=1)
    return windows


def window_nll(logits: torch.Tensor, window: torch.Tensor) -> tuple[float, int]:
    """Sum of next-token NLL over the window's predicted positions, and how many there are."""
    # Half-precision logits are scored in float32; float64 ones stay float64 (exactness checks use them).
    scored = logits[:-1].to(torch.promote_types(logits.dtype, torch.float32))
    predicted = F.cross_entropy(scored, window[1:].to(logits.device), reduction="sum")
    return float(predicted), window.numel() - 1


def perplexity(runner: Callable[[torch.Tensor], torch.Tensor], tokenizer, text: str, *, seqlen: int = 2048,
               max_windows: int | None = None, batch_size: int = 1, bos: str = "none",
               progress: bool = True) -> dict[str, Any]:
    """Mean next-token NLL over the text's windows, exponentiated.

    Under torchrun (a process group from eval.distributed.process_group) each rank scores its share of
    the windows and the NLL sums and token counts are summed over ranks, so every rank returns the
    single-process result (up to float64 summation order)."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids)
    windows = make_windows(ids, seqlen, bos, tokenizer.bos_token_id, max_windows)
    mine = windows[shard(len(windows))].contiguous()
    local_nll, local_tokens = 0.0, 0
    start = time.perf_counter()
    share = f"{len(mine)} of {len(windows)}" if world() > 1 else f"{len(windows)}"
    with torch.no_grad():
        # An empty share scores nothing (a zero-row batch is not a shape the compiled program has) but
        # still joins the sum below.
        batches = mine.split(batch_size) if len(mine) else ()
        for batch in tqdm(batches, desc=f"wikitext2 ppl ({share} x {seqlen})", disable=not progress or not is_main()):
            logits = runner(batch)
            for row_logits, row in zip(logits, batch, strict=True):
                nll, count = window_nll(row_logits, row)
                local_nll, local_tokens = local_nll + nll, local_tokens + count
    total_nll, total_tokens = all_reduce_sums(local_nll, local_tokens)  # every rank, even with no windows
    total_tokens = int(total_tokens)
    mean_nll = total_nll / total_tokens
    return {"ppl": math.exp(mean_nll), "mean_nll": mean_nll, "windows": len(windows), "seqlen": seqlen,
            "predicted_tokens": total_tokens, "text_tokens": ids.numel(), "bos": bos,
            "seconds": round(time.perf_counter() - start, 3)}
