"""Job lifecycle verbs: restart, delete, prune (the operations are in gridctl/ops.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ..textsafe import safe
from . import app
from .common import FleetOption, JsonOption, OutputOption, load
from .render import dump, output_format, say


@app.command()
def restart(job_name: str = typer.Argument(..., metavar="JOB"), fleet_path: Optional[Path] = FleetOption,
            wait: float = typer.Option(30.0, "--wait", help="Seconds to wait for a running reconciler."),
            as_json: bool = JsonOption, output: Optional[str] = OutputOption) -> None:
    """New attempts of the same spec (reason "restarted by user"): live copies stop first, then new
    ones start (break-before-make, services too); an ended job runs again.

    Example: gridctl restart web"""
    from .. import ops
    from .jobs import _show_job_line
    fmt = output_format(as_json, output)
    fleet, db_path = load(fleet_path)
    _show_job_line(ops.restart(fleet, db_path, job_name, wait), fmt)


@app.command()
def delete(job_name: str = typer.Argument(..., metavar="JOB"), fleet_path: Optional[Path] = FleetOption,
           force: bool = typer.Option(False, "--force", help="Cancel it first, and wait for its copies to be "
                                      "confirmed gone."),
           wait: float = typer.Option(30.0, "--wait", help="Seconds to wait for a running reconciler.")) -> None:
    """Remove an ended job with its attempts and events; its name is free again for `run`. Refused
    while a copy of it is not yet confirmed gone by its node (the kill list needs it).

    Example: gridctl delete nightly-eval --force"""
    from .. import ops
    fleet, db_path = load(fleet_path)
    job, note = ops.delete(fleet, db_path, job_name, force, wait)
    what = "cancelled and deleted" if note else f"deleted (was {job.state.value})"
    say(safe(f"job {job_name} {what}: {job.attempts_made} attempt(s) and its events removed; the name is free"))


@app.command()
def prune(older_than: str = typer.Option(..., "--older-than", help="e.g. 7d: ended jobs last changed, and events "
                                         "recorded, longer ago than this."),
          fleet_path: Optional[Path] = FleetOption, as_json: bool = JsonOption,
          output: Optional[str] = OutputOption) -> None:
    """Delete ended jobs (with their attempts and events) and events older than --older-than. A job
    whose copies are not yet confirmed gone by their node is kept. `retention:` in the fleet spec
    does the same in every pass. `-o name` prints the pruned jobs' names.

    Example: gridctl prune --older-than 7d"""
    from .. import ops
    from ..spec import parse_duration
    fmt = output_format(as_json, output)
    try:
        seconds = parse_duration(older_than)
    except ValueError as e:
        raise ConfigError(f"--older-than: {e}") from None
    _, db_path = load(fleet_path)
    done = ops.prune(db_path, seconds)
    if fmt == "name":
        dump([{"name": name} for name in done.jobs], fmt)
    elif fmt in ("json", "yaml"):
        dump([{"jobs": done.jobs, "events": done.events, "jobs_kept": done.kept}], fmt)
    else:
        say(safe(f"pruned {len(done.jobs)} ended job(s) and {done.events} event(s) older than {older_than}"
                 + (f"; kept {done.kept} whose copies are not yet confirmed gone" if done.kept else "")
                 + (f": {', '.join(done.jobs)}" if done.jobs else "")))
