"""Train a recovery method: the dense model teaches a sparse copy of itself on calibration text.

The loss is KL(p_dense || p_sparse) over next-token distributions, averaged over tokens. Only the
method's values train (methods.py); everything else of the copy is frozen. Each step accumulates
BATCH sequences one at a time, so the logits of one sequence (vocabulary-sized) are all it holds.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from actprune_compiler.calibration.hooks import selected_linears
from actprune_compiler.recovery.sparse_linear import SparseLinear, swap_in
from actprune_compiler.sparsity.activation import score_dtype
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.constants import LearnedLayer, layer_constants
from actprune_compiler.sparsity.recovery_methods import BATCH, RECOVERY, WEIGHT_LR_RATIO, learning_rate
from actprune_compiler.sparsity.stats import LayerStats

HELD_OUT = 2  # the last windows of the text: never trained on, they measure the KL before and after
SEED = 0


def kl_to_dense(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Mean over tokens of KL(p_teacher || p_student), in float32 at least whatever the model's dtype."""
    dtype = score_dtype(student_logits.dtype)
    t = torch.log_softmax(teacher_logits.to(dtype), -1)
    s = torch.log_softmax(student_logits.to(dtype), -1)
    return (t.exp() * (t - s)).sum(-1).mean()


def sparse_student(model: nn.Module, config: SparsityConfig, stats: dict[str, LayerStats],
                   keep_dense: frozenset[str] = frozenset()) -> tuple[nn.Module, dict[str, SparseLinear]]:
    """A frozen copy of `model` whose selected linears are SparseLinear, at the method's initial values."""
    method = RECOVERY[config.recovery]
    student = copy.deepcopy(model).eval()
    student.requires_grad_(False)
    layers = {k: v for k, v in selected_linears(student, config).items() if k not in keep_dense}

    def make(name: str, linear: nn.Linear) -> SparseLinear:
        bias = config.kept_bias(linear.bias)
        consts = layer_constants(config, linear.weight.detach(), bias, stats.get(name))
        start = consts.bias if consts.bias is not None else bias  # what insert_nm_linear gives the layer
        return SparseLinear(linear, config, consts, start, stats[name].pruning_error_mean(name), method)

    return student, swap_in(student, layers, make)


@torch.no_grad()
def held_out_kl(teacher: nn.Module, student: nn.Module, windows: Tensor, device: torch.device) -> float:
    total = 0.0
    for row in windows:
        ids = row.unsqueeze(0).to(device)
        total += float(kl_to_dense(teacher(input_ids=ids, use_cache=False).logits,
                                   student(input_ids=ids, use_cache=False).logits))
    return total / len(windows)


def _optimiser(modules: dict[str, SparseLinear], weights: bool, lr: float) -> torch.optim.Optimizer:
    vectors = [p for m in modules.values() for p in (m.offset, m.scale, m.out_shift) if p.requires_grad]
    groups = [{"params": vectors, "lr": lr}]
    if weights:
        groups.append({"params": [m.weight for m in modules.values()], "lr": lr * WEIGHT_LR_RATIO})
    return torch.optim.Adam(groups)


def _train(teacher: nn.Module, student: nn.Module, train: Tensor, optimiser: torch.optim.Optimizer,
           config: SparsityConfig, device: torch.device) -> list[float]:
    """recovery_steps Adam steps of BATCH windows each, the rate decaying linearly to 0; the loss per step."""
    steps = config.recovery_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: 1 - i / max(steps, 1))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SEED))
    losses = []
    for step in tqdm(range(steps), desc=f"recovery: {config.recovery}", leave=False):
        loss_sum = 0.0
        for i in range(BATCH):
            row = train[order[(step * BATCH + i) % len(train)]].unsqueeze(0).to(device)
            with torch.no_grad():
                target = teacher(input_ids=row, use_cache=False).logits
            loss = kl_to_dense(target, student(input_ids=row, use_cache=False).logits) / BATCH
            loss.backward()
            loss_sum += float(loss.detach())
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"recovery {config.recovery!r}: the KL loss became {loss_sum} at step {step}; "
                                     f"lower recovery_lr (now {optimiser.param_groups[0]['initial_lr']})")
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        schedule.step()
        losses.append(round(loss_sum, 6))
    return losses


def distill(model: nn.Module, config: SparsityConfig, windows: Tensor, stats: dict[str, LayerStats], *,
            keep_dense: frozenset[str] = frozenset()) -> tuple[dict[str, LearnedLayer], dict[str, Any]]:
    """(learned values by module path, a summary for report.json: cost, KL before and after).

    windows: the calibration text as [count, calib_seqlen] token ids; the last HELD_OUT are never trained on."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    if len(windows) < HELD_OUT + 1:
        raise ValueError(f"calibration text has {len(windows)} windows of calib_seqlen={config.calib_seqlen} tokens, "
                         f"too few to train on and hold {HELD_OUT} out; give more text or lower calib_seqlen")
    teacher = model
    student, modules = sparse_student(model, config, stats, keep_dense)
    train, held = windows[:-HELD_OUT], windows[-HELD_OUT:]
    lr = learning_rate(config)
    optimiser = _optimiser(modules, RECOVERY[config.recovery].weights, lr)
    kl_before = held_out_kl(teacher, student, held, device)
    losses = _train(teacher, student, train, optimiser, config, device)
    kl_after = held_out_kl(teacher, student, held, device) if config.recovery_steps else kl_before
    learned = {name: module.fold() for name, module in modules.items()}
    broken = next((name for name, layer in learned.items() if not layer.is_finite()), None)
    if broken is not None or not math.isfinite(kl_after):  # never stored, never folded into a graph
        raise FloatingPointError(f"recovery {config.recovery!r} diverged: {broken or 'the held-out KL'} is not finite "
                                 f"after {config.recovery_steps} steps; lower recovery_lr (now {lr})")
    original = dict(selected_linears(model, config))
    layers = {name: layer.summary(original[name].weight) for name, layer in learned.items()}
    # a layer without a bias gets one (the learned bias); learned weights replace the layer's own
    extra = sum(original[name].out_features for name in learned if original[name].bias is None or config.drop_bias)
    summary = {"method": config.recovery, "steps": config.recovery_steps, "lr": lr,
               "train_tokens": config.recovery_steps * BATCH * config.calib_seqlen, "train_windows": len(train),
               "held_out_tokens": int(held.numel()), "kl_held_out_before": round(kl_before, 6),
               "kl_held_out_after": round(kl_after, 6), "loss_first": losses[0] if losses else None,
               "loss_last": losses[-1] if losses else None, "losses": losses,
               "trained_values": sum(p.numel() for g in optimiser.param_groups for p in g["params"]),
               "extra_constant_values": extra,
               "seconds": round(time.perf_counter() - start, 2), "layers": layers}
    return learned, summary
