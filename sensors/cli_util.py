"""The small dispatcher behind the ``sensors``, ``training`` and ``runtime`` commands.

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``;
the module is imported only when its subcommand runs, so ``runtime --help`` stays fast and a
station without torch never imports training code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys


def run_subcommands(prog: str, description: str, commands: dict[str, tuple[str, str]],
                    argv: list[str] | None = None) -> int:
    """commands: name -> (module path, one-line help). Returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if a in commands), None)
    for name, (module_path, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_path)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args._module.run(args) or 0)
