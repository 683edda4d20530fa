"""The small dispatcher behind the ``sensors``, ``training`` and ``runtime`` commands, and the
command-line conventions they share (README, "Command-line conventions").

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``;
the module is imported only when its subcommand runs, so ``runtime --help`` stays fast and a
station without torch never imports training code. Every command accepts ``--version``; every
subcommand accepts ``--log-level`` (before or after its name) and ``--no-progress`` (no progress
bars: ``TQDM_DISABLE`` switches off every tqdm bar left at its default; a command whose library
call takes ``progress`` passes ``progress=not args.no_progress``, since an explicit ``disable=``
wins over the environment).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys
from importlib import metadata
from pathlib import Path


def package_version() -> str:
    try:
        return metadata.version("awc-pose")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def comma_list(text: str) -> list[str]:
    """Comma-separated values -> list (empty items dropped)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated values, e.g. a,b; got {text!r}")
    return items


class _ListAction(argparse.Action):
    """Every list option: ``--x a,b``, ``--x a b`` and ``--x a --x b`` all give [a, b]."""

    def __init__(self, option_strings, dest, item_type=str, **kwargs):
        self.item_type = item_type
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        seen = f"_list_seen_{self.dest}"
        items = list(getattr(namespace, self.dest, None) or []) if getattr(namespace, seen, False) else []
        setattr(namespace, seen, True)   # the first use replaces the default, later ones extend
        for text in values:
            for item in comma_list(text):
                try:
                    items.append(self.item_type(item))
                except ValueError:
                    parser.error(f"{option_string}: {item!r} is not a valid {self.item_type.__name__}")
        setattr(namespace, self.dest, items)


def terminal_safe(text: str) -> str:
    """``text`` for a terminal: control and format characters (escape sequences, bidi overrides) that
    came from data are shown escaped (``\\x1b``), line breaks and tabs kept."""
    return "".join(c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode("ascii") for c in text)


def add_list_argument(p: argparse.ArgumentParser, *flags: str, item_type=str, **kwargs) -> None:
    """A list option (see ``_ListAction``); ``item_type`` converts each item (str, int...)."""
    p.add_argument(*flags, action=_ListAction, item_type=item_type, **kwargs)


def add_set_argument(p: argparse.ArgumentParser, example: str) -> None:
    """``--set section.key=value`` (repeatable), the one override syntax of every command."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set",
                   help=f"override any config key (value parsed as YAML; lists as [a,b]), e.g. --set {example}; "
                        "repeatable. `config show` lists every key")


def add_client_key_arguments(p: argparse.ArgumentParser, key_name: str, keys_help: str) -> None:
    """CurveZMQ client keys: ``--keys DIR`` + ``--key-name`` (the layout of ``runtime keys``), or
    ``--client-key`` / ``--server-key`` files."""
    p.add_argument("--keys", default=None, metavar="DIR", help=keys_help)
    p.add_argument("--key-name", default=key_name, help=f"client key name with --keys (default {key_name})")
    p.add_argument("--client-key", default=None, metavar="FILE", help="CurveZMQ client secret key file")
    p.add_argument("--server-key", default=None, metavar="FILE", help="CurveZMQ server public key file")


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """``--json``: print the result as JSON instead of the table; ``--report FILE``: also write it there."""
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    p.add_argument("--report", default=None, metavar="FILE", help="also write the result as JSON to FILE")


def emit_report(args: argparse.Namespace, report: dict, text: str) -> None:
    """Print ``text`` (or the JSON with ``--json``) and write the JSON to ``--report`` if given."""
    as_json = json.dumps(report, indent=2, default=float)
    print(as_json if args.json else text)
    if getattr(args, "report", None):
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(as_json + "\n")
        logging.getLogger(__name__).info("wrote %s", path)


# Optional packages -> the pyproject extra that installs them (a station has none of the train ones).
EXTRA_OF = {"torch": "train", "onnx": "train", "matplotlib": "report", "sklearn": "sim", "tensorboard": "tensorboard",
            "onnxruntime": "cpu", "starlette": "view", "uvicorn": "view", "sse_starlette": "view",
            "cv2": "camera", "ouster": "ouster", "serial": "iwr6843", "csiread": "csi"}
# What a station runs (serve, its viewer, the session report): the `station` extra holds them all.
STATION_EXTRAS = ("cpu", "view", "report")


def missing_extra(err: ModuleNotFoundError) -> str | None:
    """One line saying which extra installs the missing package, or None if it is not optional."""
    top = (err.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    hint = " (torch: choose its CPU or CUDA build first, README \"Installing\")" if top == "torch" else ""
    if extra in STATION_EXTRAS:
        hint = " (or the whole station: pip install 'awc-pose[station]')"
    return (f"this command needs the Python package {top!r}, which is not installed here; install the "
            f"{extra!r} extra: pip install 'awc-pose[{extra}]'{hint}")


def require_packages(*names: str) -> None:
    """Raise ModuleNotFoundError for the first of ``names`` that is not installed, before a command
    starts anything (the dispatcher turns it into the one-line hint of ``missing_extra``)."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def run_subcommands(prog: str, description: str, commands: dict[str, tuple[str, str]],
                    argv: list[str] | None = None) -> int:
    """commands: name -> (module path, one-line help). Returns the process exit code; a package of
    an extra that is not installed is one line on stderr and exit code 2; Ctrl-C stops any command
    with one line and exit code 130, not a traceback."""
    try:
        return _run_subcommands(prog, description, commands, argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:
        line = missing_extra(err)
        if line is None:
            raise
        print(f"{prog}: error: {line}", file=sys.stderr)
        return 2


def _run_subcommands(prog: str, description: str, commands: dict[str, tuple[str, str]],
                     argv: list[str] | None = None) -> int:
    """commands: name -> (module path, one-line help). Returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s (awc-pose) {package_version()}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if a in commands), None)
    for name, (module_path, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_path)
            module.add_arguments(p)
            p.set_defaults(_module=module)
            # The same log level after the subcommand; SUPPRESS keeps the top-level value otherwise.
            p.add_argument("--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING, ERROR")
            if "--no-progress" not in p._option_string_actions:
                p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if getattr(args, "no_progress", False):
        os.environ["TQDM_DISABLE"] = "1"   # every tqdm bar of this process (tqdm >= 4.66 reads it)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args._module.run(args) or 0)
