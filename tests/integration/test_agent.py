"""The resident node agent, run for real: as a subprocess of a simulated node (local provider) and
over a real sshd, against the fake NVML of providers/local_nvml driven by the node's state files."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml

from helpers import write_local_fleet

from gridctl.agent.session import LOADER, bootstrap
from gridctl.health import classify
from gridctl.launcher import attempt_token
from gridctl.models import Contact
from gridctl.probe import ProbeBudget, probe_request
from gridctl.reconcile.observe import Transports, sweep, take_inventory
from gridctl.spec import load_fleet
from providers.local import inject_xid, sim_env, write_node

# what may differ between two probes a moment apart: clocks, free disk, and the words of a lost GPU
TIMING = {"started_at", "duration_s", "node_time", "disk_free_bytes", "uptime_s", "probe_path", "smi_errors",
          "nvml_error"}


def _observations(path: Path, modes: list[str]):
    fleet = load_fleet(path)
    inventory = take_inventory(fleet, path.parent)
    for node, mode in zip(inventory.nodes, modes):
        write_node(node.target.local_dir, node.name, gpus=2, mode=mode)
    sh = sweep(inventory.nodes, Transports(), probe_timeout=3, concurrency=8)
    agents = Transports(agent=True)
    try:
        agent = sweep(inventory.nodes, agents, probe_timeout=3, concurrency=8)
    finally:
        agents.close()
    return inventory.nodes, sh, agent


def test_agent_observation_equals_sh_probe_for_the_same_node_state(tmp_path):
    modes = ["healthy", "ecc", "hot", "row-remap", "xid79", "driver"]
    path = write_local_fleet(tmp_path, "parity", count=len(modes), gpus=2)
    nodes, sh, agent = _observations(path, modes)
    for node, mode in zip(nodes, modes):
        a, b = sh[node.name], agent[node.name]
        assert b.probe_path == "agent" and a.probe_path == "sh"
        same = {k: v for k, v in asdict(a).items() if k not in TIMING}
        assert same == {k: v for k, v in asdict(b).items() if k not in TIMING}, mode
        assert classify(a, node.expect).findings == classify(b, node.expect).findings or mode in ("xid79", "driver")
        assert ({f.code for f in classify(a, node.expect).findings}
                == {f.code for f in classify(b, node.expect).findings}), mode
        assert b.disk_free_bytes == pytest.approx(a.disk_free_bytes, rel=0.01)


def _agent(node_dir: Path, extra_env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, **dict(sim_env(node_dir)), **(extra_env or {})}
    proc = subprocess.Popen(["sh", "-c", LOADER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    proc.stdin.write(bootstrap())
    proc.stdin.flush()
    hello = json.loads(proc.stdout.readline())
    assert hello["t"] == "hello"
    return proc


def _next(proc: subprocess.Popen, kind: str) -> dict:
    while True:
        msg = json.loads(proc.stdout.readline())
        if msg["t"] == kind:
            return msg


def test_agent_refuses_any_op_but_probe_and_runs_nothing(tmp_path):
    node = tmp_path / "n"
    write_node(node, "n", gpus=1)
    proc = _agent(node)
    try:
        planted = tmp_path / "planted"
        for bad in ({"id": 1, "op": "exec", "cmd": f"touch {planted}"},
                    {"id": 2, "op": "probe", "nonce": "$(touch x)"}, "not json"):
            proc.stdin.write((json.dumps(bad) if isinstance(bad, dict) else bad).encode() + b"\n")
            proc.stdin.flush()
            assert _next(proc, "error")["what"] in ("unknown op", "not a request")
        assert not planted.exists()
    finally:
        proc.stdin.close()
        proc.wait(5)


def test_xid_from_nvml_event_is_pushed_at_once_and_reported_in_next_probe(tmp_path):
    node = tmp_path / "n"
    write_node(node, "n", gpus=2)
    proc = _agent(node)
    try:
        time.sleep(0.3)
        inject_xid(node, 1, 79)
        event = _next(proc, "xid")
        assert (event["xid"], event["gpu"], event["bus_id"]) == (79, 1, "00000000:28:00.0")
    finally:
        proc.stdin.close()
        proc.wait(5)


def test_agent_exits_when_the_controller_goes_away(tmp_path):
    node = tmp_path / "n"
    write_node(node, "n", gpus=1)
    proc = _agent(node)
    proc.stdin.close()
    assert proc.wait(5) == 0


def _hostile_node(tmp_path: Path, script: str):
    """A simulated node whose `python3` is a hostile program (what a compromised node may answer)."""
    path = write_local_fleet(tmp_path, "hostile", count=1, gpus=1)
    fleet = load_fleet(path)
    node = take_inventory(fleet, tmp_path).nodes[0]
    bin_dir = tmp_path / "hostile-bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text("#!/bin/sh\n" + script)
    (bin_dir / "python3").chmod(0o755)
    env = dict(node.target.local_env)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return replace(node, target=replace(node.target, local_env=tuple(env.items())))


@pytest.mark.parametrize("script", [
    # a hello, then 10 MB on one line
    'echo \'{"t":"hello","v":1,"caps":[],"pid":1}\'; cat >/dev/null & head -c 10485760 /dev/zero | tr "\\0" a; sleep 5',
    # a hello, then garbage and a partial line
    'echo \'{"t":"hello","v":1,"caps":[],"pid":1}\'; cat >/dev/null & printf "\\033[2Jgarbage\\n{\\"t\\":"; sleep 5',
])
def test_hostile_agent_output_drops_session_and_node_keeps_sh_probe(tmp_path, script):
    node = _hostile_node(tmp_path, script)
    transports = Transports(agent=True)
    try:
        obs = sweep([node], transports, probe_timeout=3, concurrency=1)[node.name]
        events = transports.agents.take_events()
    finally:
        transports.close()
    assert obs.contact is Contact.OK and obs.complete and obs.probe_path == "sh"
    assert any(p.startswith("agent ") and ("bytes" in p or "not JSON" in p) for p in obs.parse_problems)
    assert "probe-output" in {f.code for f in classify(obs, node.expect).findings}
    assert [e.kind for e in events][-1] in ("agent-lost", "agent-unavailable")


def test_node_without_python3_keeps_the_sh_probe(tmp_path):
    node = _hostile_node(tmp_path, "exit 127\n")
    transports = Transports(agent=True)
    try:
        obs = sweep([node], transports, probe_timeout=3, concurrency=1)[node.name]
        path = transports.agents.path(node.name)
    finally:
        transports.close()
    assert obs.contact is Contact.OK and obs.complete and obs.probe_path == "sh"
    assert path.startswith("sh (agent did not start")


def test_agent_over_ssh_matches_sh_probe(ssh_fleet, tmp_path):
    names = []
    for i, mode in enumerate(["healthy", "ecc"]):
        name = f"agent-ssh-{i}"
        ssh_fleet.add_node(name, ssh_fleet.next_ip(), mode=mode)
        names.append(name)
    path = ssh_fleet.write_fleet(tmp_path / "fleet.yaml", nodes=names)
    spec = yaml.safe_load(path.read_text())
    spec["ssh"]["connect_timeout"] = "10s"           # a loaded CI machine: compare answers, not connect races
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    inventory = take_inventory(load_fleet(path), tmp_path)
    sh = sweep(inventory.nodes, Transports(), probe_timeout=4, concurrency=4)
    transports = Transports(agent=True)
    try:
        agent = sweep(inventory.nodes, transports, probe_timeout=4, concurrency=4)
    finally:
        transports.close()
    for node in inventory.nodes:
        a, b = sh[node.name], agent[node.name]
        assert b.probe_path == "agent", b
        assert ({k: v for k, v in asdict(a).items() if k not in TIMING}
                == {k: v for k, v in asdict(b).items() if k not in TIMING})


PY38 = Path(os.path.expanduser("~/.pyenv/versions/3.8.18/bin/python3.8"))


@pytest.mark.skipif(not PY38.exists(), reason="no python3.8 here (the oldest the agent supports)")
def test_agent_runs_under_python38_with_the_shipped_nvml_binding(tmp_path):
    node = tmp_path / "n"
    write_node(node, "n", gpus=2, mode="ecc")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(PY38)
    env = {**os.environ, **dict(sim_env(node))}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    del env["GRIDCTL_PYNVML_PATH"]           # the real binding's source, shipped; no driver here: nvidia-smi
    proc = subprocess.Popen(["sh", "-c", LOADER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(bootstrap())
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["python"].startswith("3.8.")
        from gridctl.probe import ProbeBudget, probe_request
        req = probe_request(ProbeBudget(4), str(node / "work"))
        proc.stdin.write((json.dumps({**req.agent_args, "id": 1, "op": "probe"}) + "\n").encode())
        proc.stdin.flush()
        obs = req.parse("n", _next(proc, "result")["out"], started_at=0, duration_s=0)
    finally:
        proc.stdin.close()
        proc.wait(5)
    assert obs.complete and [g.ecc_uncorrected_volatile for g in obs.gpus] == [2, 0]
    assert obs.nvml_error is not None and obs.nvml_error.startswith("12 ")


def test_wedged_nvml_reads_as_a_slow_nvidia_smi_and_the_session_keeps_answering(tmp_path):
    path = write_local_fleet(tmp_path, "wedged", count=1, gpus=1, probe_timeout="3s")
    node = take_inventory(load_fleet(path), tmp_path).nodes[0]
    write_node(node.target.local_dir, node.name, gpus=1, mode="hang")      # every NVML call blocks
    transports = Transports(agent=True)
    try:
        first = sweep([node], transports, probe_timeout=3, concurrency=1)[node.name]
        second = sweep([node], transports, probe_timeout=3, concurrency=1)[node.name]
    finally:
        transports.close()
    for obs in (first, second):
        assert obs.probe_path == "agent" and obs.complete and obs.smi_rc == 124
        assert "probe-hung" in {f.code for f in classify(obs, node.expect).findings}


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(raw[raw.rfind(")") + 2:].split()[1]) == pid:
                out.append((int(entry), raw[raw.find("(") + 1:raw.rfind(")")]))
    return out


def test_kernel_log_is_followed_after_the_first_read_and_the_follower_dies_with_the_agent(tmp_path):
    from gridctl.models import LogPosition
    from gridctl.probe import ProbeBudget, probe_request
    from providers.local import _kernel_line
    node = tmp_path / "n"
    write_node(node, "n", gpus=2, mode="xid79")              # a journal with entries: worth following
    proc = _agent(node)
    try:
        first_req = probe_request(ProbeBudget(4), str(node / "work"))
        proc.stdin.write((json.dumps({**first_req.agent_args, "id": 1, "op": "probe"}) + "\n").encode())
        proc.stdin.flush()
        first = first_req.parse("n", _next(proc, "result")["out"], started_at=0, duration_s=0)
        assert [x.xid for x in first.xids] == [79] and first.xid_source == "journalctl"
        below = _children(proc.pid)                     # sh -c LOADER, then python3 (the agent) below it
        below += [g for pid, _ in below for g in _children(pid)]
        followers = [c for c in below if c[1] == "tail"]
        assert len(followers) == 1, below
        with open(node / "kernel.log", "a") as f:
            f.write(_kernel_line("NVRM: Xid (PCI:0000:18:00): 48, pid=0, DBE (Double Bit Error) ECC Error"))
        time.sleep(1.5)                                       # tail -F's poll
        req = probe_request(ProbeBudget(4), str(node / "work"),
                            position=LogPosition(first.boot_id, first.uptime_s))
        proc.stdin.write((json.dumps({**req.agent_args, "id": 2, "op": "probe"}) + "\n").encode())
        proc.stdin.flush()
        second = req.parse("n", _next(proc, "result")["out"], started_at=0, duration_s=0)
    finally:
        proc.stdin.close()
        proc.wait(5)
    assert 48 in [x.xid for x in second.xids]
    time.sleep(0.3)
    assert not Path(f"/proc/{followers[0][0]}").exists() or "Z" in Path(f"/proc/{followers[0][0]}/stat").read_text().split(")")[1][:3]


def test_a_dark_node_ends_its_session_as_silence_and_the_loop_is_woken(tmp_path):
    """Silence is the network's, watched like the kernel watches a TCP connection (keepalives): a node
    gone dark (nothing passes either way) ends its session as `lost`, the loop is woken, and the next
    pass says `unreachable: agent session silent` without waiting for the agent's rarer heartbeat."""
    fleet = load_fleet(write_local_fleet(tmp_path, "dark", count=2, gpus=1))
    nodes = take_inventory(fleet, tmp_path).nodes
    transports = Transports(agent=True)
    woken = []
    transports.agents.wake = lambda: woken.append(time.monotonic())
    try:
        first = sweep(nodes, transports, probe_timeout=3, concurrency=2)
        assert all(o.contact is Contact.OK and o.probe_path == "agent" for o in first.values())
        (nodes[0].target.local_dir / "down").write_text("")
        deadline = time.monotonic() + 20
        while not woken and time.monotonic() < deadline:
            time.sleep(0.05)
        assert woken, "the session of the dark node never ended"
        second = sweep(nodes, transports, probe_timeout=3, concurrency=2)
    finally:
        transports.close()
    dark, lit = second[nodes[0].name], second[nodes[1].name]
    assert dark.contact is Contact.UNREACHABLE and dark.probe_path == "agent"
    assert dark.detail.startswith("agent session silent: no answer from the node to TCP keepalives"), dark.detail
    assert lit.contact is Contact.OK and lit.probe_path == "agent"


