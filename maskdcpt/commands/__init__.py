"""Subcommands of the ``maskdcpt`` CLI: one module each, exposing ``register(subparsers)``."""
