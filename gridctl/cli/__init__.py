"""The root Typer app and the one place errors become messages and exit codes.

`main` is the console script. Command modules register themselves on `app`; each parses, calls one
function and renders through cli/render.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import EXIT_USAGE, GridctlError

app = typer.Typer(
    name="gridctl", no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
    help="Keep GPU workloads alive on fleets of GPU machines: probe nodes over SSH, quarantine the sick ones.",
    epilog="Example: gridctl -f fleet.yaml nodes -o wide",
    context_settings={"help_option_names": ["-h", "--help"]},
)
describe_app = typer.Typer(no_args_is_help=True, help="Show one object in detail.",
                           epilog="Example: gridctl describe node h100-a -f fleet.yaml")
app.add_typer(describe_app, name="describe")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version
        try:
            print(f"gridctl {version('gridctl')}")
        except PackageNotFoundError:
            print("gridctl (version unknown: not installed as a package)")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    fleet_path: Optional[Path] = typer.Option(None, "-f", "--fleet", help="Fleet spec for the command that follows."),
    as_json: bool = typer.Option(False, "--json", help="JSON output for the read command that follows."),
    output: Optional[str] = typer.Option(None, "-o", "--output", metavar="FORMAT",
                                         help="Output of the read command that follows: wide | json | yaml | name."),
    _version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                  help="Print gridctl's version and exit."),
) -> None:
    """Options given here apply to the command that follows; the command's own win."""
    ctx.obj = {"fleet": fleet_path, "json": as_json, "output": output}


from . import (admin, demo, endpoints, fleetcmds, jobs, lifecycle, metrics, nodes, route, status,  # noqa: E402,F401
               watch)  # (registration by import)


def main() -> None:
    sys.exit(_run())


def _run() -> int:
    """The command's exit code; every known error mapped to its message here."""
    _plain_help_without_terminal()
    try:
        return app(standalone_mode=False) or 0
    except GridctlError as e:
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"error: {_cut(line)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except _click_errors() as e:   # usage errors: unknown flag, missing argument, bare `gridctl`
        if _fleet_without_value(e):
            print("error: -f is --fleet and needs a fleet file (gridctl logs JOB -f fleet.yaml); "
                  "to follow logs use -F/--follow", file=sys.stderr)
            return EXIT_USAGE
        if type(e).__name__ == "NoArgsIsHelpError" and getattr(e, "ctx", None) is not None:
            print(e.ctx.get_help())   # bare `gridctl` / `gridctl describe`: the help, on stdout as --help
            return EXIT_USAGE
        from ..wording import ours
        if isinstance(getattr(e, "message", None), str):
            e.message = ours(e.message)     # typer checks flag values with pydantic: its words, not ours
        e.show()
        return e.exit_code if e.exit_code is not None else EXIT_USAGE
    except Exception as e:
        import sqlite3
        if not isinstance(e, sqlite3.DatabaseError):
            raise
        from ..store.db import damaged
        print(f"error: {damaged(e)}", file=sys.stderr)
        return damaged(e).exit_code


MAX_LINE = 300


def _plain_help_without_terminal() -> None:
    """--help piped or captured is click's plain text (no boxes, and no rich to import: half of
    --help's start-up); on a terminal it stays typer's rich panels."""
    from .render import is_terminal
    if not is_terminal():
        for typer_app in (app, describe_app):
            typer_app.rich_markup_mode = None


def _fleet_without_value(e: Exception) -> bool:
    """`gridctl logs JOB -f` as a kubectl or tail user would type it to follow."""
    return getattr(e, "option_name", None) in ("-f", "--fleet") and "requires an argument" in str(e)


def _cut(line: str) -> str:
    """An error quoting a huge input stays one readable line."""
    return line if len(line) <= MAX_LINE else f"{line[:MAX_LINE]}… ({len(line) - MAX_LINE} more characters)"


def _click_errors() -> tuple[type, ...]:
    """Typer >= 0.20 bundles its own click (typer._click); older ones use click itself."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException
    return (ClickException,)
