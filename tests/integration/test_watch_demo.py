"""`gridctl demo`, `watch`, `chaos` and `init` through the real console script, as a user runs them.

Guards against: a demo that does not recover, crashes, or leaves its simulated jobs running; a
watch that draws once and freezes, ignores Ctrl-C, or prints a traceback; `--plain` / `--once` /
`--no-reconcile` not doing what they say; chaos reaching for a real node; init writing a spec that
validate refuses, or clobbering a file without --force.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from gridctl.templates import render as render_template
from helpers import GRIDCTL

PROVIDERS = ("ssh", "local", "aws", "gcp")
TITLE = re.compile(r"gridctl watch · fleet wt\s+(\d\d:\d\d:\d\d)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
EVENT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (info|warning|alert)\s+(\S+)\s+(.*)$")


# ---------------------------------------------------------------- helpers

@pytest.fixture
def env(tmp_path) -> dict:
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    e = dict(os.environ, HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "xdg"),
             TMPDIR=str(tmp_path / "tmp"), COLUMNS="120")
    e.pop("GRIDCTL_FLEET", None)
    return e


@pytest.fixture
def started(tmp_path):
    """Every process group a test starts; whatever is still there at the end is killed, and so are
    job attempts they left behind (their environment names a dir under this test's tmp_path)."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)
    for pid in job_pids():
        if alive(pid, tmp_path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def spawn(started: list, args, env: dict, **kw) -> subprocess.Popen:
    p = subprocess.Popen([*GRIDCTL, *map(str, args)], env=env, start_new_session=True, **kw)
    started.append(p)
    return p


def run(started: list, *args, env: dict, timeout: float = 60, cwd=None) -> subprocess.CompletedProcess:
    p = spawn(started, args, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def local_fleet(tmp_path: Path, *, state: str = "state.db") -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(f"fleet: wt\n"
                    f"state: {tmp_path / state}\n"
                    "health: {interval: 1s, probe_timeout: 3s}\n"
                    "pools:\n"
                    "  - name: sim\n"
                    "    provider: local\n"
                    "    count: 2\n"
                    f"    dir: {tmp_path / 'nodes'}\n"
                    "    gpu: {type: H100, count: 4, memory_gb: 80}\n")
    return path


def environ_of(pid: str | int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def job_pids() -> set[int]:
    """PIDs of processes started as gridctl job attempts (any test's, any demo's)."""
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and b"GRIDCTL_JOB=" in environ_of(p.name)}


def alive(pid: int, root: Path) -> bool:
    """Running (not a zombie) and one of this demo's attempts (its environment names the demo dir)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and str(root).encode() in environ_of(pid)


def demo_root(out: str) -> Path:
    first = out.splitlines()[0]
    m = re.match(r"demo: fleet of 3 simulated nodes in (\S+); jobs:", first)
    assert m, first
    return Path(m.group(1))


def faults_injected(out: str) -> dict[str, list[str]]:
    """'xid79 on sim-0' -> the jobs the demo said ran there."""
    found = {}
    for m in re.finditer(r"^demo: injected (\S+) on (\S+) \(running ([^)]*)\)$", out, re.M):
        found[f"{m.group(1)} on {m.group(2)}"] = m.group(3).split(", ")
    return found


def recovery_rows(out: str) -> list[list[str]]:
    """The Recovery table as the demo prints it through a pipe (plain columns, 3+ spaces apart, "-" for
    an empty cell): its header, then one list per row."""
    table = out.partition("\n")[2].partition("\nRecovery\n")[2].split("\nrouter (gridctl route")[0]
    assert not set(table) & set("│┃━─"), table          # plain text without a terminal
    return [re.split(r" {3,}", ln.strip()) for ln in table.splitlines() if ln.strip()]


def leftovers(root: Path, before: set[int], wait_s: float = 5.0) -> set[int]:
    """This demo's attempt processes still running after wait_s."""
    deadline = time.monotonic() + wait_s
    while True:
        left = {p for p in job_pids() - before if alive(p, root)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def nodes_json(started, fleet: Path, env: dict) -> dict[str, dict]:
    import json
    res = run(started, "nodes", "-f", fleet, "--json", env=env)
    assert res.returncode == 0, res.stderr
    return {row["name"]: row for row in json.loads(res.stdout)}


def jobs_of(started, fleet: Path, env: dict) -> list[dict]:
    import json
    res = run(started, "jobs", "-f", fleet, "--json", env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def events_of(started, fleet: Path, env: dict) -> list[dict]:
    import json
    res = run(started, "events", "-f", fleet, "--json", "--limit", "100000", env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


# ---------------------------------------------------------------- demo

def run_demo(started, env, *extra) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    res = run(started, "demo", "--duration", "35", "--plain", *extra, env=env, timeout=90)
    return res, time.monotonic() - t0


ROUTER_LINE = re.compile(r"^router \(gridctl route web\): (\d+) requests in \d+\.\ds, (\d+) failed; "
                         r"p50/p99 (\d+)/(\d+) ms, slowest (\d+) ms$", re.M)
LATENCY = re.compile(r"(\d+)/(\d+) ms")


def check_router_figures(res: subprocess.CompletedProcess, rows: list[list[str]], why: str) -> None:
    """Each fault's first row holds the router's figures (the other rows none); they agree with
    each other and with the run's totals line; every fault hit a node running a replica of web."""
    assert re.search(r"^demo: web is ready: ~40 requests/s through `gridctl route web` on "
                     r"http://127\.0\.0\.1:\d+/work$", res.stdout, re.M), why
    total = ROUTER_LINE.search(res.stdout)
    assert total, why
    requests, failed, p50, p99, slowest = map(int, total.groups())
    assert requests > 0 and 0 <= failed <= requests and p50 <= p99 <= slowest, why
    listed = sum(int(n) for n in re.findall(r"^  failed: (\d+) ", res.stdout, re.M))   # failures are named
    assert (listed > 0) == (failed > 0) and listed <= failed, why
    firsts = [r for i, r in enumerate(rows[1:]) if i == 0 or rows[i][0] != r[0]]
    assert [r[1] for r in firsts] == ["web", "web"], why
    for row in rows[1:]:
        if row in firsts:
            n, bad = int(row[5]), int(row[6])
            assert n > 0 and 0 <= bad <= n, (row, why)
            for cell in row[7:9]:
                m = LATENCY.fullmatch(cell)
                assert m and int(m.group(1)) <= int(m.group(2)), (row, why)
        else:
            assert row[5:] == ["-", "-", "-", "-"], (row, why)
    assert sum(int(r[5]) for r in firsts) <= requests, why
    assert sum(int(r[6]) for r in firsts) <= failed, why


def router_processes(root: Path) -> list[int]:
    """`gridctl route` processes of this demo (their command line names its fleet file)."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0") if p.name.isdigit() else []
        except OSError:
            continue
        if b"route" in argv and str(root / "fleet.yaml").encode() in argv:
            found.append(int(p.name))
    return found


def check_recovery_table(res: subprocess.CompletedProcess, wall: float, modes=("xid79", "down")) -> None:
    why = f"after {wall:.1f}s, rc {res.returncode}\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    assert res.returncode == 0, why
    assert "Traceback" not in res.stdout + res.stderr, why
    faults = faults_injected(res.stdout)
    assert [f.split(" on ")[0] for f in faults] == list(modes), why     # --fault, then the second fault
    rows = recovery_rows(res.stdout)
    assert rows[0] == ["FAULT", "JOB", "DETECTED AFTER", "RECOVERED AFTER", "STATE NOW", "REQUESTS", "FAILED",
                       "P50/P99 BEFORE", "P50/P99 DURING"], why
    expected = sorted((fault, job) for fault, jobs in faults.items() for job in jobs)
    assert sorted((r[0], r[1]) for r in rows[1:]) == expected, why
    for row in rows[1:]:
        assert re.fullmatch(r"\d+\.\ds", row[3]), (row, why)     # recovered, with a time
        assert row[4] == "running", (row, why)
    check_router_figures(res, rows, why)
    assert re.search(r"^every affected job recovered \(2 faults, \d+ job moves\)$", res.stdout, re.M), why
    assert f"({2} faults, {len(expected)} job moves)" in res.stdout, why
    assert "Jobs at the end" in res.stdout, why


def test_demo_recovers_every_affected_job_and_leaves_no_job_running(started, env):
    before = job_pids()
    res, wall = run_demo(started, env)
    check_recovery_table(res, wall)
    root = demo_root(res.stdout)
    assert not root.exists(), "without --keep the demo removes its fleet dir"
    left = leftovers(root, before)
    assert not left, f"demo attempt processes still running: {left}"
    assert router_processes(root) == [], "the demo's router outlived it"


def test_demo_keep_leaves_a_fleet_to_explore_with_its_jobs_cancelled_and_nothing_running(started, env, tmp_path):
    # down first: the replica it freezes must not keep its port from the replacements of the xid79 that follows
    res, wall = run_demo(started, env, "--keep", "--fault", "down")
    root = demo_root(res.stdout)
    try:
        check_recovery_table(res, wall, ("down", "xid79"))
        assert f"fleet kept in {root}" in res.stdout
        pid_files = sorted(root.glob("nodes/*/work/attempts/*/pid"))
        assert len(pid_files) >= 4 + 6, pid_files                # 4 first attempts + one per job move
        deadline = time.monotonic() + 5
        running = None
        while running != [] and time.monotonic() < deadline:
            running = [f for f in pid_files if alive(int(f.read_text().strip()), root)]
            time.sleep(0.2) if running else None
        assert running == [], f"attempts still running after the demo: {running}"
        assert router_processes(root) == [], "the demo's router outlived it"
        assert (root / "route.log").read_text().splitlines()[-1] == "stopped", "the router was stopped by SIGTERM"
        nodes = nodes_json(started, root / "fleet.yaml", env)
        assert sorted(nodes) == ["sim-0", "sim-1", "sim-2"]
        xid_node = next(f for f in faults_injected(res.stdout) if f.startswith("xid79")).split(" on ")[1]
        assert nodes[xid_node]["state"] == "quarantined", nodes[xid_node]
        assert "xid 79" in nodes[xid_node]["reason"]
        fleet = root / "fleet.yaml"
        # the demo ended its jobs through the normal cancel path, and said so
        assert re.search(r"^demo: cancelled etl, train, web \(--keep\): no job is left running; "
                         r"their processes are stopped$", res.stdout, re.M), res.stdout[-3000:]
        assert {j["name"]: (j["state"], j["reason"]) for j in jobs_of(started, fleet, env)} == {
            "web": ("cancelled", "by demo"), "etl": ("cancelled", "by demo"), "train": ("cancelled", "by demo")}
        before = len(events_of(started, fleet, env))
        # the first pass in the kept dir finds nothing to mourn: no attempt was left `running`
        res = run(started, "reconcile", "-f", fleet, env=env)
        assert res.returncode == 0 and "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
        after = events_of(started, fleet, env)[before:]
        assert [e for e in after if e["job"] is not None] == [], after
        for j in jobs_of(started, fleet, env):
            assert j["state"] == "cancelled", j
            assert [a for a in j["attempts"] if a["state"] in ("starting", "running", "silent")] == [], j
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_demo_unknown_fault_is_a_one_line_usage_error(started, env, tmp_path):
    res = run(started, "demo", "--fault", "bogus", env=env, timeout=30)
    assert res.returncode == 2, res
    assert res.stderr.splitlines() == ["error: --fault: unknown fault 'bogus' (known: xid79, hang, down, ecc)"]
    assert res.stdout == ""
    assert list((tmp_path / "tmp").iterdir()) == [], "no demo dir is made for a bad flag"


# ---------------------------------------------------------------- watch

def read_pty(master: int, seconds: float, proc: subprocess.Popen | None = None) -> bytes:
    """Whatever the child writes to the terminal for `seconds` (or until it exits and the pty is drained)."""
    buf = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:          # EIO: every slave fd is closed, the child is gone
                break
            if not data:
                break
            buf += data
        elif proc is not None and proc.poll() is not None:
            break
    return buf


def test_watch_on_a_terminal_redraws_and_stops_cleanly_on_ctrl_c(started, env, tmp_path):
    fleet = local_fleet(tmp_path)
    master, slave = os.openpty()
    try:
        proc = spawn(started, ["watch", "-f", fleet], dict(env, COLUMNS="100", LINES="40", TERM="xterm-256color"),
                     stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        slave = -1
        screen = read_pty(master, 4.0)
        assert proc.poll() is None, screen.decode(errors="replace")[-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        screen += read_pty(master, 10.0, proc)
        rc = proc.wait(max(0.1, 10 - (time.monotonic() - t0)))
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    text = ANSI.sub("", screen.decode(errors="replace"))
    assert rc == 0, text[-3000:]                   # Ctrl-C is how watch is meant to end
    assert "Traceback" not in text, text[-3000:]
    assert screen.count(b"\x1b[?1049h") == 1, "one switch to the alternate screen"
    assert screen.rstrip().endswith(b"\x1b[?1049l"), "the alternate screen is left on exit"
    frames = screen.count(b"\x1b[H")
    clocks = set(TITLE.findall(text))
    assert frames >= 4, f"{frames} redraws in 4s"
    assert len(clocks) >= 2, clocks
    assert "sim-0" in text and "sim-1" in text
    assert "NODES" in text and "EVENTS (newest first)" in text
    assert "2 nodes (2 ready)" in text


def test_watch_plain_prints_event_lines_and_stops_on_ctrl_c(started, env, tmp_path):
    fleet = local_fleet(tmp_path)
    proc = spawn(started, ["watch", "-f", fleet, "--plain"], env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True)
    time.sleep(3)
    assert proc.poll() is None
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err
    lines = out.splitlines()
    assert lines and all(EVENT_LINE.match(ln) for ln in lines), lines
    assert any(re.search(r" info    node-added\s+node=sim-0 added to pool sim \(local\)$", ln) for ln in lines), lines
    assert any(re.search(r" info    node-state\s+node=sim-1 provisioning -> ready: 4 GPUs healthy$", ln)
               for ln in lines), lines
    assert "\x1b" not in out, "no escape sequences without a terminal"


def test_watch_without_a_terminal_is_plain(started, env, tmp_path):
    fleet = local_fleet(tmp_path)
    proc = spawn(started, ["watch", "-f", fleet], env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err
    assert any(" node-added " in ln and EVENT_LINE.match(ln) for ln in out.splitlines()), out


def test_watch_once_prints_one_snapshot_and_exits(started, env, tmp_path):
    fleet = local_fleet(tmp_path)
    res = run(started, "watch", "--once", "-f", fleet, env=env, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert res.stdout.count("gridctl watch · fleet wt") == 1
    rows = {ln.split()[0]: ln.split() for ln in res.stdout.splitlines() if ln.startswith("sim-")}
    assert rows["sim-0"][:3] == ["sim-0", "sim", "ready"] and rows["sim-1"][:3] == ["sim-1", "sim", "ready"]
    assert "2 nodes (2 ready)" in res.stdout and "GPUs 0/8 used" in res.stdout
    assert "no jobs (gridctl run ...)" in res.stdout
    assert "\x1b" not in res.stdout


def test_watch_no_reconcile_without_a_store_says_so_in_one_line(started, env, tmp_path):
    fleet = local_fleet(tmp_path, state="nothing-yet.db")
    res = run(started, "watch", "--no-reconcile", "-f", fleet, env=env, timeout=30)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        f"error: no state yet at {tmp_path / 'nothing-yet.db'}: run `gridctl reconcile` (or watch without --no-reconcile)"]
    assert not (tmp_path / "nothing-yet.db").exists()


# ---------------------------------------------------------------- chaos

def test_chaos_xid79_then_reconcile_quarantines_the_node(started, env, tmp_path):
    fleet = local_fleet(tmp_path)
    res = run(started, "chaos", "sim-0", "xid79", "-f", fleet, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "sim-0: simulated state is now xid79; the next pass will see it"
    res = run(started, "reconcile", "-f", fleet, env=env)
    assert "Traceback" not in res.stdout + res.stderr
    assert "1 quarantined, 1 ready" in res.stdout, res.stdout
    nodes = nodes_json(started, fleet, env)
    assert nodes["sim-0"]["state"] == "quarantined" and "xid 79" in nodes["sim-0"]["reason"]
    assert nodes["sim-1"]["state"] == "ready"
    res = run(started, "chaos", "sim-0", "healthy", "-f", fleet, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "sim-0: simulated state is now healthy; the next pass will see it"


def test_chaos_refuses_a_real_node_without_contacting_it(started, env, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    fleet = tmp_path / "mixed.yaml"
    fleet.write_text(f"fleet: mixed\nstate: {tmp_path / 'mixed.db'}\n"
                     "ssh: {user: ubuntu, connect_timeout: 30s}\n"
                     "pools:\n"
                     f"  - {{name: sim, provider: local, count: 1, dir: {tmp_path / 'nodes'}}}\n"
                     "  - name: onprem\n"
                     "    provider: ssh\n"
                     "    gpu: {type: H100, count: 8, memory_gb: 80}\n"
                     "    nodes:\n"
                     "      - {name: gpu-a, host: gpu-a.example}\n"
                     f"      - {{name: gpu-b, host: 127.0.0.1, port: {port}}}\n")
    try:
        for name in ("gpu-a", "gpu-b"):
            res = run(started, "chaos", name, "xid79", "-f", fleet, env=env)
            assert res.returncode == 2, res
            assert res.stderr.splitlines() == [
                f"error: {name} is a real node (pool onprem, provider ssh): "
                "chaos only changes simulated `provider: local` nodes"]
        with pytest.raises(BlockingIOError):
            listener.accept()                     # nobody knocked on the real node's port
    finally:
        listener.close()
    assert not (tmp_path / "mixed.db").exists()


def test_chaos_unknown_mode_is_a_usage_error(started, env, tmp_path):
    fleet = local_fleet(tmp_path)
    res = run(started, "chaos", "sim-0", "melt", "-f", fleet, env=env)
    assert res.returncode == 2
    assert res.stderr.splitlines() == ["error: unknown mode 'melt' (known: healthy, xid79, ecc, driver, hang, "
                                       "missing-gpu, hot, row-remap, down)"]


def test_chaos_unknown_node_names_the_known_ones(started, env, tmp_path):
    fleet = local_fleet(tmp_path)
    res = run(started, "chaos", "sim-9", "xid79", "-f", fleet, env=env)
    assert res.returncode == 1
    assert res.stderr.splitlines() == ["error: no node named sim-9 (known: sim-0, sim-1)"]


# ---------------------------------------------------------------- init

@pytest.mark.parametrize("provider", PROVIDERS)
def test_init_writes_a_spec_validate_accepts_and_never_clobbers_it(started, env, tmp_path, provider):
    path = tmp_path / f"{provider}.yaml"
    res = run(started, "init", "--provider", provider, "--name", "t1", "-o", path, env=env)
    assert res.returncode == 0, res.stderr
    assert path.read_text() == render_template(provider, "t1")
    res = run(started, "validate", "-f", path, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("ok: 1 pools"), res.stdout

    path.write_text(path.read_text() + "# my edit\n")
    mine = path.read_text()
    res = run(started, "init", "--provider", provider, "-o", path, env=env)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"error: {path} exists: not overwriting it (use --force)"]
    assert path.read_text() == mine

    res = run(started, "init", "--provider", provider, "--name", "t1", "--force", "-o", path, env=env)
    assert res.returncode == 0, res.stderr
    assert path.read_text() == render_template(provider, "t1")


def test_init_names_the_fleet_after_the_directory(started, env, tmp_path):
    work = tmp_path / "My Lab_Fleet"
    work.mkdir()
    res = run(started, "init", "--provider", "local", env=env, cwd=work)
    assert res.returncode == 0, res.stderr
    assert (work / "fleet.yaml").read_text() == render_template("local", "my-lab_fleet")


def test_init_unknown_provider_is_a_usage_error_and_writes_nothing(started, env, tmp_path):
    path = tmp_path / "f.yaml"
    res = run(started, "init", "--provider", "azure", "-o", path, env=env)
    assert res.returncode == 2
    assert res.stderr.splitlines() == ["error: --provider: unknown provider 'azure' (known: ssh, local, aws, gcp)"]
    assert not path.exists()
