"""`gridctl metrics`: the fleet's Prometheus metrics once (stdout, or a textfile for node_exporter),
and the `--metrics-addr` server that `reconcile --loop` and `watch` start before their first pass."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ..textsafe import safe
from . import app
from .common import FleetOption, open_store, store_path
from .render import warn


@app.command()
def metrics(
    fleet_path: Optional[Path] = FleetOption,
    textfile: Optional[Path] = typer.Option(None, "--textfile", metavar="PATH",
                                            help="Write atomically to PATH (temp file beside it, then rename) "
                                                 "for node_exporter's textfile collector, instead of stdout."),
) -> None:
    """Print the fleet's Prometheus metrics once, from the store (for cron; a loop serves them with --metrics-addr).

    Example: gridctl metrics --textfile /var/lib/node_exporter/textfile/gridctl.prom
    """
    from ..metrics.exporter import exposition, store_registry, write_textfile
    db_path = store_path(fleet_path)
    open_store(db_path).close()        # no store yet, or one this gridctl cannot read: one clear line
    registry, collector = store_registry(db_path)
    try:
        if textfile is None:
            sys.stdout.buffer.write(exposition(registry))
            sys.stdout.flush()
            return
        if textfile.suffix != ".prom":
            warn(safe(f"note: node_exporter's textfile collector reads only *.prom files, not {textfile.name}"), "")
        write_textfile(textfile, registry)
    finally:
        collector.close()


def start_exporter(addr: Optional[str], db_path: Path, *, needs: Optional[str] = None):
    """The `--metrics-addr` server (listening when this returns), or None without the flag.
    `needs`: why this invocation cannot serve (it would end at once). Raises ConfigError, exit 2."""
    if addr is None:
        return None
    if needs:
        raise ConfigError(f"--metrics-addr: {needs}")
    from ..metrics.exporter import LoopExporter
    return LoopExporter(addr, db_path)
