"""torch.library custom ops. Importing this package registers them (needed before torch.export.load)."""

from actprune_compiler.ops.nm_linear import nm_linear, quant_linear
from actprune_compiler.ops.select import nm_select

__all__ = ["nm_linear", "nm_select", "quant_linear"]
