#!/usr/bin/env python3
"""Benchmark serving under node faults: requests through `gridctl route` while a replica's node fails.

    python benchmarks/serving.py [--seconds 60] [--quick] [--via builtin,haproxy] [--faults xid79,blackhole,kill,drain]

A simulated fleet over a real sshd (tests/fleetsim.py; 3 nodes x 1 GPU) runs a 2-replica service
(`gridctl run --port auto --ready-http /health`, the replica gridctl/demo_replica.py), kept by
`gridctl reconcile --loop --interval 2s`. Per router (`gridctl route --via builtin|haproxy`) and per
fault, one row: a paced closed-loop load of ~100 GET /work per second (gridctl/loadgen.py)
runs for --seconds (default 60, --quick 15); a third of the way in one replica's node gets the
fault: `xid79` (the node's fake nvidia-smi reports XID 79), `blackhole` (iptables DROP of every TCP
packet to the node's address; root only, else skipped with a note), `kill` (SIGKILL to the
replica's process group, by the pid in its attempt dir), or `drain` (`gridctl drain NODE`). The row
ends no sooner than 5 s after the replacement is ready. Between rows the node is healed (fault
removed, `gridctl uncordon`) and the fleet waits for 2 ready replicas on ready nodes.

Per row it prints requests, failed requests, p50/p99 latency before / during (fault -> replacement
ready) / after the fault, the slowest request, and fault -> replacement ready as the store shows it
(what routers follow). It prints figures and never asserts timings. All traffic goes to 127.0.0.0/8.
Everything it starts is stopped by PID in finally blocks, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from failover import (GRIDCTL, Store, gridctl, kill_attempts, run_session, setup_fleet,  # noqa: E402
                      start_loop, stop_loop, wait_passes)
from gridctl.loadgen import Load, percentile  # noqa: E402
from sweep import can_blackhole, wait_sshd_idle  # noqa: E402

JOB = "web"
FAULTS = ("xid79", "blackhole", "kill", "drain")
VIAS = ("builtin", "haproxy")
RATE, WORKERS = 100.0, 8
TRY_S, CONNECT_S = 2.0, 1.0               # gridctl route's defaults: --try-timeout, --connect-timeout
READY_LIMIT_S = 60.0                      # a replacement not ready by then is reported as missing
STEADY_LIMIT_S = 120.0
REPLICA = REPO / "gridctl" / "demo_replica.py"


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


@dataclass
class Row:
    via: str
    fault: str
    node: str = ""
    samples: list = None
    t_fault: float = 0.0
    ready_s: float | None = None           # fault -> a new attempt of the replica ready in the store
    t_ready: float | None = None
    note: str = ""

    def window(self, lo: float, hi: float) -> list:
        return [s for s in self.samples if lo <= s.start < hi]

    def cells(self) -> list[str]:
        end = self.t_ready if self.t_ready is not None else float("inf")
        parts = [self.window(0, self.t_fault), self.window(self.t_fault, end), self.window(end, float("inf"))]
        lat = [[s.latency for s in p if s.ok] for p in parts]
        failed = sum(not s.ok for s in self.samples)
        slowest = max((s.latency for s in self.samples), default=None)
        p99 = percentile(lat[0], 99) or 0.0
        slow = sum(s.latency > p99 + 0.1 for s in self.samples)
        return [self.via, self.fault, self.node, str(len(self.samples)), str(failed),
                *(f"{ms(percentile(x, 50))} / {ms(percentile(x, 99))}" for x in lat), str(slow), ms(slowest),
                "-" if self.ready_s is None else f"{self.ready_s:.1f}", self.note]


# ---------------------------------------------------------------- the service and its state

def submit(fleet_path: Path) -> None:
    r = gridctl(fleet_path, "run", "--name", JOB, "--replicas", "2", "--gpus", "1", "--port", "auto",
                "--ready-http", "/health", "--", sys.executable, str(REPLICA))
    if r.returncode != 0:
        raise RuntimeError(f"gridctl run failed (rc {r.returncode}): {r.stderr.strip()[-500:]}")


def ready_attempts(store: Store) -> list:
    return [a for a in store.attempts() if a["job"] == JOB and a["state"] == "running" and a["ready"]]


def steady(store: Store) -> str:
    """'' when every node is ready (not cordoned, not draining) and both replicas have exactly one
    live attempt, ready, on two nodes; else why not."""
    bad = [f"{n}={r['state']}" for n, r in store.nodes().items()
           if r["state"] != "ready" or r["cordoned"] or r["draining"]]
    live = [a for a in store.attempts() if a["job"] == JOB and a["state"] in ("running", "starting", "silent")]
    ready = [a for a in live if a["state"] == "running" and a["ready"]]
    if bad or len(live) != 2 or len(ready) != 2 or len({a["node"] for a in ready}) != 2:
        return f"nodes {bad}; live {[(a['id'], a['state'], a['ready']) for a in live]}"
    return ""


def wait_steady(store: Store, limit: float) -> str:
    deadline = time.monotonic() + limit
    why = steady(store)
    while why and time.monotonic() < deadline:
        time.sleep(0.2)
        why = steady(store)
    return why


# ---------------------------------------------------------------- faults

class Faults:
    """Injects and heals one fault at a time; remembers its iptables rules to remove them."""

    def __init__(self, fleet, fleet_path: Path, store: Store, root: Path):
        self.fleet, self.fleet_path, self.store, self.root = fleet, fleet_path, store, root
        self.rules: list[list[str]] = []

    def inject(self, fault: str, node: str, attempt: str) -> None:
        if fault == "xid79":
            self.fleet.set_mode(node, "xid79", gpus=self.fleet.bench_gpus)
        elif fault == "blackhole":
            rule = ["INPUT", "-d", self.fleet.nodes[node]["host"], "-p", "tcp", "-j", "DROP"]
            subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
            self.rules.append(rule)
        elif fault == "kill":
            pid = int((self.root / "work" / node / "attempts" / attempt / "pid").read_text().strip())
            os.killpg(pid, signal.SIGKILL)
        elif fault == "drain":
            # the drain returns when a pass took it; the hand-over itself takes later passes
            subprocess.Popen([*GRIDCTL, "drain", "-f", str(self.fleet_path), node, "--reason", "benchmark"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                             cwd=REPO)

    def unblackhole(self) -> None:
        while self.rules:
            subprocess.run(["iptables", "-D", *self.rules.pop()], capture_output=True)

    def heal(self, fault: str, node: str) -> str:
        """Remove the fault, release the node, wait for a steady service; -> '' or why not steady."""
        self.unblackhole()
        if fault == "xid79":
            self.fleet.set_mode(node, "healthy", gpus=self.fleet.bench_gpus)
        deadline = time.monotonic() + STEADY_LIMIT_S
        released = False
        while time.monotonic() < deadline:
            row = self.store.nodes()[node]
            if row["state"] == "ready" and not row["cordoned"] and not row["draining"]:
                break
            # a pass that read the row before the release can write it back: release while held
            if row["cordoned"] or row["draining"] or (row["state"] == "quarantined" and
                                                       (row["needs_release"] or not released)):
                gridctl(self.fleet_path, "uncordon", node)
                released = True
                wait_passes(self.store, self.store.last_pass(), 2, 15.0)
                continue
            time.sleep(0.2)
        return wait_steady(self.store, max(1.0, deadline - time.monotonic()))


# ---------------------------------------------------------------- one row

def run_row(row: Row, faults: Faults, url: str, seconds: float, n: int) -> None:
    store = faults.store
    victim = sorted(ready_attempts(store), key=lambda a: a["replica"])[n % 2]
    row.node = victim["node"]
    newest = max(a["n"] for a in store.attempts() if a["job"] == JOB)
    load = Load(url, rate=RATE, workers=WORKERS, budget_s=seconds + READY_LIMIT_S + 30).start()
    t_start = time.monotonic()
    time.sleep(seconds / 3)
    row.t_fault = time.time()
    faults.inject(row.fault, row.node, victim["id"])
    while True:
        if row.t_ready is None:
            new = [a for a in ready_attempts(store) if a["replica"] == victim["replica"] and a["n"] > newest]
            if new:
                row.t_ready = time.time()
                row.ready_s = row.t_ready - row.t_fault
        elapsed = time.monotonic() - t_start
        if elapsed >= seconds and (row.t_ready is not None and time.time() - row.t_ready >= 5):
            break
        if elapsed >= seconds and time.time() - row.t_fault > READY_LIMIT_S:
            row.note = f"no ready replacement within {READY_LIMIT_S:g}s"
            break
        time.sleep(0.1)
    row.samples = load.stop()


# ---------------------------------------------------------------- main

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_router(fleet_path: Path, via: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([*GRIDCTL, "route", JOB, "-f", str(fleet_path), "--listen", f"127.0.0.1:{port}",
                             "--via", via], stdout=subprocess.DEVNULL, stderr=open(log, "ab"),
                            stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            time.sleep(1.0)               # one ready-set poll
            return proc, f"http://127.0.0.1:{port}/work"
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gridctl route --via {via} did not start: {log.read_text()[-500:]}")


def stop_router(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def table(rows: list[Row], seconds: float) -> None:
    print(f"\n== serving under faults: ~{RATE:g} GET/s closed loop over {WORKERS} connections, {seconds:g}s "
          f"per row, fault at {seconds / 3:.0f}s ==")
    head = ["router", "fault", "node", "requests", "failed", "p50/p99 ms before", "p50/p99 ms during",
            "p50/p99 ms after", "slower than p99 before + 100 ms", "slowest ms", "fault -> replacement ready s", "note"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r.cells() if r.samples is not None else
                                [r.via, r.fault, r.node or "-", *["-"] * 8, r.note]) + " |")
    print(f"\nduring = from the fault until a new attempt of the replica is ready in the store; goal: 0 failed "
          f"in every row; during a blackhole p99 <= p99 before + 100 ms and no request slower than "
          f"try_timeout + connect_timeout + p99 before ({TRY_S + CONNECT_S:g} s + p99 before)")
    for r in rows:
        for s in [s for s in (r.samples or []) if not s.ok][:3]:
            print(f"  failed ({r.via} {r.fault}) at +{s.start - r.t_fault:.2f}s: status {s.status} {s.error}")


def fleet_class():
    from fleetsim import SshFleet, node_ip

    class OwnBlock(SshFleet):
        """Node addresses in a block of their own: the test fleets of other runs on this machine use
        127.2.x.y, and a replica's `port: auto` is only free per address within one store."""

        net = 100 + os.getpid() % 100

        def next_ip(self) -> str:
            self._next += 1
            return node_ip(self._next, self.net)

    return OwnBlock


