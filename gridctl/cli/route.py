"""`gridctl route JOB --listen HOST:PORT`: the foreground router of a service job (gridctl/route/)."""

from __future__ import annotations

import enum
import shutil
from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import FleetOption, load


class Via(str, enum.Enum):
    builtin = "builtin"
    haproxy = "haproxy"


@app.command()
def route(
    job: str = typer.Argument(..., help="The service job whose ready replicas take the requests."),
    listen: str = typer.Option(..., "--listen", help="HOST:PORT to accept requests on."),
    via: Via = typer.Option(Via.builtin, "--via", help="builtin (an asyncio proxy) or haproxy (gridctl drives HAProxy)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the HAProxy configuration and exit."),
    connect_timeout: str = typer.Option("1s", "--connect-timeout", help="Try another replica when no connection within this."),
    try_timeout: str = typer.Option("2s", "--try-timeout",
                                    help="Try another replica when an idempotent request has no answer within this."),
    fleet_path: Optional[Path] = FleetOption,
) -> None:
    """Send requests to the job's ready replicas until Ctrl-C / SIGTERM (runs under systemd).

    Example: gridctl route llama-serve --listen 127.0.0.1:8000 -f fleet.yaml
    """
    from ..errors import ConfigError
    from ..route import Settings, check_free, parse_listen, service_readiness
    host, port = parse_listen(listen)
    if print_config and via is not Via.haproxy:
        raise ConfigError("--print-config: only --via haproxy has a configuration to print")
    _, db_path = load(fleet_path)
    settings = Settings(job=job, db_path=db_path, host=host, port=port,
                        connect_timeout_s=_seconds("--connect-timeout", connect_timeout),
                        try_timeout_s=_seconds("--try-timeout", try_timeout),
                        http_check=service_readiness(db_path, job))
    if via is Via.haproxy:
        from ..route import haproxy
        if print_config:
            typer.echo(haproxy.render_config(settings), nl=False)
            return
        if not shutil.which("haproxy"):
            raise ConfigError("--via haproxy: no haproxy on PATH (apt-get install haproxy), or use --via builtin")
        check_free(host, port)
        raise typer.Exit(haproxy.run(settings))
    check_free(host, port)
    from ..route import builtin
    raise typer.Exit(builtin.run(settings))


def _seconds(flag: str, text: str) -> float:
    from ..errors import ConfigError
    from ..spec import parse_duration
    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}") from None
    if seconds <= 0:
        raise ConfigError(f"{flag}: must be more than 0")
    return seconds
