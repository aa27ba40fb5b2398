#!/usr/bin/env python3
"""Benchmark gridctl's SSH sweep against a simulated fleet on loopback (tests/fleetsim.py).

    python benchmarks/sweep.py [--sizes 100,500] [--repeat 3] [--quick]

For each fleet size N it measures, as separate processes timed the same way (os.wait4 rusage):
  1. `gridctl probe -f fleet.yaml --json`: wall, CPU (user+sys), peak RSS, healthy count;
  2. a plain paramiko thread-pool baseline running the same probe (`--baseline-worker`);
  3. both again with 5% of the nodes blackholed (iptables DROP; needs root);
  3b. both again with 5% of the nodes showing a GPU fault (`--faults`: XID 79, a GPU off the bus);
  4. loop mode in-process: one Transports, one fresh sweep then reused sweeps, CPU per pass;
and once: start-up time of `gridctl --help` / `gridctl nodes` and what `import gridctl.cli` pulls in.

It prints figures and never asserts timings. All traffic goes to 127.0.0.0/8. Everything it starts
(sshd, iptables rules, temp dirs, child processes) is cleaned up in finally blocks, also on Ctrl-C.
See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import compileall
import ipaddress
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

GRIDCTL = [sys.executable, "-c", "from gridctl.cli import main; main()"]
CONNECT_TIMEOUT_S = 5.0         # --connect-timeout / --probe-timeout replace these two
PROBE_TIMEOUT_S = 15.0
FIRST_CONTACT = False            # --first-contact: empty known_hosts before every gridctl run
CONCURRENCY = 64                 # gridctl's default health.concurrency; the baseline uses the same
GPUS = 4
BLACKHOLE_FRACTION = 0.05
FAULT_MODE = "xid79"             # fleetsim's set_mode for the faults rows: XID 79 in the kernel log, one GPU gone
CHILD_LIMIT_S = 600              # watchdog: a child running longer than this is killed (and reported)
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")

_ADDR = re.compile(r"\b127(?:\.\d{1,3}){3}(?::\d+)?")   # node addresses in reasons, so like failures group
_children: set[subprocess.Popen] = set()   # running children, killed on the way out


# ---------------------------------------------------------------- small helpers

def secs(value) -> float:
    """"5s" / "1m" / 5 -> seconds (only what this benchmark's fleet files use)."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * unit[suffix]
    return float(text)


def med(values):
    return statistics.median(values) if values else float("nan")


def fmt_mm(values, spec=".2f") -> str:
    """median / max"""
    if not values:
        return "-"
    return f"{format(med(values), spec)} / {format(max(values), spec)}"


def cpu_busy() -> tuple[float, float]:
    """(busy jiffies, total jiffies) of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [float(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0.0)
    return sum(parts) - idle, sum(parts)


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def mem_available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def descendants(pid: int) -> list[int]:
    """PIDs of every process below `pid` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def pss_mib(pids: list[int]) -> float:
    """Proportional set size of these processes together (shared pages counted once, split)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total / 1024


def background_load(sample_s: float = 2.0) -> str:
    """How busy the machine is without us (other jobs skew every figure on a 2-core box)."""
    b0, t0 = cpu_busy()
    time.sleep(sample_s)
    b1, t1 = cpu_busy()
    others = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"sshd" in cmd and b"gridctl-bench-" not in cmd and b"-D" in cmd:
                others += 1
    load = os.getloadavg()
    return (f"machine {(b1 - b0) / max(1.0, t1 - t0) * 100:.0f}% busy over {sample_s:g}s, load average "
            f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
            + (f"; WARNING: {others} other sshd -D listener(s) running (another test fleet?)" if others else ""))


def wait_sshd_idle(fleet, timeout: float = 30.0) -> int:
    """Wait until the fleet's sshd has no session processes left; -> how many were left at the end."""
    if fleet._proc is None:
        return 0
    deadline = time.monotonic() + timeout
    while True:
        left = len(descendants(fleet._proc.pid))
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def run_child(argv: list[str], env: dict, timeout: float = CHILD_LIMIT_S) -> dict:
    """Run argv; -> rc, wall, cpu (user+sys of the child and what it waited for), peak RSS, output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy0, total0 = cpu_busy()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=REPO)
        _children.add(proc)
        killed = []
        watchdog = threading.Timer(timeout, lambda: (killed.append(1), proc.kill()))
        watchdog.daemon = True
        watchdog.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            watchdog.cancel()
            _children.discard(proc)
        wall = time.perf_counter() - t0
        busy1, total1 = cpu_busy()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        ncpu = os.cpu_count() or 1
        return {
            "rc": proc.returncode, "wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime,
            "cpu": ru.ru_utime + ru.ru_stime, "rss_mib": ru.ru_maxrss / 1024,
            # share of all cores busy during the run (client + sshd + probe scripts + anything else)
            "machine_busy": (busy1 - busy0) / max(1.0, total1 - total0) if total1 > total0 else float("nan"),
            "ncpu": ncpu, "killed": bool(killed),
            "stdout": out.read().decode("utf-8", "replace"), "stderr": err.read().decode("utf-8", "replace"),
        }


# ---------------------------------------------------------------- the baseline (runs in a child process)

def baseline_worker(fleet_path: str) -> None:
    """Plain paramiko: a 64-thread pool; per node connect, exec the probe, read everything, close.
    Prints one JSON object: counts and per-node durations."""
    from concurrent.futures import ThreadPoolExecutor

    import paramiko
    import yaml

    from gridctl.probe import ProbeBudget, probe_request

    spec = yaml.safe_load(Path(fleet_path).read_text())
    ssh = spec["ssh"]
    key = os.path.expanduser(ssh["key"])
    connect_timeout = secs(ssh.get("connect_timeout", 5))
    probe_timeout = secs(spec["health"].get("probe_timeout", 15))
    concurrency = int(spec["health"].get("concurrency", CONCURRENCY))
    nodes = [n for pool in spec["pools"] for n in pool["nodes"]]
    probe = probe_request(ProbeBudget(probe_timeout), "~/.gridctl")
    command, script = probe.command, probe.stdin
    banner_timeout = min(10.0, max(connect_timeout, 1.0))   # what gridctl's transport uses

    def one(node: dict) -> tuple[str, str, float]:
        t0 = time.monotonic()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(node["host"], node.get("port", 22), username=ssh.get("user", "root"), key_filename=key,
                           timeout=connect_timeout, banner_timeout=banner_timeout, auth_timeout=10.0,
                           look_for_keys=False, allow_agent=False)
            stdin, stdout, stderr = client.exec_command(command, timeout=probe_timeout)
            stdin.write(script)
            stdin.flush()
            stdin.channel.shutdown_write()
            out = stdout.read()
            stderr.read()
            rc = stdout.channel.recv_exit_status()
        except Exception as e:  # classify, do not crash the pool
            return node["name"], f"error:{type(e).__name__}", time.monotonic() - t0
        finally:
            client.close()
        # same sanity bar as a healthy gridctl row: complete output, nvidia-smi ok, every GPU row there
        mark = f"@{probe.nonce} "
        lines = out.decode("utf-8", "replace").splitlines()
        try:
            smi = lines.index(next(line for line in lines if line.startswith(mark + "nvidia-smi ")))
            rows = 0
            for line in lines[smi + 1:]:
                if line.startswith("@"):
                    break
                rows += 1
            ok = (rc == 0 and mark + "end" in lines and mark + "nvidia-smi rc=0" in lines[smi]
                  and rows == spec["pools"][0]["gpu"]["count"])
        except StopIteration:
            ok = False
        return node["name"], "ok" if ok else "bad-output", time.monotonic() - t0

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, nodes))
    outcome: dict[str, int] = {}
    for _, what, _ in results:
        outcome[what] = outcome.get(what, 0) + 1
    print(json.dumps({"nodes": len(nodes), "ok": outcome.get("ok", 0), "outcome": outcome,
                      "durations": [round(d, 3) for _, _, d in results]}))


# ---------------------------------------------------------------- measurements

def fraction(text: str) -> float:
    """"5%" / "0.05" -> 0.05."""
    text = text.strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a share of the nodes under 100%, got {text!r}")
    return value


def gridctl_probe(fleet_path: Path, env: dict, n: int) -> dict:
    r = run_child([*GRIDCTL, "probe", "-f", str(fleet_path), "--json"], env)
    r["healthy"], r["complete"], r["rows"], r["outcome"], r["node_s"] = 0, 0, 0, {}, []
    try:
        rows = json.loads(r["stdout"])
    except json.JSONDecodeError:
        r["outcome"] = {f"no JSON (rc {r['rc']}): {r['stderr'].strip()[-300:]!r}": n}
        return r
    r["rows"] = len(rows)
    # probed to the end with every GPU seen: the run's timing is valid even if a verdict is off
    r["complete"] = sum(1 for row in rows if row.get("last_seen") and row.get("gpus_seen") == row.get("gpus_expected"))
    for row in rows:
        what = row["health"] if row["health"] == "healthy" else f"{row['health']}: {_ADDR.sub('<addr>', row['reason'])[:70]}"
        r["outcome"][what] = r["outcome"].get(what, 0) + 1
        r["node_s"].append(row.get("probe_s") or 0.0)
    r["healthy"] = r["outcome"].get("healthy", 0)
    return r


def baseline_probe(fleet_path: Path, env: dict, n: int) -> dict:
    r = run_child([sys.executable, str(Path(__file__).resolve()), "--baseline-worker", str(fleet_path)], env)
    r["healthy"], r["complete"], r["rows"], r["outcome"], r["node_s"] = 0, 0, 0, {}, []
    try:
        doc = json.loads(r["stdout"].strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        r["outcome"] = {f"no JSON (rc {r['rc']}): {r['stderr'].strip()[-300:]!r}": n}
        return r
    r["rows"], r["healthy"], r["outcome"], r["node_s"] = doc["nodes"], doc["ok"], doc["outcome"], doc["durations"]
    r["complete"] = doc["ok"]
    return r


def rest_cpu(r: dict) -> float:
    """CPU seconds the rest of the machine used during a run: sshd, the probe scripts, anything else."""
    return max(0.0, r["machine_busy"] * r["ncpu"] * r["wall"] - r["cpu"])


def print_runs(title: str, runs: dict[str, list[dict]], n: int, expect_healthy: int, bound: float | None) -> None:
    print(f"\n== {title} ==")
    print(f"{'':20} {'wall s med/max':>16} {'CPU s med/max':>15} {'CPU ms/node':>11} {'user/sys s':>11} "
          f"{'RSS MiB max':>11} {'machine busy':>12} {'rest ms/node':>12} {'node s p50/max':>15}  healthy")
    for label, rs in runs.items():
        walls = [r["wall"] for r in rs]
        cpus = [r["cpu"] for r in rs]
        node_s = sorted(rs[-1]["node_s"]) if rs and rs[-1]["node_s"] else []
        healthy = ",".join(str(r["healthy"]) for r in rs)
        print(f"{label:20} {fmt_mm(walls):>16} {fmt_mm(cpus):>15} {med(cpus) / n * 1000:>11.2f} "
              f"{med([r['user'] for r in rs]):>5.2f}/{med([r['sys'] for r in rs]):<5.2f} "
              f"{max(r['rss_mib'] for r in rs):>11.0f} {med([r['machine_busy'] for r in rs]) * 100:>11.0f}% "
              f"{med([rest_cpu(r) for r in rs]) / n * 1000:>12.1f} "
              f"{(f'{med(node_s):.2f} / {node_s[-1]:.2f}' if node_s else '-'):>15}  "
              f"{healthy} of {n} (complete {','.join(str(r['complete']) for r in rs)}; want {expect_healthy})")
        shown: set[str] = set()
        for r in rs:
            bad = {k: v for k, v in r["outcome"].items() if k not in ("healthy", "ok")}
            if r["killed"]:
                print(f"  !! {label}: killed by the {CHILD_LIMIT_S}s watchdog")
            if r["complete"] != expect_healthy or r["rows"] != n:
                print(f"  !! {label}: NOT A VALID FIGURE: {r['rows']} rows, {r['complete']} probed completely, "
                      f"{r['healthy']} healthy; {bad}")
                if "Traceback" in r["stderr"]:
                    print("     " + r["stderr"].strip()[-800:].replace("\n", "\n     "))
            elif r["healthy"] != expect_healthy:
                print(f"  !! {label}: every expected probe completed (timing valid) but {expect_healthy - r['healthy']} "
                      f"verdict(s) not healthy: {bad}")
            elif bad and repr(bad) not in shown:
                shown.add(repr(bad))
                print(f"     {label} non-healthy (expected): {bad}")
            if bound is not None and r["wall"] > bound:
                print(f"  !! {label}: wall {r['wall']:.2f}s over the bound {bound:.1f}s")
    if "gridctl probe" in runs and "paramiko baseline" in runs:
        g, b = runs["gridctl probe"], runs["paramiko baseline"]
        print(f"{'gridctl / baseline':20} wall x{med([r['wall'] for r in g]) / med([r['wall'] for r in b]):.2f}, "
              f"CPU x{med([r['cpu'] for r in g]) / med([r['cpu'] for r in b]):.2f}, "
              f"RSS x{max(r['rss_mib'] for r in g) / max(r['rss_mib'] for r in b):.2f}")
    if bound is not None:
        print(f"{'bound':20} connect_timeout {CONNECT_TIMEOUT_S:g}s + probe_timeout {PROBE_TIMEOUT_S:g}s + 2s = "
              f"{bound:.1f}s; worst wall: " + ", ".join(f"{k} {max(r['wall'] for r in v):.2f}s" for k, v in runs.items()))
    sys.stdout.flush()


def with_fault(items: list, put, take, *config):
    """probe_config(*config) with put(x) done for every x of items, and take(x) after, whatever happens."""
    for x in items:
        put(x)
    try:
        return probe_config(*config)
    finally:
        for x in items:
            take(x)


def probe_config(fleet, fleet_path: Path, env: dict, n: int, repeat: int, expect_healthy: int,
                 title: str, bound: float | None) -> dict:
    runs: dict[str, list[dict]] = {"gridctl probe": [], "paramiko baseline": []}
    for _ in range(repeat):
        # alternate, so slow drift of the machine hits both alike
        for label, fn in (("gridctl probe", gridctl_probe), ("paramiko baseline", baseline_probe)):
            if FIRST_CONTACT:
                fleet.known_hosts.write_text("")   # the baseline pins nothing (AutoAddPolicy, no file)
            left = wait_sshd_idle(fleet)
            if left:
                print(f"  note: {left} sshd session processes still alive before {label}")
            runs[label].append(fn(fleet_path, env, n))
    print_runs(title, runs, n, expect_healthy, bound)
    return runs


def loop_mode(fleet, fleet_path: Path, n: int, repeat: int, passes: int, idle_s: float) -> dict:
    """In-process: one Transports per repeat; one fresh sweep, then `passes` reused sweeps."""
    from gridctl.health import classify
    from gridctl.reconcile.observe import Transports, sweep, take_inventory
    from gridctl.spec import load_fleet, state_path

    spec = load_fleet(fleet_path)
    inventory = take_inventory(spec, state_path(spec).parent)
    nodes = inventory.nodes
    fresh, reused, idle, snapshots = [], [], [], []
    for _ in range(repeat):
        wait_sshd_idle(fleet)
        transports = Transports()
        try:
            for p in range(1 + passes):
                b0, tot0 = cpu_busy()
                c0, t0 = self_cpu(), time.perf_counter()
                obs = sweep(nodes, transports, probe_timeout=spec.health.probe_timeout,
                            concurrency=spec.health.concurrency)
                wall, cpu = time.perf_counter() - t0, self_cpu() - c0
                b1, tot1 = cpu_busy()
                busy = (b1 - b0) / max(1.0, tot1 - tot0)
                healthy = sum(classify(obs[x.name], x.expect).health.value == "healthy" for x in nodes)
                complete = sum(1 for x in nodes if obs[x.name].complete and len(obs[x.name].gpus) == x.expect.gpus)
                (fresh if p == 0 else reused).append({"wall": wall, "cpu": cpu, "healthy": healthy, "complete": complete, "busy": busy,
                                                      "bad": _loop_bad(obs, nodes, classify)})
            # idle: connections open, nothing to do (what --loop costs between passes)
            c0, t0 = self_cpu(), time.perf_counter()
            time.sleep(idle_s)
            idle.append((self_cpu() - c0) / (time.perf_counter() - t0))
            sshd = descendants(fleet._proc.pid)
            with open("/proc/self/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            snapshots.append({"sshd_procs": len(sshd), "sshd_pss_mib": pss_mib(sshd),
                              "self_rss_mib": int(status["VmRSS"].split()[0]) / 1024,
                              "threads": int(status["Threads"]), "mem_available_mib": mem_available_mib()})
        finally:
            transports.close()
    print(f"\n== loop mode, N={n}: in-process sweep() with one Transports: 1 fresh pass + {passes} reused, "
          f"x{repeat} ==")
    print(f"{'':14} {'wall s med/max':>16} {'CPU s med/max':>15} {'CPU ms/node':>11} {'machine busy':>12}  healthy")
    for label, rs in (("fresh", fresh), ("reused", reused)):
        cpus = [r["cpu"] for r in rs]
        print(f"{label:14} {fmt_mm([r['wall'] for r in rs]):>16} {fmt_mm(cpus, '.3f'):>15} "
              f"{med(cpus) / n * 1000:>11.2f} {med([r['busy'] for r in rs]) * 100:>11.0f}%  "
              f"{','.join(str(r['healthy']) for r in rs)} of {n}")
        for r in rs:
            if r["complete"] != n:
                print(f"  !! {label}: NOT A VALID FIGURE: {r['complete']} of {n} probed completely; {r['bad']}")
            elif r["healthy"] != n:
                print(f"  !! {label}: all {n} probes completed (timing valid) but {n - r['healthy']} verdict(s) "
                      f"not healthy: {r['bad']}")
    ratio = med([r["cpu"] for r in reused]) / med([r["cpu"] for r in fresh])
    print(f"{'reused/fresh':14} CPU ratio {ratio:.3f} (goal < 0.1)")
    print(f"{'idle':14} {n} open connections, no pass running: {med(idle) * 100:.1f}% of one core "
          f"(median over {len(idle)} x {idle_s:g}s)")
    s = snapshots[-1]
    print(f"{'memory':14} sshd processes {s['sshd_procs']}, their PSS {s['sshd_pss_mib']:.0f} MiB; "
          f"this process RSS {s['self_rss_mib']:.0f} MiB, {s['threads']} threads; "
          f"MemAvailable {s['mem_available_mib'] / 1024:.1f} GiB")
    sys.stdout.flush()
    return {"fresh": fresh, "reused": reused, "ratio": ratio, "idle": idle, "snapshot": s}


def _loop_bad(obs: dict, nodes: list, classify) -> dict:
    bad: dict[str, int] = {}
    for x in nodes:
        v = classify(obs[x.name], x.expect)
        if v.health.value != "healthy":
            key = f"{v.health.value}: {_ADDR.sub('<addr>', v.reason)[:70]}"
            bad[key] = bad.get(key, 0) + 1
    return bad


def startup(fleet_path: Path, env: dict, runs: int) -> dict:
    print("\n== start-up ==")
    out = {}
    for label, argv in (("python -c pass", [sys.executable, "-c", "pass"]),
                        ("gridctl --help", [*GRIDCTL, "--help"]),
                        (f"gridctl nodes -f ({fleet_path.parent.name})", [*GRIDCTL, "nodes", "-f", str(fleet_path)])):
        rs = [run_child(argv, env) for _ in range(runs)]
        bad = [r for r in rs if r["rc"] != 0]
        out[label] = rs
        print(f"{label:36} wall ms med/max {fmt_mm([r['wall'] * 1000 for r in rs], '.0f'):>11}   "
              f"CPU ms med {med([r['cpu'] for r in rs]) * 1000:.0f}   RSS MiB {max(r['rss_mib'] for r in rs):.0f}"
              + (f"   !! rc {bad[0]['rc']}: {bad[0]['stderr'].strip()[-200:]}" if bad else ""))
    # what importing the CLI (and every command module, and the probe path) drags in
    check = ("import sys, time\n"
             "t=time.perf_counter(); import gridctl.cli; t1=time.perf_counter()\n"
             "import gridctl.cli.admin, gridctl.cli.fleetcmds, gridctl.cli.nodes, gridctl.cli.render, gridctl.cli.common\n"
             "heavy=('boto3','botocore','google','googleapiclient','paramiko','cryptography','pydantic','yaml','rich','sqlite3')\n"
             "cli={h: any(m==h or m.startswith(h+'.') for m in sys.modules) for h in heavy}\n"
             "import gridctl.reconcile, gridctl.reconcile.observe, providers, providers.static\n"
             "full={h: any(m==h or m.startswith(h+'.') for m in sys.modules) for h in heavy}\n"
             "import json; print(json.dumps({'import_s': t1-t, 'cli': cli, 'probe_path': full, 'modules': len(sys.modules)}))\n")
    r = run_child([sys.executable, "-c", check], env)
    try:
        doc = json.loads(r["stdout"].strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        print(f"import check failed: {r['stderr'][-500:]}")
        return out
    out["imports"] = doc
    print(f"{'import gridctl.cli (in-process clock)':36} {doc['import_s'] * 1000:.0f} ms, {doc['modules']} modules "
          "after the probe path too")
    print(f"{'after import gridctl.cli + commands':36} " + ", ".join(f"{k}={'YES' if v else 'no'}" for k, v in doc["cli"].items()))
    print(f"{'after the probe path (observe, static)':36} " + ", ".join(f"{k}={'YES' if v else 'no'}" for k, v in doc["probe_path"].items()))
    # -X importtime: cumulative microseconds per top-level import, median over runs
    cumul: dict[str, list[int]] = {}
    for _ in range(runs):
        r = run_child([sys.executable, "-X", "importtime", "-c", "import gridctl.cli"], env)
        for line in r["stderr"].splitlines():
            if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
                continue
            _self_us, cum_us, name = line.split(":", 1)[1].split("|", 2)
            name = name.rstrip()[1:]          # one space after the bar; more means a nested import
            cumul.setdefault(name, []).append(int(cum_us))
    cli = med(cumul.get("gridctl.cli", []))
    out["importtime_gridctl_cli_ms"] = cli / 1000
    print(f"{'-X importtime gridctl.cli cumulative':36} {cli / 1000:.0f} ms (median of {runs}); biggest top-level pieces:")
    tops = sorted(((med(v), k) for k, v in cumul.items() if not k.startswith(" ")), reverse=True)[:8]
    print("    " + ", ".join(f"{k} {v / 1000:.0f} ms" for v, k in tops))
    sys.stdout.flush()
    return out


def profile_probe(fleet_path: Path, env: dict, out_dir: Path, seconds_hint: str) -> None:
    """One extra `gridctl probe` under py-spy (all threads, idle excluded): top frames by own samples."""
    spy = shutil.which("py-spy")
    if spy is None:
        print("\n(profile skipped: py-spy not installed; pip install py-spy)")
        return
    raw = out_dir / "probe.pyspy.txt"
    argv = [spy, "record", "--nonblocking", "--format", "raw", "--rate", "200", "-o", str(raw), "--",
            *GRIDCTL, "probe", "-f", str(fleet_path), "--json"]
    r = run_child(argv, env)
    if not raw.exists():
        print(f"\n(profile failed: {r['stderr'][-300:]})")
        return
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = empty = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.strip().rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        n = int(count)
        if not frames:          # no Python stack in the sample (py-spy could not read one): not counted
            empty += n
            continue
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    if not total:
        print(f"\n(profile: no samples with a stack; {empty} without)")
        return
    print(f"\n== py-spy on one `gridctl probe` ({seconds_hint}): wall {r['wall']:.1f}s, {total} samples with a stack "
          f"at 200 Hz ({empty} without, not counted), all threads, idle excluded; on a saturated machine "
          "runnable-but-waiting threads count as busy, so read shares, not seconds ==")
    print("top own (where CPU is spent):")
    for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {c / total * 100:5.1f}%  {f}")
    print("top inclusive, gridctl/paramiko/cryptography frames:")
    shown = 0
    for f, c in sorted(incl.items(), key=lambda kv: -kv[1]):
        if any(s in f for s in ("gridctl", "paramiko", "cryptography", "providers")):
            print(f"  {c / total * 100:5.1f}%  {f}")
            shown += 1
            if shown >= 20:
                break
    sys.stdout.flush()


# ---------------------------------------------------------------- setup

def setup_fleet(fleet, max_n: int):
    """Start the sshd of `fleet` (made by the caller, so its finally can stop a half-started one) and add nodes."""
    fleet.start()
    for i in range(max_n):
        fleet.add_node(f"n{i:04d}", fleet.next_ip(), gpus=GPUS)
    # pin the host key for every node up front: the steady state of a fleet gridctl has seen before
    if FIRST_CONTACT:
        return fleet
    host_pub = Path(str(fleet.host_key) + ".pub").read_text().split()
    with open(fleet.known_hosts, "a") as f:
        for node in fleet.nodes.values():
            f.write(f"[{node['host']}]:{node['port']} {host_pub[0]} {host_pub[1]}\n")
    return fleet


def write_fleet(fleet, root: Path, n: int) -> Path:
    names = list(fleet.nodes)[:n]
    for name in names:
        if ipaddress.ip_address(fleet.nodes[name]["host"]) not in LOOPBACK:
            raise SystemExit(f"refusing: node {name} at {fleet.nodes[name]['host']} is outside 127.0.0.0/8")
    d = root / f"fleet-{n}"
    d.mkdir(parents=True, exist_ok=True)
    return fleet.write_fleet(
        d / "fleet.yaml", nodes=names, gpus=GPUS, fleet=f"bench{n}",
        health={"probe_timeout": f"{PROBE_TIMEOUT_S:g}s", "concurrency": CONCURRENCY},
        ssh={"user": "root", "key": str(fleet.client_key), "host_key_policy": "accept-new",
             "known_hosts": str(fleet.known_hosts), "connect_timeout": f"{CONNECT_TIMEOUT_S:g}s"})


def can_blackhole() -> str | None:
    """None when iptables rules can be added here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("iptables"):
        return "iptables not installed"
    r = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"iptables unusable: {r.stderr.strip()[:200]}"
    return None


def spread(n: int, k: int) -> list[int]:
    return sorted({int((j + 0.5) * n / k) for j in range(k)})


def _raise(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    global CONNECT_TIMEOUT_S, PROBE_TIMEOUT_S, FIRST_CONTACT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", help="fleet sizes, comma-separated (default 100,500; --quick: 20)")
    ap.add_argument("--repeat", type=int, help="runs per configuration (default 3; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="small and once: a smoke test of the benchmark itself")
    ap.add_argument("--passes", type=int, default=3, help="reused passes in loop mode (default 3)")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds to measure idle CPU in loop mode (default 5)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: startup,probe,blackhole,faults,loop")
    ap.add_argument("--faults", type=fraction, default=0.05, metavar="SHARE",
                    help="share of nodes given a GPU fault (XID 79) in the faults rows, e.g. 5%% (default; 0: no rows)")
    ap.add_argument("--profile", action="store_true", help="also run one gridctl probe at the largest N under py-spy")
    ap.add_argument("--profile-raw", metavar="PATH", help="with --profile: keep py-spy's raw stacks here")
    ap.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S,
                    help=f"fleet ssh.connect_timeout in seconds (default {CONNECT_TIMEOUT_S:g})")
    ap.add_argument("--probe-timeout", type=float, default=PROBE_TIMEOUT_S,
                    help=f"fleet health.probe_timeout in seconds (default {PROBE_TIMEOUT_S:g})")
    ap.add_argument("--first-contact", action="store_true",
                    help="no host key pinned before each gridctl run (accept-new pins them during the run)")
    ap.add_argument("--baseline-worker", metavar="FLEET", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.baseline_worker:
        baseline_worker(args.baseline_worker)
        return 0
    CONNECT_TIMEOUT_S, PROBE_TIMEOUT_S, FIRST_CONTACT = args.connect_timeout, args.probe_timeout, args.first_contact
    # an installed gridctl runs from cached bytecode; where PYTHONDONTWRITEBYTECODE is set (as on the box
    # these figures come from) every child would compile gridctl's modules from source, ~0.1 s of CPU a run
    for package in ("gridctl", "providers"):
        compileall.compile_dir(str(REPO / package), quiet=1)

    sizes = [int(s) for s in (args.sizes or ("20" if args.quick else "100,500")).split(",") if s.strip()]
    repeat = args.repeat or (1 if args.quick else 3)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    no_blackhole = can_blackhole()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(sizes) * 4 + 1024
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))

    # Ctrl-C / kill -INT must reach the finally below even when started in the background
    # (a non-interactive shell starts background jobs with SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)

    root = Path(tempfile.mkdtemp(prefix="gridctl-bench-"))
    fleet = None
    old_env = dict(os.environ)
    try:
        # children and this process see an empty home: no ~/.ssh/config, no agent, no real state
        (root / "home").mkdir()
        os.environ.update({"HOME": str(root / "home"), "XDG_STATE_HOME": str(root / "state"),
                           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        for var in ("SSH_AUTH_SOCK", "GRIDCTL_FLEET"):
            os.environ.pop(var, None)
        env = dict(os.environ)

        import paramiko
        print(f"gridctl sweep benchmark  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        print(f"machine: {os.cpu_count()} CPUs, MemAvailable {mem_available_mib() / 1024:.1f} GiB, "
              f"Python {sys.version.split()[0]}, paramiko {paramiko.__version__}, "
              f"{subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}")
        print(f"sizes {sizes}, repeat {repeat}, {GPUS} GPUs/node, concurrency {CONCURRENCY}, "
              f"connect_timeout {CONNECT_TIMEOUT_S:g}s, probe_timeout {PROBE_TIMEOUT_S:g}s, "
              f"{'first contact (no key pinned)' if FIRST_CONTACT else 'host keys pinned'}, "
              f"open-files limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")
        print(f"before start: {background_load()}")
        if no_blackhole and "blackhole" not in skip:
            print(f"note: blackhole rows skipped: {no_blackhole} (run as root with iptables)")

        t_setup = time.perf_counter()
        from fleetsim import SshFleet
        fleet = SshFleet(root / "fleet")
        setup_fleet(fleet, max(sizes))
        fleets = {n: write_fleet(fleet, root, n) for n in sizes}
        print(f"fleet: one sshd on port {fleet.port} for {max(sizes)} loopback addresses "
              f"({fleet.nodes['n0000']['host']} ...), set up in {time.perf_counter() - t_setup:.1f}s; work dir {root}")
        sys.stdout.flush()

        # warm-up (untimed): page cache, sshd, and a check that the whole thing works before the long part
        warm = gridctl_probe(fleets[min(sizes)], env, min(sizes))
        print(f"warm-up gridctl probe N={min(sizes)}: rc {warm['rc']}, {warm['healthy']} healthy, "
              f"{warm['wall']:.2f}s" + ("" if warm["healthy"] == min(sizes) else f"  !! {warm['outcome']}"))

        results: dict = {"startup": None, "probe": {}, "blackhole": {}, "faults": {}, "loop": {}}
        if "startup" not in skip:
            results["startup"] = startup(fleets[max(sizes)], env, 3 if args.quick else 5)
        bound = CONNECT_TIMEOUT_S + PROBE_TIMEOUT_S + 2.0
        for n in sizes:
            if "probe" not in skip:
                results["probe"][n] = probe_config(fleet, fleets[n], env, n, repeat, n,
                                                   f"probe, N={n}, all nodes up", bound)
            if "blackhole" not in skip and not no_blackhole:
                dead = spread(n, max(1, round(n * BLACKHOLE_FRACTION)))
                ips = [fleet.nodes[f"n{i:04d}"]["host"] for i in dead]
                results["blackhole"][n] = with_fault(
                    ips, fleet.blackhole, fleet.unblackhole, fleet, fleets[n], env, n, repeat, n - len(ips),
                    f"probe, N={n}, {len(ips)} blackholed (iptables DROP)", bound)
            if "faults" not in skip and args.faults > 0:
                sick = [f"n{i:04d}" for i in spread(n, max(1, round(n * args.faults)))]
                results["faults"][n] = with_fault(
                    sick, lambda name: fleet.set_mode(name, FAULT_MODE, gpus=GPUS),
                    lambda name: fleet.set_mode(name, "healthy", gpus=GPUS), fleet, fleets[n], env, n, repeat,
                    n - len(sick), f"probe, N={n}, {len(sick)} with a GPU fault ({FAULT_MODE})", bound)
            if "loop" not in skip:
                results["loop"][n] = loop_mode(fleet, fleets[n], n, repeat, args.passes, args.idle)
        if args.profile:
            n = max(sizes)
            wait_sshd_idle(fleet)
            profile_probe(fleets[n], env, root, f"N={n}, all up")
            if args.profile_raw and (root / "probe.pyspy.txt").exists():
                shutil.copy(root / "probe.pyspy.txt", args.profile_raw)
                print(f"(raw py-spy stacks kept at {args.profile_raw})")

        summary(results, sizes)
        print(f"\nafter: {background_load()}")
        return 0
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({str(e) or 'Ctrl-C'}): cleaning up", file=sys.stderr)
        return 130
    finally:
        for proc in list(_children):
            proc.kill()
        if fleet is not None:
            fleet.stop()            # iptables rules out, sshd stopped (by PID)
            wait_sshd_idle(fleet, timeout=5)
        os.environ.clear()
        os.environ.update(old_env)
        shutil.rmtree(root, ignore_errors=True)


def summary(results: dict, sizes: list[int]) -> None:
    print("\n== summary (median of repeats; max in brackets) ==")
    print("| N | configuration | client | wall s | CPU s | CPU ms/node | peak RSS MiB | healthy per run |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, label in (("probe", "all up"), ("blackhole", "5% blackholed"), ("faults", f"GPU faults ({FAULT_MODE})")):
        for n in sizes:
            runs = results[kind].get(n)
            if not runs:
                continue
            for client, rs in runs.items():
                walls, cpus = [r["wall"] for r in rs], [r["cpu"] for r in rs]
                print(f"| {n} | {label} | {client} | {med(walls):.2f} ({max(walls):.2f}) | {med(cpus):.2f} "
                      f"({max(cpus):.2f}) | {med(cpus) / n * 1000:.1f} | {max(r['rss_mib'] for r in rs):.0f} | "
                      f"{'/'.join(str(r['healthy']) for r in rs)} of {n} (complete {'/'.join(str(r['complete']) for r in rs)}) |")
    ratios = [(kind, label, n, med([r["cpu"] for r in results[kind][n]["gridctl probe"]])
               / med([r["cpu"] for r in results[kind][n]["paramiko baseline"]]))
              for kind, label in (("probe", "all up"), ("blackhole", "5% blackholed"), ("faults", f"GPU faults ({FAULT_MODE})"))
              for n in sizes if results[kind].get(n)]
    if ratios:
        print("\nclient CPU gridctl / baseline (median / median, same run; issue 13 asks <= 1.2): "
              + "; ".join(f"N={n} {label} x{ratio:.2f}" for _, label, n, ratio in ratios))
    for n in sizes:
        lp = results["loop"].get(n)
        if lp:
            f, r = lp["fresh"], lp["reused"]
            print(f"| {n} | loop, fresh pass | in-process sweep | {med([x['wall'] for x in f]):.2f} | "
                  f"{med([x['cpu'] for x in f]):.3f} | {med([x['cpu'] for x in f]) / n * 1000:.2f} | - | "
                  f"{'/'.join(str(x['healthy']) for x in f)} |")
            print(f"| {n} | loop, reused pass | in-process sweep | {med([x['wall'] for x in r]):.2f} | "
                  f"{med([x['cpu'] for x in r]):.3f} | {med([x['cpu'] for x in r]) / n * 1000:.2f} | - | "
                  f"{'/'.join(str(x['healthy']) for x in r)} |")
            print(f"| {n} | loop, reused/fresh CPU ratio | | | {lp['ratio']:.3f} | | | |")
            print(f"| {n} | loop, idle with {n} connections | | | {med(lp['idle']) * 100:.1f}% of a core | | | |")


if __name__ == "__main__":
    sys.exit(main())
