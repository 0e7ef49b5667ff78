"""How nm_linear becomes fast code, per backend. The graph keeps one node; lowering expands it."""
