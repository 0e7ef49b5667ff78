"""W^T for the decode kernels, made once per weight and reused while the weight is unchanged.

The decode kernels read the rows of W^T that a token keeps, so they need W^T row-major; making
it on every call would copy the whole weight, costing more than the GEMV saves. The cache is
keyed by the weight tensor itself (weakly: an entry dies with its weight, so a new tensor at a
recycled address never finds a stale W^T) and checked against the weight's storage pointer and
version counter, so an in-place update of the weight (load_state_dict, `weight.copy_()` under
no_grad) is seen. An update through `weight.data` bypasses the version counter: call clear()
after one. This makes the decode speed-up independent of Inductor's freezing: a plain
torch.compile(model.forward, backend="actprune") reaches it too. The price is one W^T copy per
rewritten weight while the weight lives (what freezing's folded constant cost as well).
"""

from __future__ import annotations

import threading

from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()
_LOCK = threading.Lock()  # two threads decoding at once must not both copy a large weight
STATS = {"hits": 0, "misses": 0}


def version_of(tensor: Tensor) -> int:
    """The tensor's in-place version counter; -1 for an inference tensor, which has none."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


def _fingerprint(weight: Tensor) -> tuple:
    return weight.untyped_storage().data_ptr(), weight.storage_offset(), version_of(weight), tuple(weight.shape), \
        tuple(weight.stride()), weight.dtype, weight.device


def transposed(weight: Tensor) -> Tensor:
    """weight [N, K] -> a row-major [K, N] copy, cached for as long as the weight lives unchanged."""
    fingerprint = _fingerprint(weight)
    with _LOCK:
        entry = _CACHE.get(weight)
        if entry is not None and entry[0] == fingerprint:
            STATS["hits"] += 1
            return entry[1]
        STATS["misses"] += 1
        weight_t = weight.detach().t().contiguous()
        _CACHE[weight] = (fingerprint, weight_t)
        return weight_t


def clear() -> None:
    """Forget every cached W^T (needed only after a weight changed through `.data`)."""
    with _LOCK:
        _CACHE.clear()
        STATS.update(hits=0, misses=0)
