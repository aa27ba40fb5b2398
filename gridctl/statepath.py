"""Where a fleet's store lives (DESIGN section 8), in one place for `spec.state_path` and the read
commands' fast path (cli/common.store_path), which must not import the pydantic spec."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_path(fleet_name: str) -> Path:
    """$XDG_STATE_HOME/gridctl/<fleet>.db (default ~/.local/state), for a spec without `state:`."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "gridctl" / f"{fleet_name}.db"


def default_fleet_path() -> Path:
    """-f/--fleet, else $GRIDCTL_FLEET, else ./fleet.yaml (DESIGN section 8)."""
    return Path(os.environ.get("GRIDCTL_FLEET") or "fleet.yaml")
