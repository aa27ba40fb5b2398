"""Reconcile over a real sshd: connection reuse, the pass lock, partitions, host key policy,
~/.ssh/config and ProxyJump, crash consistency, hostile output."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from helpers import GRIDCTL, by_name, codes, gridctl, gridctl_json

from gridctl.reconcile import PassLock, reconcile_once
from gridctl.reconcile.observe import Transports
from gridctl.spec import load_fleet
from gridctl.store import connect, queries


def _fleet(ssh_fleet, tmp_path, count=2, prefix="n", **kw):
    names = []
    for i in range(count):
        name = f"{prefix}{i}"
        ssh_fleet.add_node(name, ssh_fleet.next_ip(), **kw.pop("node_kw", {}))
        names.append(name)
    return ssh_fleet.write_fleet(tmp_path / "fleet.yaml", nodes=names, **kw), names


def test_loop_reuses_connections_and_reconnects_when_one_breaks(ssh_fleet, tmp_path):
    path, names = _fleet(ssh_fleet, tmp_path, prefix="reuse")
    fleet = load_fleet(path)
    conn = connect(tmp_path / "state.db")
    transports = Transports()
    try:
        reconcile_once(fleet, conn, transports, tmp_path)
        first = dict(transports.ssh._conns)
        assert len(first) == 2
        reconcile_once(fleet, conn, transports, tmp_path)
        assert all(transports.ssh._conns[k] is v for k, v in first.items()), "connections were not reused"
        # break one connection under the cache: the next pass reconnects without a failed probe
        next(iter(first.values())).transport.sock.close()
        report = reconcile_once(fleet, conn, transports, tmp_path)
        assert all(n.health.value == "healthy" for n in report.nodes), [n.reason for n in report.nodes]
        assert not [e for e in report.events if e.kind == "node-state" and "suspect" in e.message]
    finally:
        transports.close()
        conn.close()


def test_second_reconcile_exits_0_while_one_is_running(ssh_fleet, tmp_path):
    path, _ = _fleet(ssh_fleet, tmp_path, count=1, prefix="lock")
    lock = PassLock(tmp_path / "state.db")
    assert lock.acquire()
    try:
        res = gridctl("reconcile", "-f", path)
        assert res.returncode == 0, res.stderr
        assert f"another reconcile is running (pid {os.getpid()}, since " in res.stdout
        assert not (tmp_path / "state.db").exists() or not queries.load_nodes(connect(tmp_path / "state.db"))
    finally:
        lock.release()
    assert gridctl("reconcile", "-f", path).returncode == 0


def test_mass_silence_is_treated_as_our_partition(ssh_fleet, tmp_path):
    names = []
    for i in range(4):
        ip = ssh_fleet.next_ip()
        spec = {} if i == 0 else {"port": ssh_fleet.refused_port()}
        ssh_fleet.add_node(f"part{i}", ip, **spec)
        names.append(f"part{i}")
    path = ssh_fleet.write_fleet(tmp_path / "fleet.yaml", nodes=names)
    outputs = [gridctl("reconcile", "-f", path) for _ in range(3)]
    assert "partition suspected" in outputs[0].stderr
    _, nodes = gridctl_json("nodes", "-f", path)
    states = {n["name"]: n["state"] for n in nodes}
    assert states["part0"] == "ready"
    assert all(states[n] != "quarantined" for n in names[1:]), states
    _, events = gridctl_json("events", "-f", path)
    partition = [e for e in events if e["kind"] == "fleet-partition"]
    assert len(partition) == 1 and "3 of 4 nodes" in partition[0]["message"]


def test_accept_new_pins_host_key_on_first_sight(ssh_fleet, tmp_path):
    path, names = _fleet(ssh_fleet, tmp_path, count=1, prefix="pin")
    ip = ssh_fleet.nodes[names[0]]["host"]
    known_hosts = tmp_path / "gridctl" / "known_hosts"    # created by gridctl itself
    path.write_text(path.read_text().replace(str(ssh_fleet.known_hosts), str(known_hosts)))
    assert gridctl("probe", "-f", path).returncode == 0
    pinned = [ln for ln in known_hosts.read_text().splitlines() if ln.startswith(f"[{ip}]:")]
    host_pub = Path(str(ssh_fleet.host_key) + ".pub").read_text().split()[1]
    assert len(pinned) == 1 and host_pub in pinned[0]
    assert oct(known_hosts.stat().st_mode & 0o777) == "0o600"
    # a second sweep trusts the pinned key and pins nothing new
    assert gridctl("probe", "-f", path).returncode == 0
    assert known_hosts.read_text().count(f"[{ip}]:") == 1


def test_strict_policy_refuses_unknown_host_key(ssh_fleet, tmp_path):
    path, names = _fleet(ssh_fleet, tmp_path, count=1, prefix="strict")
    text = path.read_text().replace("host_key_policy: accept-new", "host_key_policy: strict")
    text = text.replace(str(ssh_fleet.known_hosts), str(tmp_path / "empty_known_hosts"))
    path.write_text(text)
    code, rows = gridctl_json("probe", "-f", path)
    assert code == 1
    assert rows[0]["health"] == "unreachable"
    assert "host-key-unknown" in codes(rows[0]) and "policy strict" in rows[0]["reason"]
    assert not (tmp_path / "empty_known_hosts").exists()


def test_ssh_config_alias_supplies_hostname_port_user_and_key(ssh_fleet, tmp_path, isolated_env):
    ip = ssh_fleet.next_ip()
    ssh_fleet.add_node("alias", ip)
    home = Path(isolated_env["HOME"])
    (home / ".ssh").mkdir()
    (home / ".ssh" / "config").write_text(
        f"Host gpu-alias\n  HostName {ip}\n  Port {ssh_fleet.port}\n  User root\n  IdentityFile {ssh_fleet.client_key}\n")
    path = tmp_path / "fleet.yaml"
    path.write_text(f"""
