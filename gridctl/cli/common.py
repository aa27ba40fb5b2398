"""Options and helpers shared by the command modules: which fleet file, which store, which format.

`-f/--fleet`, `--json` and `-o/--output` are accepted before the subcommand too (the root callback in
cli/__init__ keeps them in the context); a command's own option wins. A new command gets this by
using FleetOption / JsonOption / OutputOption with `load` and `render.emit`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

FleetOption = typer.Option(None, "-f", "--fleet", help="Fleet spec (default: $GRIDCTL_FLEET, else ./fleet.yaml).")
JsonOption = typer.Option(False, "--json", help="Print a JSON array (stable interface, see README); same as -o json.")
OutputOption = typer.Option(None, "-o", "--output", metavar="FORMAT",
                            help="wide (more columns, nothing cut) | json | yaml | name (one per line).")
MetricsAddrOption = typer.Option(None, "--metrics-addr", metavar="HOST:PORT",
                                 help="Serve Prometheus metrics at http://HOST:PORT/metrics while running.")


def root_options() -> dict:
    """What was given before the subcommand (`gridctl -f fleet.yaml -o json nodes`); {} outside a CLI run."""
    try:
        from typer._click.globals import get_current_context   # typer >= 0.20 bundles its click
    except ImportError:
        from click import get_current_context
    ctx = get_current_context(silent=True)
    if ctx is None:
        return {}
    obj = ctx.find_root().obj
    return obj if isinstance(obj, dict) else {}


def load(fleet_path: Optional[Path]):
    """-> (fleet spec, store path). Raises ConfigError."""
    from ..spec import default_fleet_path, load_fleet, state_path
    from ..errors import ConfigError
    fleet_path = fleet_path or root_options().get("fleet")
    path = fleet_path or default_fleet_path()
    if fleet_path is None and not path.exists():
        raise ConfigError(f"{path}: file not found (pass -f FLEET.yaml or set $GRIDCTL_FLEET)")
    fleet = load_fleet(path)
    db_path = state_path(fleet)
    _warn_if_open_to_others(db_path.parent)
    return fleet, db_path


def store_path(fleet_path: Optional[Path]) -> Path:
    """The store a read command reads, from the spec's `fleet:` and `state:` alone (fleet_and_store)."""
    return fleet_and_store(fleet_path)[1]


def fleet_and_store(fleet_path: Optional[Path]) -> tuple[str, Path]:
    """-> (fleet name, store path), read from the spec's `fleet:` and `state:` alone, without building
    the whole validated spec (pydantic models of every provider: most of a read command's start-up).
    Anything unusual takes the full `load`, so a spec that cannot be read still gets its precise error;
    `gridctl validate` checks the rest."""
    import os
    import re
    from ..statepath import default_fleet_path, default_state_path
    path = fleet_path or root_options().get("fleet") or default_fleet_path()
    try:
        import yaml
        data = yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeError, ValueError, ImportError, yaml.YAMLError):
        return _full(fleet_path)
    name, state = (data.get("fleet"), data.get("state")) if isinstance(data, dict) else (None, None)
    # the name becomes a file name: the same rule as providers.schema.NAME_RE, which imports pydantic
    if not isinstance(name, str) or not re.match(r"^[a-z0-9][a-z0-9._-]{0,62}\Z", name) or \
            not isinstance(state, (str, type(None))):
        return _full(fleet_path)
    if state is not None:
        db_path = Path(os.path.expanduser(os.path.expandvars(state)))
        db_path = db_path if db_path.is_absolute() else Path(path).parent.resolve() / db_path
    else:
        db_path = default_state_path(name)
    _warn_if_open_to_others(db_path.parent)
    return name, db_path


def _full(fleet_path: Optional[Path]) -> tuple[str, Path]:
    fleet, db_path = load(fleet_path)
    return fleet.fleet, db_path


def _warn_if_open_to_others(state_dir: Path) -> None:
    """A state dir others may write lets them replace the store (and so what gridctl kills)."""
    import os
    import stat
    try:
        mode = os.stat(state_dir).st_mode
    except OSError:
        return
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        from .render import err_console
        err_console.print(f"warning: state dir {state_dir} is writable by others (mode {stat.S_IMODE(mode):o}): "
                          f"they could replace the store; chmod 700 {state_dir}", markup=False, soft_wrap=True)


def interval_seconds(interval: Optional[str], fleet) -> float:
    """--interval, else the spec's health.interval; a clear error for 0 or nonsense."""
    from ..errors import ConfigError
    from ..spec import parse_duration
    try:
        every = parse_duration(interval) if interval is not None else fleet.health.interval
    except ValueError as e:
        raise ConfigError(f"--interval: {e}") from None
    if every <= 0:
        raise ConfigError("--interval: must be more than 0")
    return every


def open_store(db_path: Path, *, create: bool = False):
    from ..store import connect
    return connect(db_path, create=create)


def node_json(node, max_temp: float | None = None) -> dict:
    """The documented JSON object for a stored node (nodes --json)."""
    from .render import iso
    return {
        "name": node.name, "pool": node.pool, "provider": node.provider, "host": node.host,
        "state": node.state.value, "cordoned": node.cordoned, "cordon_reason": node.cordon_reason or None,
        "health": node.health.value, "reason": node.reason, "findings": [f.to_json() for f in node.findings],
        "gpus_seen": node.gpus_seen, "gpus_expected": node.gpus_expected, "max_temp_c": max_temp,
        "last_seen": iso(node.last_seen), "state_since": iso(node.state_since),
        "instance_id": node.name if node.cloud else None, **_cloud_json(node),
    }


def _cloud_json(node) -> dict:
    from .render import iso
    facts = dict(node.cloud)
    launched = facts.get("launched_at")
    return {"instance_type": facts.get("instance_type"), "zone": facts.get("zone"),
            "spot": None if "spot" not in facts else facts["spot"] == "yes",
            "launched_at": iso(float(launched)) if launched else None}
