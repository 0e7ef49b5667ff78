"""An eager reference written independently of the package: numpy masks applied by nn.Linear hooks."""

from __future__ import annotations

import contextlib
import fnmatch

import numpy as np
import torch

DEFAULT = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def numpy_keep_mask(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the n largest of each m consecutive scores; ties -> lower index; NaN counts as +inf."""
    s = np.where(np.isnan(scores), np.inf, scores).reshape(-1, m)
    order = np.argsort(-s, axis=1, kind="stable")
    keep = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :n], True, axis=1)
    return keep.reshape(scores.shape)


def masked_input(x: torch.Tensor, n: int, m: int, score_scale: np.ndarray | None = None) -> torch.Tensor:
    a = x.detach().to(torch.float64).numpy()
    scores = np.abs(a) if score_scale is None else np.abs(a) * score_scale
    keep = numpy_keep_mask(scores, n, m)
    return torch.from_numpy(np.where(keep, a, 0.0)).to(x.dtype)


def selected(name: str, modules=DEFAULT) -> bool:
    return any(fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], p) or fnmatch.fnmatchcase(name, p) for p in modules)


@contextlib.contextmanager
def hooked(model: torch.nn.Module, n: float, m: int | None, modules=DEFAULT):
    """Mask the input of every selected nn.Linear; m=None: unstructured, keep the fraction n of a row."""
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and selected(name, modules):
            k = module.in_features
            keep, group = (n, m) if m else (round(k * n), k)
            handles.append(module.register_forward_pre_hook(
                lambda mod, args, keep=keep, group=group: (masked_input(args[0], keep, group),)))
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


def reference_logits(model, ids, n, m, modules=DEFAULT):
    with torch.no_grad(), hooked(model, n, m, modules):
        return model(input_ids=ids, use_cache=False).logits
