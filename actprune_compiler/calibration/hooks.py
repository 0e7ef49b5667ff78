"""The one loop every calibration step shares: run the eager model, observe selected linears' inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from actprune_compiler.sparsity.config import SparsityConfig

# (module path, the layer, its input) -> None
Observer = Callable[[str, nn.Linear, torch.Tensor], None]


def token_windows(tokenizer, text: str, seqlen: int) -> torch.Tensor:
    """Every whole non-overlapping window of `seqlen` tokens of `text`, in order: [count, seqlen]."""
    if tokenizer is None:
        raise ValueError("calibration needs a tokenizer, and this model has none")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids)
    count = ids.numel() // seqlen
    return ids[: count * seqlen].view(count, seqlen)


def check_calibration_text(tokenizer, text: str, source: str, config: SparsityConfig,
                           name: Callable[[str], str] = str) -> None:
    """Refuse, before anything is exported, calibration that cannot run: no tokenizer, or text shorter than
    calib_samples windows of calib_seqlen tokens. name: how a message spells a config field."""
    if tokenizer is None:
        raise ValueError(f"config {config.label!r} calibrates on text, and this model has no tokenizer; give a model "
                         "folder with one, or a method that needs no calibration")
    windows = len(token_windows(tokenizer, text, config.calib_seqlen))
    if windows < config.calib_samples:
        raise ValueError(f"{name('calib_samples')} {config.calib_samples} x {name('calib_seqlen')} "
                         f"{config.calib_seqlen} needs {config.calib_samples} windows of {config.calib_seqlen} "
                         f"tokens, and the calibration text ({source.split(' (')[0]}) has {windows}; lower them or "
                         "give more text")


def token_batches(tokenizer, text: str, samples: int, seqlen: int) -> torch.Tensor:
    """The first `samples` non-overlapping windows of `seqlen` tokens of `text`: [samples, seqlen]."""
    windows = token_windows(tokenizer, text, seqlen)
    if len(windows) < samples:
        raise ValueError(f"calibration text has {len(windows)} windows of {seqlen} tokens, fewer than "
                         f"calib_samples x calib_seqlen = {samples} x {seqlen}; lower them or give more text")
    return windows[:samples]


def selected_linears(model: nn.Module, config: SparsityConfig) -> dict[str, nn.Linear]:
    """The nn.Linear modules the config selects (its modules, minus its exclusions), by path."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and config.selects(name)}


@contextlib.contextmanager
def input_hooks(layers: dict[str, nn.Linear], observe: Observer) -> Iterator[None]:
    handles = [layer.register_forward_pre_hook(lambda mod, args, name=name: observe(name, mod, args[0]))
               for name, layer in layers.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_eager(model: nn.Module, batches: torch.Tensor, layers: dict[str, nn.Linear], observe: Observer,
              desc: str) -> None:
    """One eager forward per calibration sequence, with `observe` called on each layer's input."""
    device = next(model.parameters()).device
    with torch.no_grad(), input_hooks(layers, observe):
        for row in tqdm(batches, desc=desc, leave=False):
            model(input_ids=row.unsqueeze(0).to(device), use_cache=False)
