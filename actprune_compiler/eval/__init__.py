"""Evaluation: data, perplexity, lm-eval tasks, one run (or an artifact's program), sweeps, tables and plots."""
