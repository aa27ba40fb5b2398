"""The root Typer app and the one place errors become messages and exit codes.

`main` is the console script. Command modules register themselves on `app`; each parses, calls one
function and renders through cli/render.py.
"""

from __future__ import annotations

import sys

import typer

from ..errors import EXIT_USAGE, GridctlError

app = typer.Typer(
    name="gridctl", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Keep GPU workloads alive on fleets of GPU machines: probe nodes over SSH, quarantine the sick ones.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
describe_app = typer.Typer(no_args_is_help=True, help="Show one object in detail.")
app.add_typer(describe_app, name="describe")

from . import (admin, demo, endpoints, fleetcmds, jobs, lifecycle, metrics, nodes, route, status,  # noqa: E402,F401
               watch)  # (registration by import)


def main() -> None:
    try:
        code = app(standalone_mode=False)
        sys.exit(code or 0)
    except GridctlError as e:
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"error: {_cut(line)}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except _click_errors() as e:   # usage errors: unknown flag, missing argument, bare `gridctl`
        e.show()
        sys.exit(e.exit_code if e.exit_code is not None else EXIT_USAGE)
    except Exception as e:
        import sqlite3
        if not isinstance(e, sqlite3.DatabaseError):
            raise
        from ..store.db import damaged
        print(f"error: {damaged(e)}", file=sys.stderr)
        sys.exit(damaged(e).exit_code)


MAX_LINE = 300


def _cut(line: str) -> str:
    """An error quoting a huge input stays one readable line."""
    return line if len(line) <= MAX_LINE else f"{line[:MAX_LINE]}… ({len(line) - MAX_LINE} more characters)"


def _click_errors() -> tuple[type, ...]:
    """Typer >= 0.20 bundles its own click (typer._click); older ones use click itself."""
    import importlib
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except ImportError:
            pass
    return tuple(found)
