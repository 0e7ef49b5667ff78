"""Subcommands of the `actprune` CLI."""
