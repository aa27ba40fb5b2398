#!/usr/bin/env python3
"""How fast the CLI answers: `gridctl --help` and every read command on a 500-node store (issue 14, item 7).

    python benchmarks/startup.py [--nodes 500] [--repeat 5] [--keep DIR]

Builds a real store: a `provider: local` fleet of N simulated nodes (4 GPUs each), jobs recorded with
gridctl's own `ops.record_job` (batch jobs that finish, services with a port, whole-node jobs), and
one real `gridctl reconcile` pass that probes every node and places the jobs. Then it times each command
as a fresh subprocess with stdout a pipe (plain output), `--repeat` times, and prints median / min / max.
It also lists which heavy modules a read command imports. It prints figures and asserts nothing.
Each command runs once untimed first; children run with bytecode caching on (PYTHONDONTWRITEBYTECODE
removed) as a user's install would, unless --no-bytecode.
Everything it starts is under a temporary directory, removed at the end (the services' processes are
killed by their recorded pids).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

GRIDCTL = [sys.executable, "-c", "from gridctl.cli import main; main()"]
HEAVY = ("paramiko", "aiohttp", "rich", "pydantic", "yaml", "boto3", "google", "prometheus_client", "asyncio")
TARGET_MS = 300
NO_BYTECODE = False   # --no-bytecode


def build(root: Path, nodes: int) -> Path:
    """A fleet file, its jobs and one reconcile pass over it; returns the fleet file."""
    from gridctl.jobspec import job_from_flags
    from gridctl.ops import record_job
    from gridctl.spec import load_fleet, state_path
    from integration.helpers import write_local_fleet
    path = write_local_fleet(root, "startup-bench", count=nodes, gpus=4, probe_timeout="30s")
    # a hook that takes nothing, so `events --undelivered` has a row per event
    path.write_text(path.read_text() + 'alerts:\n  - command: ["false"]\n    min_severity: info\n')
    fleet = load_fleet(path)
    db_path = state_path(fleet)
    jobs = ([{"name": f"batch-{i}", "class": "batch", "command": ["true"], "gpus": 1} for i in range(30)]
            + [{"name": f"svc-{i}", "class": "service", "command": ["sleep", "600"], "gpus": 1, "replicas": 2,
                "port": "auto"} for i in range(10)]
            + [{"name": f"whole-{i}", "class": "batch", "command": ["true"], "gpus": 4} for i in range(10)])
    for job in jobs:
        record_job(fleet, db_path, job_from_flags(job))
    started = time.monotonic()
    done = subprocess.run([*GRIDCTL, "reconcile", "-q", "-f", str(path)], capture_output=True, text=True,
                          env=_env(root), timeout=900)
    print(f"store: {nodes} nodes, {len(jobs)} jobs, one reconcile pass in {time.monotonic() - started:.1f}s "
          f"(exit {done.returncode})")
    if done.returncode != 0:
        print(done.stderr[-2000:])
    return path


def _env(root: Path) -> dict:
    """The children's environment: bytecode caching on, as for a user (PYTHONDONTWRITEBYTECODE=1 would
    recompile every gridctl module on every start); `--no-bytecode` keeps the caller's setting."""
    env = {**os.environ, "HOME": str(root), "XDG_STATE_HOME": str(root / "state"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if not NO_BYTECODE:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def time_command(args: list[str], root: Path, repeat: int, cmd: list[str] = GRIDCTL) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + sys, from the child's rusage) milliseconds of each run; stdout is a pipe."""
    walls, cpus = [], []
    subprocess.run([*cmd, *args], capture_output=True, env=_env(root))     # warm-up: bytecode and page cache
    for _ in range(repeat):
        t0 = time.perf_counter()
        child = subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(root))
        out, err = child.stdout.read(), child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((usage.ru_utime + usage.ru_stime) * 1000)
        if child.returncode not in (0, 1):
            print(f"  {' '.join(args)}: exit {child.returncode}: {err.decode()[-300:]}")
        del out
    return walls, cpus


def heavy_imports(args: list[str], root: Path) -> list[str]:
    probe = ("import sys\nsys.argv = ['gridctl', *sys.argv[1:]]\nfrom gridctl.cli import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, env=_env(root))
    return done.stderr.strip().splitlines()[-1:] or [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="Build the store in this directory and keep it.")
    parser.add_argument("--no-bytecode", action="store_true", help="Keep PYTHONDONTWRITEBYTECODE as it is.")
    opts = parser.parse_args()
    global NO_BYTECODE
    NO_BYTECODE = opts.no_bytecode
    root = opts.keep or Path(tempfile.mkdtemp(prefix="gridctl-startup-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        fleet = str(build(root, opts.nodes))
        commands = [["--help"], ["--version"], ["nodes", "-f", fleet], ["nodes", "-f", fleet, "-o", "wide"],
                    ["jobs", "-f", fleet], ["events", "-f", fleet], ["describe", "node", "sim-7", "-f", fleet],
                    ["describe", "job", "svc-0", "-f", fleet], ["endpoints", "-f", fleet],
                    ["nodes", "-f", fleet, "--json"], ["status", "-f", fleet], ["events", "--undelivered", "-f", fleet]]
        print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        print(f"\n{'command (stdout a pipe)':<34} {'median':>7} {'min':>7} {'max':>7} {'CPU':>7}   heavy modules imported")
        rows = [(" ".join(a if a != fleet else "F" for a in args), *time_command(args, root, opts.repeat), args)
                for args in commands]
        rows.append(("(python -c pass)", *time_command(["-c", "pass"], root, opts.repeat, [sys.executable]), None))
        for shown, walls, cpus, args in rows:
            verdict = "" if args is None or statistics.median(walls) < TARGET_MS else f"  (over {TARGET_MS} ms)"
            print(f"{shown:<34} {statistics.median(walls):>5.0f}ms {min(walls):>5.0f}ms {max(walls):>5.0f}ms "
                  f"{statistics.median(cpus):>5.0f}ms   {heavy_imports(args, root)[0] if args else ''}{verdict}")
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        from integration.helpers import stop_attempts
        stop_attempts(root)
        if opts.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