fleet: alias
state: {tmp_path}/state.db
ssh: {{known_hosts: {tmp_path}/kh}}
pools:
  - name: p
    provider: ssh
    gpu: {{count: 4}}
    nodes: [{{name: alias, host: gpu-alias}}]
""")
    code, rows = gridctl_json("probe", "-f", path, env=isolated_env)
    assert code == 0, rows
    assert rows[0]["health"] == "healthy" and rows[0]["host"] == ip


def test_proxy_jump_reaches_node_through_bastion(ssh_fleet, tmp_path):
    path, names = _fleet(ssh_fleet, tmp_path, count=1, prefix="jump")
    text = path.read_text().replace("connect_timeout: 2s", f"connect_timeout: 2s\n  proxy_jump: root@127.0.0.1:{ssh_fleet.port}")
    path.write_text(text)
    code, rows = gridctl_json("probe", "-f", path)
    assert code == 0, rows
    assert rows[0]["health"] == "healthy"
    # the bastion's key was pinned too
    assert f"[127.0.0.1]:{ssh_fleet.port}" in ssh_fleet.known_hosts.read_text()


def test_killed_reconcile_leaves_a_consistent_store(ssh_fleet, tmp_path):
    path, names = _fleet(ssh_fleet, tmp_path, count=3, prefix="kill")
    ssh_fleet.set_mode(names[2], "hang")
    assert gridctl("reconcile", "-f", path).returncode == 0
    for delay in (0.3, 0.8, 1.5, 2.5):
        proc = subprocess.Popen([*GRIDCTL, "reconcile", "-f", str(path)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        db = sqlite3.connect(tmp_path / "state.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert {r[0] for r in db.execute("SELECT name FROM nodes")} == set(names)
        db.close()
    res = gridctl("reconcile", "-f", path)
    assert res.returncode == 0, res.stderr
    _, nodes = gridctl_json("nodes", "-f", path)
    assert by_name(nodes)[names[2]]["state"] == "quarantined"
    assert by_name(nodes)[names[0]]["state"] == "ready"


def test_nvidia_smi_printing_10mb_is_a_finding_not_a_crash(ssh_fleet, tmp_path):
    path, names = _fleet(ssh_fleet, tmp_path, count=1, prefix="flood")
    node_dir = ssh_fleet.node_dir(names[0])
    with open(node_dir / "smi.extra", "w") as f:
        line = "x" * 1023 + "\n"
        for _ in range(10 * 1024):
            f.write(line)
    code, rows = gridctl_json("probe", "-f", path)
    assert code == 1
    row = rows[0]
    assert row["health"] == "unhealthy"
    # the probe keeps the first 256 KiB of nvidia-smi's output: all flood, no GPU row; the node says
    # so (probe-output, info) and, having shown none of its 4 GPUs, is judged on that (gpu-missing)
    assert sorted((f["code"], f["severity"], f["message"]) for f in row["findings"]) == [
        ("gpu-missing", "fatal", "saw 0 of 4 GPUs"),
        ("probe-output", "info", "nvidia-smi printed more than 256 KiB; output truncated")], row["findings"]
    assert gridctl("reconcile", "-f", path).returncode == 0
    db = sqlite3.connect(tmp_path / "state.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_state_file_is_private(ssh_fleet, tmp_path):
    path, _ = _fleet(ssh_fleet, tmp_path, count=1, prefix="mode")
    assert gridctl("reconcile", "-f", path).returncode == 0
    for p in tmp_path.glob("state.db*"):
        assert p.stat().st_mode & 0o077 == 0, p


def test_cordon_and_uncordon_are_recorded(ssh_fleet, tmp_path):
    path, names = _fleet(ssh_fleet, tmp_path, count=1, prefix="cord")
    gridctl("reconcile", "-f", path)
    res = gridctl("cordon", names[0], "--reason", "bios update", "-f", path)
    assert res.returncode == 0, res.stderr
    _, nodes = gridctl_json("nodes", "-f", path)
    assert nodes[0]["cordoned"] is True and nodes[0]["cordon_reason"] == "bios update"
    gridctl("reconcile", "-f", path)   # a pass keeps the manual flag
    _, nodes = gridctl_json("nodes", "-f", path)
    assert nodes[0]["cordoned"] is True
    assert gridctl("uncordon", names[0], "-f", path).returncode == 0
    _, nodes = gridctl_json("nodes", "-f", path)
    assert nodes[0]["cordoned"] is False
    _, events = gridctl_json("events", "--node", names[0], "-f", path)
    assert [e["kind"] for e in events if e["kind"] in ("cordon", "uncordon")] == ["cordon", "uncordon"]


def test_client_deadline_bounds_an_exec_that_never_ends(ssh_fleet, tmp_path):
    """paramiko's recv_exit_status ignores channel timeouts: our own deadline must end the exec."""
    from gridctl.errors import ProbeTimeout
    from gridctl.transport import SshTransport, Target
    ip = ssh_fleet.next_ip()
    target = Target(name="sleepy", host=ip, port=ssh_fleet.port, user="root", keys=(ssh_fleet.client_key,),
                    known_hosts=tmp_path / "kh")
    ssh = SshTransport()
    try:
        with pytest.raises(ProbeTimeout):   # without our deadline this would return after 30 s, rc 0
            ssh.run(target, "sleep 30", b"", timeout=1.0)
        # the connection stays usable for the next command
        assert ssh.run(target, "echo ok", b"", timeout=5.0).stdout == b"ok\n"
    finally:
        ssh.close()
