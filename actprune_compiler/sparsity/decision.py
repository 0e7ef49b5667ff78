"""What the compiler decided for one linear layer, as a typed record (report.json stores its fields)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Action = Literal["sparse", "dense"]
DenseReason = Literal["not matched by modules", "excluded", "sensitive"]


@dataclass(frozen=True)
class LayerDecision:
    action: Action
    target: str = ""  # activation | weight, for sparse layers
    n: int = 0
    m: int = 0
    reason: DenseReason | None = None  # why a layer stays dense

    @classmethod
    def sparse(cls, target: str, n: int, m: int) -> LayerDecision:
        return cls("sparse", target, n, m)

    @classmethod
    def dense(cls, reason: DenseReason) -> LayerDecision:
        return cls("dense", reason=reason)

    @property
    def is_sparse(self) -> bool:
        return self.action == "sparse"

    def __str__(self) -> str:
        """The readable form tables show: 'activation 8:16' or 'dense: excluded'."""
        return f"{self.target} {self.n}:{self.m}" if self.is_sparse else f"dense: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "", 0)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerDecision:
        return cls(**data)