def bench(args, s: "Session") -> None:
    s.fleet = fleet_class()(s.root / "fleet")
    # one GPU per node: the two replicas are always on two nodes, and a replacement has one free node
    fleet_path = setup_fleet(s.fleet, s.root, 3, 1, "2s")
    submit(fleet_path)
    s.loop = start_loop(fleet_path, "2s", s.root / "loop.log")
    s.store = Store(Path(yaml.safe_load(fleet_path.read_text())["state"]))
    why = wait_steady(s.store, STEADY_LIMIT_S)
    if why:
        raise RuntimeError(f"the service is not steady: {why}")
    print(f"fleet: sshd on port {s.fleet.port}, nodes "
          f"{', '.join(n + ' ' + v['host'] for n, v in s.fleet.nodes.items())}; two replicas ready")
    faults = Faults(s.fleet, fleet_path, s.store, s.root)
    s.faults = faults
    rows, n = [], 0
    for via in args.via:
        if via == "haproxy" and not shutil.which("haproxy"):
            rows.append(Row(via, "-", note="skipped: haproxy is not installed"))
            continue
        s.router, url = start_router(fleet_path, via, s.root / f"route-{via}.log")
        for fault in args.faults:
            row = Row(via, fault)
            rows.append(row)
            if fault == "blackhole" and (why := can_blackhole()):
                row.note = f"skipped: needs root and iptables ({why})"
                continue
            run_row(row, faults, url, args.seconds, n)
            n += 1
            print(f"{via} {fault} on {row.node}: " + " | ".join(row.cells()[3:]))
            sys.stdout.flush()
            why = faults.heal(fault, row.node)
            if why:
                raise RuntimeError(f"not steady after healing {row.node}: {why}")
        stop_router(s.router)
        s.router = None
    table(rows, args.seconds)
    for via in args.via:
        log = s.root / f"route-{via}.log"
        if args.router_log and log.exists():
            print(f"\n-- gridctl route --via {via} stderr --\n{log.read_text(errors='replace')[-4000:]}")
    gridctl(fleet_path, "cancel", JOB, "--wait", "0")


