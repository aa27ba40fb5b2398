"""The one output helper: a rich table on a terminal, or the stable --json array (DESIGN section 8).

Called by every read command in gridctl/cli/.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from rich.console import Console
from rich.markup import escape as _escape
from rich.table import Table

from ..textsafe import safe
from ..styles import ATTEMPT_STATE as ATTEMPT_STYLE, HEALTH as HEALTH_STYLE, JOB_STATE as JOB_STYLE, \
    NODE_STATE as STATE_STYLE

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)



def esc(text: object) -> str:
    """Text for a markup string: control characters removed (node text is untrusted), markup escaped."""
    return _escape(safe(text))


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def ago(t: float | None, now: float | None = None) -> str:
    from ..screen import age
    return "never" if t is None else age((now or time.time()) - t) + " ago"


Column = tuple[str, str, Callable[[dict], Any] | None]   # (key, header, cell renderer)


def emit(rows: Sequence[dict], columns: Sequence[Column], *, as_json: bool, title: str | None = None,
         empty: str = "nothing to show") -> None:
    """Print rows as JSON (all keys) or as a table of the given columns."""
    if as_json:
        sys.stdout.write(json.dumps(list(rows), indent=2, default=str) + "\n")
        return
    if not rows:
        console.print(empty)
        return
    table = Table(title=title, show_edge=False, header_style="bold", pad_edge=False)
    for _, header, _ in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        # a renderer returns markup (and escapes what it shows); a plain cell is escaped here
        table.add_row(*[str(fn(row)) if fn else esc(str(row.get(key, ""))) for key, _, fn in columns])
    console.print(table)


def styled(value: str, styles: dict[str, str]) -> str:
    style = styles.get(value)
    return f"[{style}]{esc(value)}[/{style}]" if style else esc(value)


def print_events(events, title: str = "Events") -> None:
    """The event list of `describe node` / `describe job`: one line each, never wrapped."""
    console.print(f"\n[bold]{title}[/bold]")
    for e in events:
        console.print(f"  {iso(e.time)}  {e.kind:<16} {safe(e.message)}", markup=False, soft_wrap=True)
    if not events:
        console.print("  none")
