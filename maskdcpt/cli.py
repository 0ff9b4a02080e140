"""The ``maskdcpt`` command line.

Each subcommand lives in its own module under :mod:`maskdcpt.commands` exposing ``register(subparsers)``, which
adds its parser and sets ``func`` (``args -> exit status``). Modules are discovered by name, so a new command is
a new file; heavy imports happen inside the command function, never at parser construction. Commands of other
installed packages join through the ``maskdcpt.commands`` entry-point group (the orchestration's ``pipeline`` and
``study`` commands, from :mod:`pipelines`), so this library never imports the orchestration itself.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from importlib.metadata import entry_points

import maskdcpt
import maskdcpt.commands as commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskdcpt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"maskdcpt {maskdcpt.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"maskdcpt.commands.{info.name}")
        module.register(sub)
    for ep in sorted(entry_points(group="maskdcpt.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # an optional plugin whose dependencies are missing
            print(f"maskdcpt: command {ep.name!r} unavailable: {exc}", file=sys.stderr)
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
