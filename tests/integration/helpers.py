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
