"""The one output helper of every read command (DESIGN section 8): `-o table|wide|json|yaml|name`.

A table is a rich table on a terminal (the last column cut with an ellipsis at the terminal's width,
no cell ever wrapped) and plain aligned text otherwise, like `kubectl get`: header in capitals,
columns separated by three spaces, no box characters, one row per line, so `awk` and `cut` work.
json / yaml print the same objects (the stable interface in the README); name prints one name a line.
rich is imported only when a terminal table or a rich print needs it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any, NamedTuple, Sequence

from ..styles import ATTEMPT_STATE as ATTEMPT_STYLE, HEALTH as HEALTH_STYLE, JOB_STATE as JOB_STYLE, \
    NODE_STATE as STATE_STYLE  # noqa: F401  (for the command modules)
from ..textsafe import safe
from ..timefmt import age, duration  # noqa: F401  (duration: for the command modules)

FORMATS = ("table", "wide", "json", "yaml", "name")
GAP = "   "           # between plain columns: two or more spaces, so a single space inside a cell is safe
MIN_FLEX_WIDTH = 20   # the cut column never gets narrower: columns marked {"drop": n} go first (lowest n)


class _LazyConsole:
    """A rich Console created on first use, so a plain read command never imports rich."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console = None

    @property
    def real(self) -> Any:
        """The rich Console itself, for rich objects that take one (Live, Progress)."""
        if self._console is None:
            from rich.console import Console
            self._console = Console(highlight=False, **self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


console: Any = _LazyConsole()
err_console: Any = _LazyConsole(stderr=True)


class Cell(NamedTuple):
    """A plain cell (never markup) and its rich style on a terminal."""
    text: str
    style: str = ""


Column = tuple  # (key, header, renderer or None[, {"wide": True}]); a renderer returns a Cell, or markup


def esc(text: object) -> str:
    """Text for a markup string: control characters removed (node text is untrusted), markup escaped."""
    from rich.markup import escape
    return escape(safe(text))


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def ago(t: float | None, now: float | None = None) -> str:
    return "never" if t is None else age((now or time.time()) - t) + " ago"


def is_terminal(stderr: bool = False) -> bool:
    """Whether stdout (or stderr) is a terminal, decided as rich decides it (TTY_COMPATIBLE, FORCE_COLOR)."""
    lazy = err_console if stderr else console
    if lazy._console is not None:
        return lazy._console.is_terminal
    forced = os.environ.get("TTY_COMPATIBLE", "")
    if forced in ("0", "1"):
        return forced == "1"
    if os.environ.get("FORCE_COLOR"):
        return True
    stream = sys.stderr if stderr else sys.stdout
    return hasattr(stream, "isatty") and stream.isatty()


def output_format(as_json: bool = False, output: str | None = None) -> str:
    """The format asked for: the command's own -o / --json win over the ones given before it."""
    from .common import root_options
    root = root_options()
    chosen = output if output is not None else "json" if as_json else \
        root.get("output") or ("json" if root.get("json") else "table")
    if chosen not in FORMATS:
        from ..errors import ConfigError
        raise ConfigError(f"-o/--output: unknown format {chosen!r} (known: {', '.join(FORMATS[1:])})")
    return chosen


def emit(rows: Sequence[dict], columns: Sequence[Column], *, as_json: bool = False, output: str | None = None,
         title: str | None = None, empty: str = "nothing to show", name_key: str = "name") -> None:
    """Print rows in the asked format: json / yaml (every key), names, or a table of the columns."""
    fmt = output_format(as_json, output)
    if fmt in ("json", "yaml", "name"):
        dump(list(rows), fmt, name_key)
        return
    if not rows:
        print(empty, flush=True)
        return
    table(rows, columns, wide=fmt == "wide", title=title)


def dump(rows: list[dict], fmt: str, name_key: str = "name") -> None:
    """json, yaml (the same objects as json) or one name a line."""
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
    elif fmt == "yaml":
        import yaml
        sys.stdout.write(yaml.safe_dump(json.loads(json.dumps(rows, default=str)), sort_keys=False,
                                        allow_unicode=True, default_flow_style=False) if rows else "[]\n")
    else:
        if rows and name_key not in rows[0]:
            from ..errors import ConfigError
            raise ConfigError("-o name: these rows have no names (use -o json, yaml or wide)")
        sys.stdout.write("".join(f"{safe(r[name_key])}\n" for r in rows))
    sys.stdout.flush()


def table(rows: Sequence[dict], columns: Sequence[Column], *, wide: bool = False, title: str | None = None) -> None:
    """Rows as a table: rich on a terminal, plain aligned text otherwise (see the module docstring)."""
    shown = [c for c in columns if wide or not (len(c) > 3 and c[3].get("wide"))]
    headers = [c[1] for c in shown]
    cells = [[_cell(row, c) for c in shown] for row in rows]
    if is_terminal():
        keep = list(range(len(shown))) if wide else _fit(shown, cells, console.width)
        _rich_table([headers[i] for i in keep], [[row[i] for i in keep] for row in cells], wide=wide, title=title)
    else:
        _plain_table(headers, cells, title=title)


def _cell(row: dict, column: Column) -> Cell:
    key, _, fn = column[:3]
    if fn is None:
        value = row.get(key)
        return Cell(safe("" if value is None else value))
    got = fn(row)
    if isinstance(got, Cell):
        return Cell(safe(got.text), got.style)
    from rich.text import Text
    return Cell(Text.from_markup(str(got)).plain, f"markup:{got}")   # a legacy markup renderer


def _plain_table(headers: list[str], cells: list[list[Cell]], title: str | None) -> None:
    texts = [[c.text or "-" for c in row] for row in cells]
    widths = [max([len(h)] + [len(r[i]) for r in texts]) for i, h in enumerate(headers)]
    lines = [title] if title else []
    for row in [headers, *texts]:
        lines.append(GAP.join(t.ljust(w) for t, w in zip(row, widths)).rstrip())
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def _fit(columns: list, cells: list[list[Cell]], width: int) -> list[int]:
    """Which columns a terminal of this width shows: all, unless the last one would get less than
    MIN_FLEX_WIDTH; then the droppable ones ({"drop": n}), lowest n first, until it fits."""
    widths = [max([len(c[1])] + [len(r[i].text) for r in cells]) for i, c in enumerate(columns)]
    keep = list(range(len(columns)))
    droppable = sorted((c[3]["drop"], i) for i, c in enumerate(columns) if len(c) > 3 and "drop" in c[3])
    while droppable and width - sum(widths[i] for i in keep[:-1]) - len(GAP) * (len(keep) - 1) < MIN_FLEX_WIDTH:
        keep.remove(droppable.pop(0)[1])
    return keep


def _rich_table(headers: list[str], cells: list[list[Cell]], *, wide: bool, title: str | None) -> None:
    """All cells unwrapped; the last column takes what is left of the width, cut with an ellipsis
    (with -o wide it folds instead, so nothing is hidden)."""
    from rich.table import Table
    from rich.text import Text
    widths = [max([len(h)] + [len(r[i].text) for r in cells]) for i, h in enumerate(headers)]
    room = console.width - sum(widths[:-1]) - len(GAP) * (len(headers) - 1)
    table_ = Table(title=title, show_edge=False, header_style="bold", pad_edge=False)
    for i, header in enumerate(headers):
        if i < len(headers) - 1:
            table_.add_column(header, no_wrap=True, min_width=widths[i])
        elif wide:
            table_.add_column(header, overflow="fold")
        else:
            table_.add_column(header, no_wrap=True, overflow="ellipsis", max_width=max(MIN_FLEX_WIDTH, room))
    for row in cells:
        table_.add_row(*[Text.from_markup(c.style[7:]) if c.style.startswith("markup:") else Text(c.text, style=c.style)
                         for c in row])
    console.print(table_)


def styled(value: str, styles: dict[str, str]) -> str:
    """Markup for a value in its colour (for rich prints; table renderers return `cell`)."""
    style = styles.get(value)
    return f"[{style}]{esc(value)}[/{style}]" if style else esc(value)


def cell(value: str, styles: dict[str, str], suffix: str = "") -> Cell:
    """A table cell in the value's colour (states, health, severities)."""
    return Cell(f"{value}{suffix}", styles.get(value, ""))


Field = tuple  # (label, value): value is plain text, a Cell, or a list of Cells (segments in their styles)


def say(text: str, style: str = "") -> None:
    """One line of plain text (already made safe), never wrapped; styled on a terminal."""
    if is_terminal():
        from rich.text import Text
        console.print(Text(text, style=style), soft_wrap=True)
    else:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def warn(text: str, style: str = "bold red") -> None:
    """One line on stderr (plain text, already made safe), never wrapped; styled on a terminal, and
    without rich otherwise (a piped read command stays light even when it warns)."""
    if is_terminal(stderr=True):
        from rich.text import Text
        err_console.print(Text(text, style=style), soft_wrap=True)
    else:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def print_fields(fields: Sequence[Field]) -> None:
    """`describe`'s header block: one `Label  value` line each, never wrapped."""
    width = max(len(label) for label, _ in fields)
    terminal = is_terminal()
    for label, value in fields:
        segments = [Cell(safe(c.text), c.style) for c in
                    (value if isinstance(value, list) else [value if isinstance(value, Cell) else Cell(value)])]
        if not terminal:
            sys.stdout.write(f"{label.ljust(width)}  {''.join(c.text for c in segments)}\n")
            continue
        from rich.text import Text
        line = Text()
        line.append(f"{label.ljust(width)}  ", style="bold")
        for c in segments:
            line.append(c.text, style=c.style)
        console.print(line, soft_wrap=True)
    sys.stdout.flush()


def section(title: str) -> None:
    say("")
    say(title, "bold")


def print_events(events, title: str = "Events") -> None:
    """The event list of `describe node` / `describe job`: one line each, never wrapped."""
    section(title)
    for e in events:
        say(safe(f"  {iso(e.time)}  {e.kind:<16} {e.message}"))
    if not events:
        say("  none")
