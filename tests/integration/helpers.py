"""Run the real gridctl console script and read its JSON."""

from __future__ import annotations

import json
import subprocess
import sys

GRIDCTL = [sys.executable, "-c", "from gridctl.cli import main; main()"]


def gridctl(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*GRIDCTL, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def gridctl_json(*args: str, env: dict | None = None) -> tuple[int, list[dict]]:
    res = gridctl(*args, "--json", env=env)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout)


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in rows}


def codes(row: dict) -> set[str]:
    return {f["code"] for f in row["findings"]}


def write_local_fleet(root, name: str, *, count: int = 2, gpus: int = 1, state_dir=None,
                      probe_timeout: str = "3s") -> "Path":
    """A `provider: local` fleet under root (nodes in root/nodes), its store in state_dir (default root)."""
    from pathlib import Path
    root = Path(root)
    path = root / "fleet.yaml"
    path.write_text(f"fleet: {name}\nstate: {Path(state_dir or root) / 'state.db'}\n"
                    f"health: {{probe_timeout: {probe_timeout}}}\n"
                    f"pools:\n  - name: sim\n    provider: local\n    count: {count}\n    dir: {root}/nodes\n"
                    f"    gpu: {{type: H100, count: {gpus}, memory_gb: 80}}\n")
    return path


def stop_attempts(root) -> None:
    """End the processes this fleet's attempts started, by the pids in their attempt dirs."""
    import os
    import signal
    from pathlib import Path
    from gridctl.launcher import local_attempt_pid
    for pid_file in Path(root).glob("**/attempts/*/pid"):
        pid = local_attempt_pid(pid_file.parent)     # never a pid since handed to someone else
        if pid is None:
            continue
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
