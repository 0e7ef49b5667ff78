"""torch.library custom ops. Importing this package registers them (needed before torch.export.load)."""

from actprune_compiler.ops.nm_linear import nm_linear

__all__ = ["nm_linear"]
