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


def comma_list(text: str) -> list[str]:
    """argparse type of every list option: comma-separated values (the option may also repeat)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated values, e.g. a,b; got {text!r}")
    return items


def add_list_argument(p: argparse.ArgumentParser, *flags: str, **kwargs) -> None:
    """A list option: ``--x a,b`` and ``--x a --x b`` give the same list (``action="extend"``)."""
    p.add_argument(*flags, type=comma_list, action="extend", **kwargs)


def add_set_argument(p: argparse.ArgumentParser, example: str) -> None:
    """``--set section.key=value`` (repeatable), the one override syntax of every command."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set",
                   help=f"override any config key (value parsed as YAML; lists as [a,b]), e.g. --set {example}; "
                        "repeatable. `config show` lists every key")


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