def _start_ticks(pid: int) -> str:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rfind(")") + 2:].split()[19]


def test_agent_reports_attempts_as_the_sh_probe_does(tmp_path):
    """Every case of the attempt checks (the agent reads the named pid, and every process only when the
    group must be looked at): a live attempt, a dead leader whose group lives on (known by its
    environment), a pid another process took, an exited one, a zombie leader, and a fence on each path."""
    path = write_local_fleet(tmp_path, "attempts", count=1, gpus=1)
    node = take_inventory(load_fleet(path), tmp_path).nodes[0]
    write_node(node.target.local_dir, node.name, gpus=1)
    boot = (node.target.local_dir / "boot_id").read_text().strip()
    key = b"k" * 32
    root = Path(node.work_dir) / "attempts"
    root.mkdir(mode=0o700, parents=True)
    os.chmod(node.work_dir, 0o700)
    started: list[subprocess.Popen] = []

    def attempt(ident: str, pid: int, start: str | None = None, **extra: str) -> None:
        d = root / ident
        d.mkdir(mode=0o700)
        files = {"token": attempt_token(key, ident), "pid": str(pid), "boot_id": boot, "started": "1764180000",
                 "pid_start": start if start is not None else _start_ticks(pid), **extra}
        for name, text in files.items():
            (d / name).write_text(text + "\n")

    def spawn(argv: list[str], ident: str | None = None) -> subprocess.Popen:
        env = {**os.environ, **({"GRIDCTL_ATTEMPT": ident} if ident else {})}
        started.append(subprocess.Popen(argv, start_new_session=True, env=env))
        return started[-1]

    try:
        attempt("live.1", spawn(["sleep", "300"]).pid)
        leader = spawn(["sh", "-c", "sleep 300 & exit 0"], ident="group.1")
        start = _start_ticks(leader.pid)
        leader.wait(5)                               # reaped: only its group's sleep is left
        attempt("group.1", leader.pid, start)
        attempt("taken.1", spawn(["sleep", "300"]).pid, start="1")
        gone = subprocess.Popen(["true"])
        gone.wait(5)
        attempt("gone.1", gone.pid, start="1", exit="0")
        zombie = spawn(["sh", "-c", "exit 3"])
        zstart = None
        while zstart is None or Path(f"/proc/{zombie.pid}/stat").read_text().split(") ")[1][0] != "Z":
            zstart = zstart or _start_ticks(zombie.pid)
            time.sleep(0.02)
        attempt("zombie.1", zombie.pid, zstart)
        fence_sh, fence_agent = spawn(["sleep", "300"]), spawn(["sleep", "300"])
        attempt("fence-sh.1", fence_sh.pid)
        attempt("fence-agent.1", fence_agent.pid)

        sh = sweep([node], Transports(), probe_timeout=3, concurrency=1, key=key,
                   kill={node.name: ("fence-sh.1",)})[node.name]
        agents = Transports(agent=True)
        try:
            agent = sweep([node], agents, probe_timeout=3, concurrency=1, key=key,
                          kill={node.name: ("fence-agent.1",)})[node.name]
        finally:
            agents.close()
        assert (sh.probe_path, agent.probe_path) == ("sh", "agent")
        fenced_sh = [a for a in sh.attempts if a.fenced]
        fenced_agent = [a for a in agent.attempts if a.fenced]
        assert [a.id for a in fenced_sh] == ["fence-sh.1"] and [a.id for a in fenced_agent] == ["fence-agent.1"]
        assert fence_sh.wait(5) == -9 and fence_agent.wait(5) == -9

        def rest(obs):
            return {a.id: (a.pid, a.alive, a.exit_code, a.pid_mismatch) for a in obs.attempts if "fence" not in a.id}
        assert rest(agent) == rest(sh) == {
            "live.1": (started[0].pid, True, None, False), "group.1": (leader.pid, True, None, False),
            "taken.1": (started[2].pid, False, None, True), "gone.1": (gone.pid, False, 0, False),
            "zombie.1": (zombie.pid, False, None, False)}
    finally:
        for proc in started:
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                pass
            proc.wait(5)


