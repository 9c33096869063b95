"""The ``autotune`` command line.

Every subcommand's arguments are in :mod:`autotune.cli.parsers` (argparse
only); what runs each command is a function in a module of its group,
named in :data:`COMMANDS` and imported only when that command runs, so
``--help`` and the commands that need no model (``detect``, ``profiles``,
``report``) never import torch. Errors that derive from
:class:`~autotune.errors.AutotuneError` become one line on stderr and exit
code 2, never a traceback. ``-v``/``-vv`` work before the subcommand and
after it (``autotune -v detect`` = ``autotune detect -v``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys
from importlib import metadata
from typing import Callable, NoReturn, Sequence

from autotune import __version__
from autotune.cli.parsers import add_commands
from autotune.errors import AutotuneError

#: The function that runs each command, as ``module:function`` (the form of
#: an entry point); the module is imported when its command runs.
COMMANDS = {
    "detect": "autotune.cli.core:cmd_detect",
    "profiles": "autotune.cli.core:cmd_profiles",
    "plugins": "autotune.cli.core:cmd_plugins",
    "plan": "autotune.cli.core:cmd_plan",
    "bench": "autotune.cli.bench:cmd_bench",
    "monitor": "autotune.cli.telemetry:cmd_monitor",
    "daemon": "autotune.cli.telemetry:cmd_daemon",
    "report": "autotune.cli.telemetry:cmd_report",
    "cv": "autotune.cli.cv:cmd_cv",
}

EXIT_USAGE = 2
#: The distribution autotune is installed as (``pip install torch-autotune``).
DISTRIBUTION = "torch-autotune"
#: Namespace attributes holding -v counts start with this; one per parser level.
_VERBOSE = "verbose"


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line and exit code 2, not the usage block."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    """The installed distribution's version, else the package's own."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        return __version__


def _add_verbose(parser: argparse.ArgumentParser, depth: int) -> None:
    """``-v`` on this parser and, recursively, on every subcommand's parser.

    A subparser copies what it parsed over the parent's namespace, so each
    level counts into its own attribute (``verbose_1``...) and
    :func:`verbosity` adds them up: ``-v detect -v`` is ``-vv``.
    """
    parser.add_argument("-v", "--verbose", action="count", dest=f"{_VERBOSE}_{depth}",
                        default=argparse.SUPPRESS, help="log more (-v info, -vv debug)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                _add_verbose(sub, depth + 1)


def verbosity(args: argparse.Namespace) -> int:
    """How many ``-v`` were given, before and after the subcommand."""
    return sum(v for k, v in vars(args).items() if k.startswith(f"{_VERBOSE}_"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="autotune",
        description="Detect the machine, match a hardware profile, plan and measure "
                    "PyTorch training settings.")
    parser.add_argument("--version", action="version", version=f"autotune {version()}",
                        help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_commands(subparsers)
    _add_verbose(parser, 0)
    return parser


def command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs command ``name``, its module imported now."""
    module, _, function = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # What was typed, for a command that records how its output was made.
    args.command_line = shlex.join(["autotune", *(sys.argv[1:] if argv is None else argv)])
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity(args), 2)]
    logging.basicConfig(level=level,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(command(args.command)(args) or 0)
    except AutotuneError as exc:
        print(f"autotune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("autotune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `autotune plan --json | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def run() -> None:
    """The ``autotune`` command (and ``python -m autotune``): :func:`main`,
    then exit. After Ctrl-C the process leaves at once with 130 instead of
    through interpreter shutdown: native threads still alive then (torch's
    compile and loader machinery) can make the C++ runtime abort the
    process (SIGABRT, "terminate called without an active exception"),
    which turned the exit code into -6. Whatever Ctrl-C left (the tuning
    cache's partial entry) is written before main returns."""
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
