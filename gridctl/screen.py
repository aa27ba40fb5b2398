"""The watch screen: a snapshot of the store, rendered as rich tables that fit the terminal.

Called by `gridctl watch` and `gridctl demo` (live, or once), and by tests that render to a fixed-
width Console. `snapshot` reads; `render` is pure (snapshot + width -> renderable).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .models import Attempt, Event, JobRecord, NodeRecord
from .store import queries
from .textsafe import safe
from .timefmt import age  # noqa: F401  (screen.age: the watch screen's durations)
from .styles import GPUS_HEADER, JOB_STATE as JOB_STYLE, NODE_STATE as STATE_STYLE, SEVERITY as EVENT_STYLE


@dataclass(frozen=True)
class GpuSummary:
    max_temp_c: float | None
    util_pct: float | None


@dataclass(frozen=True)
class Snapshot:
    fleet: str
    now: float
    nodes: list[NodeRecord]
    gpus: dict[str, GpuSummary]
    jobs: list[JobRecord]
    attempts: list[Attempt]
    events: list[Event]
    last_pass: float | None = None
    pass_s: float | None = None
    next_pass_at: float | None = None
    interval: float = 15.0
    stale_after: float = 60.0
    partitions: tuple[str, ...] = ()
    note: str = ""
    extra: dict = field(default_factory=dict)


def snapshot(conn: sqlite3.Connection, fleet: str, *, interval: float, stale_after: float, events: int = 8,
             next_pass_at: float | None = None, note: str = "") -> Snapshot:
    nodes = list(queries.load_nodes(conn).values())
    gpus = {}
    for node, (max_temp_c, readings) in queries.latest_gpu_readings(conn).items():
        utils = [g.get("utilization_pct") for g in readings if g.get("utilization_pct") is not None]
        gpus[node] = GpuSummary(max_temp_c, sum(utils) / len(utils) if utils else None)
    jobs = list(queries.load_jobs(conn).values())
    attempts = queries.load_attempts(conn, jobs=[j.name for j in jobs])
    recent = list(reversed(queries.list_events(conn, limit=events)))
    last, took = queries.last_pass_done(conn)
    parts = queries.get_meta(conn, "partitions")
    return Snapshot(fleet, time.time(), nodes, gpus, jobs, attempts, recent, last_pass=last, pass_s=took,
                    next_pass_at=next_pass_at, interval=interval, stale_after=stale_after,
                    partitions=tuple(parts.split(",")) if parts else (), note=note)


def _seen(snap: Snapshot, node: NodeRecord) -> Text:
    if node.last_seen is None:
        return Text("never", style="red")
    silent_s = snap.now - node.last_seen
    style = "green" if silent_s <= 2 * snap.interval + 1 else ("yellow" if silent_s <= snap.stale_after else "red")
    return Text(age(silent_s) + " ago", style=style)


def _table(width: int, columns: list[tuple[str, int, dict]], rows: list[dict[str, Text]]) -> Table:
    """columns: (header, priority (lower = more important), column options). A fixed column is as
    wide as its widest cell (capped by its max_width); columns are dropped from the least important
    until they fit, and the flexible (ratio) column takes what is left, cut with an ellipsis."""
    def natural(header: str, opts: dict) -> int:
        widest = max([len(header)] + [r[header].cell_len for r in rows])
        return min(widest, opts.get("max_width", widest)) if opts.get("ratio") is None else opts.get("min_width", 10)

    keep = list(columns)
    while sum(natural(h, o) + 2 for h, _, o in keep) > width and len(keep) > 2:
        keep.remove(max(keep, key=lambda c: c[1]))
    fixed = sum(natural(h, o) + 2 for h, _, o in keep if o.get("ratio") is None)
    table = Table(show_edge=False, header_style="bold", pad_edge=False, box=None, expand=False)
    for header, _, opts in keep:
        flexible = opts.get("ratio") is not None
        size = {"max_width": max(opts.get("min_width", 10), width - fixed - 2)} if flexible else \
            {"min_width": natural(header, opts), "max_width": natural(header, opts)}
        table.add_column(header, no_wrap=True, overflow="ellipsis", **size)
    for row in rows:
        table.add_row(*[row[h] for h, _, _ in keep])
    return table


def nodes_table(snap: Snapshot, width: int) -> Table:
    used: dict[str, int] = {}
    for a in snap.attempts:
        if a.state.live:
            used[a.node] = used.get(a.node, 0) + len(a.gpus)
    rows = []
    for n in snap.nodes:
        state = "cordoned" if n.cordoned and n.state.value == "ready" else n.state.value
        gpu = snap.gpus.get(n.name)
        rows.append({
            "NODE": Text(n.name), "POOL": Text(n.pool),
            "STATE": Text(state + (" (drain)" if n.draining else ""), style=STATE_STYLE.get(state, "")),
            GPUS_HEADER: Text(f"{'-' if n.gpus_seen is None else n.gpus_seen}/{n.gpus_expected}",
                              style="red" if n.gpus_seen is not None and n.gpus_seen < n.gpus_expected else ""),
            "USED": Text(str(used.get(n.name, 0))),
            "TEMP": Text(f"{gpu.max_temp_c:.0f}°C" if gpu and gpu.max_temp_c is not None else "-"),
            "UTIL": Text(f"{gpu.util_pct:.0f}%" if gpu and gpu.util_pct is not None else "-"),
            "SEEN": _seen(snap, n),
            "REASON": Text(safe(n.reason + (f" [cordoned: {n.cordon_reason}]" if n.cordoned else ""))),
        })
    return _table(width, [
        ("NODE", 0, {"max_width": 24}), ("POOL", 6, {"max_width": 16}), ("STATE", 0, {}), (GPUS_HEADER, 1, {}), ("USED", 4, {}),
        ("TEMP", 5, {}), ("UTIL", 6, {}), ("SEEN", 2, {}), ("REASON", 3, {"min_width": 20, "ratio": 1}),
    ], rows)


def jobs_table(snap: Snapshot, width: int) -> Table:
    by_job: dict[str, list[Attempt]] = {}
    for a in snap.attempts:
        by_job.setdefault(a.job, []).append(a)
    rows = []
    for j in snap.jobs:
        live = [a for a in by_job.get(j.name, []) if a.state.live]
        spec = j.spec
        replicas = spec.get("replicas", 1)
        reason = "" if j.state.value == "running" and j.reason_code == "running" and replicas == 1 else j.reason
        rows.append({
            "JOB": Text(j.name), "CLASS": Text(j.job_class),
            "STATE": Text(j.state.value, style=JOB_STYLE.get(j.state.value, "")),
            "NODE": Text(",".join(sorted({a.node for a in live})) or "-"),
            "GPUS": Text(f"{spec.get('gpus', 0)}x{replicas}" if replicas > 1 else str(spec.get("gpus", 0))),
            "ATT": Text(f"{j.attempts_made}/{j.restarts + j.failures}"),
            "AGE": Text(age(snap.now - j.created_at)),
            "REASON": Text(safe(reason)),
        })
    return _table(width, [
        ("JOB", 0, {"max_width": 24}), ("CLASS", 5, {}), ("STATE", 0, {}), ("NODE", 1, {"max_width": 20}),
        ("GPUS", 4, {}), ("ATT", 3, {}), ("AGE", 6, {}), ("REASON", 2, {"min_width": 34, "ratio": 1}),
    ], rows)


def events_table(snap: Snapshot, width: int) -> Table:
    table = Table(show_edge=False, show_header=False, box=None, pad_edge=False)
    table.add_column("time", no_wrap=True)
    table.add_column("what", no_wrap=True, overflow="ellipsis", max_width=max(20, width - 10))
    for e in snap.events:
        who = e.node or e.job or ""
        line = Text(f"{who}: " if who else "", style="bold")
        line.append(safe(f"{e.kind} {e.message}"), style=EVENT_STYLE.get(e.severity, ""))
        table.add_row(Text(time.strftime("%H:%M:%S", time.localtime(e.time)), style="dim"), line)
    return table


def footer(snap: Snapshot) -> Text:
    states: dict[str, int] = {}
    for n in snap.nodes:
        states[n.state.value] = states.get(n.state.value, 0) + 1
    jobs: dict[str, int] = {}
    for j in snap.jobs:
        jobs[j.state.value] = jobs.get(j.state.value, 0) + 1
    gpus_total = sum(n.gpus_seen if n.gpus_seen is not None else n.gpus_expected for n in snap.nodes)
    gpus_used = sum(len(a.gpus) for a in snap.attempts if a.state.live)
    parts = []
    if snap.pass_s is not None:
        parts.append(f"pass {snap.pass_s:.1f}s")
    if snap.last_pass is not None:
        parts.append(f"last {age(snap.now - snap.last_pass)} ago")
    if snap.next_pass_at is not None:
        parts.append(f"next in {age(snap.next_pass_at - snap.now)}")
    parts.append(f"{len(snap.nodes)} nodes (" + ", ".join(f"{v} {k}" for k, v in sorted(states.items())) + ")"
                 if snap.nodes else "no nodes yet")
    parts.append("jobs " + (", ".join(f"{v} {k}" for k, v in sorted(jobs.items())) or "none"))
    parts.append(f"GPUs {gpus_used}/{gpus_total} used")
    text = Text(" · ".join(parts), style="dim")
    if snap.partitions:
        text.append(f"\nPARTITION SUSPECTED ({', '.join(snap.partitions)}): silent nodes are not quarantined",
                    style="bold red")
    if snap.note:
        text.append("\n" + snap.note, style="bold")
    return text


def render(snap: Snapshot, width: int) -> Group:
    title = Text(f"gridctl watch · fleet {snap.fleet}", style="bold")
    title.append(time.strftime("  %H:%M:%S", time.localtime(snap.now)), style="dim")
    return Group(
        title,
        Text("NODES", style="bold cyan"), nodes_table(snap, width),
        Text(""), Text("JOBS", style="bold cyan"),
        jobs_table(snap, width) if snap.jobs else Text("no jobs (gridctl run ...)", style="dim"),
        Text(""), Text("EVENTS (newest first)", style="bold cyan"),
        events_table(snap, width) if snap.events else Text("none yet", style="dim"),
        Text(""), footer(snap),
    )


def event_line(e: Event) -> str:
    """One plain line per event (watch --plain, or no TTY)."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(e.time))
    who = " ".join(x for x in (f"node={e.node}" if e.node else "", f"job={e.job}" if e.job else "") if x)
    return safe(f"{when}Z {e.severity:<7} {e.kind:<18} {who + ' ' if who else ''}{e.message}")
