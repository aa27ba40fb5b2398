"""Job verbs: run, jobs, describe job, logs, cancel, drain."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import ConfigError, NotFoundError
from ..textsafe import safe
from . import app, describe_app
from .common import FleetOption, JsonOption, OutputOption, load, open_store, store_path
from .status import warn_unsupervised
from .render import ATTEMPT_STYLE, JOB_STYLE, Cell, ago, cell, console, dump, duration, emit, err_console, iso, \
    output_format, print_events, print_fields, say, section, table, warn



def _attempt_json(a) -> dict:
    return {"id": a.id, "n": a.n, "replica": a.replica, "node": a.node, "state": a.state.value, "reason": a.reason,
            "gpus": list(a.gpus), "started_at": iso(a.started_at), "ended_at": iso(a.ended_at),
            "exit_code": a.exit_code, "created_at": iso(a.created_at)}


def job_json(job, attempts) -> dict:
    spec = job.spec
    return {"name": job.name, "class": job.job_class, "state": job.state.value, "reason": job.reason,
            "reason_code": job.reason_code, "replicas": spec.get("replicas", 1), "gpus": spec.get("gpus", 0),
            "restarts": job.restarts, "failures": job.failures, "created_at": iso(job.created_at),
            "updated_at": iso(job.updated_at), "attempts": [_attempt_json(a) for a in attempts]}


def _parse_env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--env {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    args: Optional[List[str]] = typer.Argument(None, help="job.yaml, or (with --name) the command and its arguments after --"),
    fleet_path: Optional[Path] = FleetOption,
    name: Optional[str] = typer.Option(None, "--name", help="Job name (lower-case letters, digits, . _ -)."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs per replica (default 1)."),
    job_class: Optional[str] = typer.Option(None, "--class", help="service | batch | training | manual."),
    replicas: Optional[int] = typer.Option(None, "--replicas", help="Service replicas."),
    gpu_type: Optional[str] = typer.Option(None, "--gpu-type", help="e.g. H100."),
    pool: Optional[str] = typer.Option(None, "--pool", help="Only nodes of this pool."),
    env: List[str] = typer.Option([], "--env", help="KEY=VALUE (repeatable)."),
    port: Optional[str] = typer.Option(None, "--port", help="Service port on its node (GRIDCTL_PORT): a number or auto."),
    ready_http: Optional[str] = typer.Option(None, "--ready-http", help="Readiness: GET this path, 2xx = ready."),
    ready_tcp: bool = typer.Option(False, "--ready-tcp", help="Readiness: the port accepts a connection."),
    wait: float = typer.Option(30.0, "--wait", help="Seconds to wait for a running reconciler to take the lock."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say where it would go now (node, or pool that would grow), "
                                 "or why not; record nothing."),
    as_json: bool = JsonOption,
    output: Optional[str] = OutputOption,
) -> None:
    """Record a job, place it and start it (or say why it is pending). A job no pool could ever fit
    (GPU type, count, memory per GPU) is refused.

    Example: gridctl run -f fleet.yaml --name train-1 --class batch --gpus 2 -- python train.py
    """
    from .. import ops
    from ..jobspec import job_from_flags, load_job
    fmt = output_format(as_json, output)        # checked before anything is recorded
    fleet, db_path = load(fleet_path)
    args = args or []
    if name is None:
        if len(args) != 1 or not args[0].endswith((".yaml", ".yml")):
            raise ConfigError("give a job file (gridctl run job.yaml) or --name NAME -- COMMAND ARGS...")
        spec = load_job(args[0])
    else:
        if not args:
            raise ConfigError("--name given but no command: gridctl run --name NAME --gpus N -- COMMAND ARGS...")
        readiness = {"http": ready_http} if ready_http else {"tcp": True} if ready_tcp else None
        spec = job_from_flags({"name": name, "class": job_class, "command": list(args), "gpus": gpus,
                               "replicas": replicas, "gpu_type": gpu_type, "pool": pool, "env": _parse_env(env),
                               "port": port, "readiness": readiness})
    if dry_run:
        _show_dry_run(spec, *ops.dry_run(fleet, db_path, spec), fmt)
        return
    _show_job_line(ops.submit(fleet, db_path, spec, wait), fmt)
    warn_unsupervised(db_path)


def _show_dry_run(spec, places, seen: float | None, fmt: str) -> None:
    """`run --dry-run`: where each replica would go; -o json|yaml|name: one object (the job's name)."""
    rows = [{"replica": w.replica, "node": w.node, "gpus": list(w.gpus), "pool": w.pool, "reason": w.why}
            for w in places]
    if fmt in ("json", "yaml", "name"):
        dump([{"name": spec.name, "dry_run": True, "nodes_seen_at": iso(seen), "replicas": rows}], fmt)
        return
    say(safe(f"dry run: job {spec.name} ({spec.job_class}, {spec.gpus} GPU(s) x {spec.replicas}) would go, as "
             f"nodes were last seen {ago(seen)}; nothing recorded"))

    def where(r: dict) -> Cell:
        if r["node"]:
            return Cell(f"node {r['node']}, GPUs {','.join(map(str, r['gpus'])) or 'none'}")
        if r["pool"]:
            return Cell(f"pool {r['pool']} would grow by one instance (no node now: {r['reason']})")
        return Cell(f"pending: {r['reason']}", "yellow")
    emit(rows, [("replica", "REPLICA", None), ("where", "WHERE", where)], output=fmt)


def _show_job_line(now, fmt: str) -> None:
    """The job after run / restart / cancel: its state and reason, and each live attempt;
    -o json|yaml|name: the job's object (as `jobs --json`)."""
    job, attempts = now.job, now.attempts
    if fmt in ("json", "yaml", "name"):
        dump([job_json(job, attempts)], fmt)
        return
    say(safe(f"job {job.name}: {job.state.value} - {job.reason}"), JOB_STYLE.get(job.state.value, ""))
    for a in attempts:
        if a.state.live:
            say(safe(f"  attempt {a.n} (replica {a.replica}) {a.state.value} on {a.node}, "
                     f"GPUs {','.join(a.gpus) or 'none'}"))
    if now.note:
        warn(safe(now.note), "")


@app.command("jobs")
def jobs_cmd(fleet_path: Optional[Path] = FleetOption, as_json: bool = JsonOption,
             output: Optional[str] = OutputOption,
             all_jobs: bool = typer.Option(True, "--all/--active", help="Include finished jobs (default) or only active ones.")) -> None:
    """List jobs with their state, where they run, and the reason for anything not running.

    Example: gridctl jobs -f fleet.yaml --active -o wide
    """
    from ..store import queries
    fmt = output_format(as_json, output)
    db_path = store_path(fleet_path)
    if not db_path.exists():
        emit([], [], output=fmt, empty="no jobs yet")
        return
    conn = open_store(db_path)
    try:
        jobs = queries.load_jobs(conn, active_only=not all_jobs)
        attempts = queries.load_attempts(conn, jobs=list(jobs))
    finally:
        conn.close()
    rows = [job_json(j, [a for a in attempts if a.job == j.name]) for j in jobs.values()]
    now = time.time()

    def where(r: dict) -> Cell:
        live = [a for a in r["attempts"] if a["state"] in ("running", "starting", "silent")]
        return Cell(",".join(sorted({a["node"] for a in live})) or "-")

    emit(rows, [
        ("name", "JOB", None), ("class", "CLASS", None, {"drop": 3}),
        ("state", "STATE", lambda r: cell(r["state"], JOB_STYLE)),
        ("node", "NODE", where),
        ("gpus", "GPUS", lambda r: Cell(f"{r['gpus']}x{r['replicas']}" if r["replicas"] > 1 else str(r["gpus"])),
         {"drop": 5}),
        ("attempt", "ATTEMPT", lambda r: Cell(str(max((a["n"] for a in r["attempts"]), default=0))), {"drop": 1}),
        ("restarts", "RESTARTS", lambda r: Cell(str(r["restarts"] + r["failures"])), {"drop": 4}),
        ("age", "AGE", lambda r: Cell(ago(_ts(r["created_at"]), now).replace(" ago", "")), {"drop": 2}),
        ("created_at", "CREATED", None, {"wide": True}),
        ("reason_code", "REASON CODE", None, {"wide": True}),
        ("reason", "REASON", lambda r: Cell("" if r["state"] == "running" and r["reason_code"] == "running"
                                            and r["replicas"] == 1 else r["reason"])),
    ], output=fmt, empty="no jobs yet")
    warn_unsupervised(db_path)


def _ts(value: str | None) -> float | None:
    from datetime import datetime
    return None if value is None else datetime.fromisoformat(value).timestamp()


@describe_app.command("job")
def describe_job(name: str, fleet_path: Optional[Path] = FleetOption, as_json: bool = JsonOption,
                 output: Optional[str] = OutputOption) -> None:
    """Spec, state, reason, every attempt, and the job's events.

    Example: gridctl describe job llama-serve -f fleet.yaml
    """
    from ..store import queries
    fmt = output_format(as_json, output)
    db_path = store_path(fleet_path)
    if not db_path.exists():
        raise NotFoundError(f"no job named {name}: no state recorded yet")
    conn = open_store(db_path)
    try:
        job = queries.get_job(conn, name)
        if job is None:
            known = ", ".join(list(queries.load_jobs(conn))[:20]) or "none"
            raise NotFoundError(f"no job named {name} (known: {known})")
        attempts = queries.load_attempts(conn, jobs=[name])
        events = queries.job_events(conn, name)
    finally:
        conn.close()
    if fmt in ("json", "yaml", "name"):
        out = job_json(job, attempts)
        out["spec"] = job.spec
        out["events"] = [{"time": iso(e.time), "kind": e.kind, "severity": e.severity, "node": e.node,
                          "job": e.job, "message": e.message} for e in events]
        dump([out], fmt)
        return
    _show_job(job, attempts, events)


RECOVERY_DURATIONS = ("backoff", "max_backoff", "hang_timeout", "unreachable_grace", "max_duration", "pending_timeout")


def _show_job(job, attempts, events) -> None:
    spec = job.spec
    command = spec.get("command")
    fields = [
        ("Job", f"{job.name}  class {spec.get('class')}, {spec.get('gpus')} GPU(s)"
         + (f" x {spec.get('replicas')} replicas" if spec.get("replicas", 1) > 1 else "")),
        ("State", [cell(job.state.value, JOB_STYLE), Cell(f"  {job.reason}")]),
        ("Created", f"{iso(job.created_at)} ({duration(max(0.0, time.time() - job.created_at))} ago)"),
        ("Command", command if isinstance(command, str) else " ".join(command)),
        ("Counters", f"{job.attempts_made} attempts, {job.restarts} node-failure requeues, "
                     f"{job.failures} process failures"),
    ]
    recovery = {k: v for k, v in (spec.get("recovery") or {}).items() if v not in (None, [])}
    if recovery:
        fields.append(("Recovery", ", ".join(f"{k} {duration(v) if k in RECOVERY_DURATIONS else v}"
                                             for k, v in recovery.items())))
    print_fields(fields)
    section("Attempts")
    table([_attempt_json(a) for a in attempts], [
        ("n", "#", None), ("replica", "REPLICA", None), ("node", "NODE", None),
        ("state", "STATE", lambda r: cell(r["state"], ATTEMPT_STYLE)),
        ("gpus", "GPUS", lambda r: Cell(str(len(r["gpus"])))),
        ("started_at", "STARTED", None), ("ended_at", "ENDED", None),
        ("ran", "RAN", lambda r: Cell(_ran(r))),
        ("exit_code", "EXIT", None), ("reason", "REASON", None),
    ])
    print_events(events)


def _ran(r: dict) -> str:
    if r["started_at"] is None:
        return "-"
    end = _ts(r["ended_at"]) or time.time()
    return duration(max(0.0, end - _ts(r["started_at"])))


@app.command()
def logs(
    job_name: str = typer.Argument(..., metavar="JOB"),
    fleet_path: Optional[Path] = FleetOption,
    attempt_n: Optional[int] = typer.Option(None, "--attempt", help="Attempt number (default: the live or latest one)."),
    replica: Optional[int] = typer.Option(None, "--replica", min=0, help="The live or latest attempt of this replica."),
    follow: bool = typer.Option(False, "-F", "--follow", help="Keep printing until the attempt ends (-f is --fleet)."),
    only_stdout: bool = typer.Option(False, "--stdout", help="Only stdout, as written (no markers)."),
    only_stderr: bool = typer.Option(False, "--stderr", help="Only stderr, as written (no markers)."),
    tail: Optional[int] = typer.Option(None, "--tail", min=0, metavar="N", help="Only the last N lines of each stream."),
) -> None:
    """Print an attempt's stdout and stderr from its node, each line marked with its stream.

    Example: gridctl logs llama-serve -f fleet.yaml --replica 1 --tail 100 -F
    """
    from ..errors import GridctlError
    from ..launcher import log_command
    from ..reconcile.observe import Transports, take_inventory
    if fleet_path is not None and not fleet_path.exists():
        raise ConfigError(f"-f {fleet_path}: no such fleet file (-f is --fleet, as in every command; "
                          "to follow logs use -F/--follow)")
    stream = "stdout" if only_stdout and not only_stderr else "stderr" if only_stderr and not only_stdout else "both"
    fleet, db_path = load(fleet_path)
    chosen = _log_attempt(db_path, job_name, attempt_n, replica)
    inventory = take_inventory(fleet, db_path.parent)
    node = next((n for n in inventory.nodes if n.name == chosen.node), None)
    if node is None:
        raise NotFoundError(f"attempt {chosen.n} ran on {chosen.node}, which is no longer in the fleet")
    command = log_command(node.work_dir, chosen.id, stream, follow, tail)
    transports = Transports(keep=False)
    try:
        transport = transports.for_target(node.target)
        code = transport.stream(node.target, command, sys.stdout.buffer, timeout=None if follow else 60.0)
    except GridctlError as e:
        raise GridctlError(f"{chosen.node}: {e}") from None
    except KeyboardInterrupt:
        code = 0
    finally:
        transports.close()
    if code not in (0, None):
        err_console.print(f"no {'output' if stream == 'both' else stream} for attempt {chosen.n} on {chosen.node} "
                          "(cleaned up, or never written)", markup=False)
        raise typer.Exit(1)


def _log_attempt(db_path: Path, job_name: str, attempt_n: int | None, replica: int | None):
    """The attempt `logs` reads: the one asked for, else the live or latest one (of the replica)."""
    from ..store import queries
    if not db_path.exists():
        raise NotFoundError(f"no job named {job_name}: no state recorded yet")
    conn = open_store(db_path)
    try:
        if queries.get_job(conn, job_name) is None:
            raise NotFoundError(f"no job named {job_name}")
        attempts = queries.load_attempts(conn, jobs=[job_name])
    finally:
        conn.close()
    if not attempts:
        raise NotFoundError(f"job {job_name} has no attempts yet")
    if replica is not None:
        replicas = sorted({a.replica for a in attempts})
        attempts = [a for a in attempts if a.replica == replica]
        if not attempts:
            raise NotFoundError(f"job {job_name} has no replica {replica} (replicas: {', '.join(map(str, replicas))})")
    if attempt_n is not None:
        chosen = next((a for a in attempts if a.n == attempt_n), None)
        if chosen is None:
            raise NotFoundError(f"job {job_name} has no attempt {attempt_n}"
                                + (f" of replica {replica}" if replica is not None else "")
                                + f" (attempts: {', '.join(str(a.n) for a in attempts)})")
        return chosen
    from ..models import AttemptState
    live = [a for a in attempts if a.state in (AttemptState.RUNNING, AttemptState.STARTING)]
    return live[-1] if live else attempts[-1]


@app.command()
def cancel(job_name: str = typer.Argument(..., metavar="JOB"), fleet_path: Optional[Path] = FleetOption,
           wait: float = typer.Option(30.0, "--wait", help="Seconds to wait for a running reconciler.")) -> None:
    """Stop a job's live attempts; the job ends `cancelled`.

    Example: gridctl cancel train-1 -f fleet.yaml
    """
    from .. import ops
    fleet, db_path = load(fleet_path)
    now = ops.cancel(fleet, db_path, job_name, wait)
    if now.unchanged:
        say(safe(f"job {job_name} already {now.job.state.value}: {now.job.reason}"))
        return
    _show_job_line(now, "table")


@app.command()
def drain(node_name: str = typer.Argument(..., metavar="NODE"), fleet_path: Optional[Path] = FleetOption,
          reason: Optional[str] = typer.Option(None, "--reason", help="Why (shown in nodes and events)."),
          wait: float = typer.Option(30.0, "--wait", help="Seconds to wait for a running reconciler.")) -> None:
    """Cordon a node and move its jobs: services start elsewhere first, then stop here; batch requeues.

    Example: gridctl drain h100-a --reason "maintenance" -f fleet.yaml
    """
    from .. import ops
    fleet, db_path = load(fleet_path)
    left, note = ops.drain(fleet, db_path, node_name, reason, wait)
    if note:
        err_console.print(note, markup=False)
    if left:
        console.print(f"{node_name} draining; still there: " + ", ".join(f"{a.id} ({a.state.value})" for a in left),
                      markup=False)
    else:
        console.print(f"{node_name} drained: no live attempts left", markup=False)
