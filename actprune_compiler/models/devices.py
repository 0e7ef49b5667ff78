"""Where a model runs and in which dtype: one place that turns the user's words into torch objects.

Every tensor actprune makes (example inputs for export and the check, calibration statistics,
folded constants, token windows) is made on the device of the model it serves, found with
model_device(); nothing assumes the CPU.
"""

from __future__ import annotations

import torch
from torch import nn

DEVICE_CHOICES = "cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """None or 'auto': CUDA when available, else the CPU. Refuses devices this machine lacks."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {spec!r} is not a device name; use {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"device {spec!r} is not supported; use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} was asked for, but this machine has no CUDA GPU; use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {spec!r} does not exist; this machine has cuda:0..cuda:{count - 1}")
    return device


def default_dtype(device: torch.device) -> str:
    """bfloat16 on CUDA (what the seed's 7B models run in), float32 on the CPU (no fast bf16 GEMM
    on most CPUs, and the float32 tables are the project's reference)."""
    return "bfloat16" if device.type == "cuda" else "float32"


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a module with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def placement(model: nn.Module) -> dict[str, str]:
    """What results record about where a model ran: {"device": "cuda:0", "dtype": "bfloat16"}."""
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    return {"device": str(model_device(model)), "dtype": str(dtype).removeprefix("torch.")}


def synchronize() -> None:
    """Wait for queued GPU work, so a wall-clock timer measures it (a no-op without CUDA in use)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
