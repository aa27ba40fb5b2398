"""Admin verbs on nodes: cordon, uncordon."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import NotFoundError
from . import app
from .common import FleetOption, load
from .render import console


@app.command()
def cordon(name: str, reason: str = typer.Option(None, "--reason", help="Why (shown in nodes and events)."),
           fleet_path: Optional[Path] = FleetOption) -> None:
    """Stop placing new work on a node. Running work stays.

    Example: gridctl cordon h100-a --reason "fan noise" -f fleet.yaml
    """
    from .. import ops
    _, db_path = load(fleet_path)
    node = ops.cordon(db_path, name, reason)
    console.print(f"{name} cordoned: {node.cordon_reason}", markup=False)


@app.command()
def uncordon(name: str, fleet_path: Optional[Path] = FleetOption) -> None:
    """Allow work on a node again; a quarantined node is released to suspect, then needs good probes.

    Example: gridctl uncordon h100-a -f fleet.yaml
    """
    from .. import ops
    _, db_path = load(fleet_path)
    console.print(f"{name}: {ops.release(db_path, name)}", markup=False)


@app.command()
def chaos(name: str = typer.Argument(..., metavar="NODE"),
          mode: str = typer.Argument(..., metavar="MODE",
                                     help="healthy | xid79 | ecc | driver | hang | missing-gpu | hot | row-remap | down"),
          fleet_path: Optional[Path] = FleetOption) -> None:
    """Change a simulated (`provider: local`) node's state to inject a fault, or heal it.

    Example: gridctl chaos sim-0 xid79 -f fleet.yaml
    """
    from providers.local import MODES, write_node
    from ..errors import ConfigError
    from ..reconcile.observe import take_inventory
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    fleet, db_path = load(fleet_path)
    inventory = take_inventory(fleet, db_path.parent)
    node = next((n for n in inventory.nodes if n.name == name), None)
    if node is None:
        known = ", ".join(n.name for n in inventory.nodes) or "none"
        raise NotFoundError(f"no node named {name} (known: {known})")
    if node.target.local_dir is None:
        raise ConfigError(f"{name} is a real node (pool {node.pool}, provider {node.provider}): "
                          "chaos only changes simulated `provider: local` nodes")
    pool = fleet.pool(node.pool)
    write_node(node.target.local_dir, name, gpus=pool.gpu.count, gpu_type=pool.gpu.type or "H100",
               memory_gb=pool.gpu.memory_gb, mode=mode)
    console.print(f"{name}: simulated state is now {mode}; the next pass will see it", markup=False)


@app.command()
def init(provider: str = typer.Option("local", "--provider", help="ssh | local | aws | gcp"),
         name: Optional[str] = typer.Option(None, "--name", help="Fleet name (default: this directory's name)."),
         force: bool = typer.Option(False, "--force", help="Overwrite an existing fleet.yaml."),
         path: Path = typer.Option(Path("fleet.yaml"), "--output", "-o", help="Where to write it.")) -> None:
    """Write a commented fleet.yaml for a provider; `gridctl validate` accepts it as written.

    Example: gridctl init --provider ssh --name prod-inference
    """
    import re
    from ..errors import ConfigError
    from ..templates import TEMPLATES, render
    if provider not in TEMPLATES:
        raise ConfigError(f"--provider: unknown provider {provider!r} (known: {', '.join(TEMPLATES)})")
    fleet_name = name or re.sub(r"[^a-z0-9._-]+", "-", Path.cwd().name.lower()).strip("-._")[:63] or "my-fleet"
    if not re.match(r"^[a-z0-9][a-z0-9._-]{0,62}$", fleet_name):
        fleet_name = "my-fleet"
    if path.exists() and not force:
        raise ConfigError(f"{path} exists: not overwriting it (use --force)")
    try:
        path.write_text(render(provider, fleet_name))
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
    console.print(f"wrote {path} ({provider} pool, fleet {fleet_name}); next: gridctl validate -f {path}", markup=False)
