"""torch.export of a causal LM: input_ids (and optionally an attention mask) -> logits."""

from __future__ import annotations

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from actprune_compiler.models.devices import model_device

# The wrapper's attribute holding the model; passes strip it from module paths.
WRAPPER_PREFIX = "lm."
MAX_BATCH = 4096  # the largest batch an exported program takes (its dynamic batch dimension's bound)


class LogitsOnly(nn.Module):
    """Call the model without a KV cache and return the logits tensor alone."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def export_causal_lm(model: nn.Module, *, with_attention_mask: bool = False, max_seq_len: int | None = None,
                     example_batch: int = 2, example_seq: int = 16) -> ExportedProgram:
    """Export with dynamic batch and sequence dimensions, so one program serves any shape.

    The program takes `input_ids` [batch, seq] (and `attention_mask` [batch, seq] when asked for).
    """
    config = getattr(model, "config", None)
    max_len = max_seq_len or getattr(config, "max_position_embeddings", None) or 4096
    vocab = getattr(config, "vocab_size", 2)
    ids = torch.randint(0, vocab, (example_batch, example_seq), device=model_device(model))
    batch, seq = Dim("batch", min=1, max=MAX_BATCH), Dim("seq", min=1, max=max_len)
    kwargs, shapes = {}, {"input_ids": {0: batch, 1: seq}}
    if with_attention_mask:
        kwargs["attention_mask"] = torch.ones_like(ids)
        shapes["attention_mask"] = {0: batch, 1: seq}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.export.export(LogitsOnly(model), (ids,), kwargs, dynamic_shapes=shapes, strict=False)
    except Exception as error:
        name = type(model).__name__
        raise RuntimeError(f"torch.export of {name} failed ({type(error).__name__}): "
                           f"{str(error).splitlines()[0] if str(error) else error!r}") from error
    finally:
        model.train(was_training)