def test_a_wedged_node_asked_first_holds_up_no_other_node_of_the_pass(tmp_path):
    """ask_live keeps its window full and takes answers as they come: a node whose NVML is wedged (its
    answer comes only at the probe's deadline) settles last although it was asked first, and the
    nodes behind it in the queue were asked meanwhile (with oldest-first waits each wedged node at the
    head of the window held every later node back by its whole deadline)."""
    path = write_local_fleet(tmp_path, "hol", count=4, gpus=1, probe_timeout="3s")
    nodes = take_inventory(load_fleet(path), tmp_path).nodes
    transports = Transports(agent=True)
    try:
        first = sweep(nodes, transports, probe_timeout=3, concurrency=4)
        assert [o.probe_path for o in first.values()] == ["agent"] * 4
        write_node(nodes[0].target.local_dir, nodes[0].name, gpus=1, mode="hang")
        budget = ProbeBudget(3)
        asks = {n.name: (probe_request(budget, n.work_dir).agent_args, budget.total_s) for n in nodes}
        answers = transports.agents.ask_live(asks, window=2)
    finally:
        transports.close()
    assert list(answers) == [n.name for n in nodes[1:]] + [nodes[0].name]
    assert [a.kind for a in answers.values()] == ["text"] * 4
    assert "nvidia-smi rc=124" in answers[nodes[0].name].text