@dataclass
class Session:
    root: Path
    fleet: object = None
    loop: subprocess.Popen | None = None
    router: subprocess.Popen | None = None
    store: Store | None = None
    faults: Faults | None = None

    def close(self) -> None:
        stop_router(self.router)
        if self.faults is not None:
            self.faults.unblackhole()
        if self.store is not None:
            self.store.close()
        if self.loop is not None:
            print(f"loop: {stop_loop(self.loop)}", file=sys.stderr)
        kill_attempts(self.root)
        if self.fleet is not None:
            self.fleet.stop()
            wait_sshd_idle(self.fleet, timeout=5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, help="load per row (default 60; --quick 15)")
    ap.add_argument("--quick", action="store_true", help="15 s per row")
    ap.add_argument("--via", default=",".join(VIAS), help="routers, comma-separated (default builtin,haproxy)")
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"faults, comma-separated (default {','.join(FAULTS)})")
    ap.add_argument("--router-log", action="store_true", help="print the routers' stderr at the end")
    args = ap.parse_args()
    args.seconds = args.seconds or (15.0 if args.quick else 60.0)
    args.via = [v for v in args.via.split(",") if v]
    args.faults = [f for f in args.faults.split(",") if f]
    bad = [v for v in args.via if v not in VIAS] + [f for f in args.faults if f not in FAULTS]
    if bad or not 5 <= args.seconds <= 600:
        ap.error(f"unknown router or fault {bad}, or --seconds outside 5..600")
    header = (f"gridctl serving benchmark  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {os.cpu_count()} CPUs, "
              f"Python {sys.version.split()[0]}; routers {','.join(args.via)}; faults {','.join(args.faults)}")
    return run_session("serving", header, lambda session: bench(args, session))

if __name__ == "__main__":
    sys.exit(main())
