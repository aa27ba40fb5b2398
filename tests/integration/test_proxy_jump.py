"""`proxy_jump: a,b` follows OpenSSH: connect to a directly, to b through a, to the node through b.
Both jump hosts are addresses of fleetsim's one sshd."""

from __future__ import annotations

from helpers import gridctl_json


def _jump_fleet(ssh_fleet, tmp_path, name: str, hops: list[str]):
    ssh_fleet.add_node(name, ssh_fleet.next_ip())
    path = ssh_fleet.write_fleet(tmp_path / "fleet.yaml", nodes=[name])
    chain = ",".join(f"root@{hop}" for hop in hops)
    path.write_text(path.read_text().replace("connect_timeout: 2s", f"connect_timeout: 2s\n  proxy_jump: {chain}"))
    return path


def test_two_hop_jump_reaches_node_and_pins_both_hops(ssh_fleet, tmp_path):
    first, second = ssh_fleet.next_ip(), ssh_fleet.next_ip()
    path = _jump_fleet(ssh_fleet, tmp_path, "jj-ok", [f"{first}:{ssh_fleet.port}", f"{second}:{ssh_fleet.port}"])
    code, rows = gridctl_json("probe", "-f", path)
    assert code == 0, rows
    assert rows[0]["health"] == "healthy"
    pinned = ssh_fleet.known_hosts.read_text()
    assert f"[{first}]:{ssh_fleet.port} " in pinned
    assert f"[{second}]:{ssh_fleet.port} " in pinned


def test_changed_host_key_on_the_first_hop_stops_the_chain(ssh_fleet, tmp_path):
    first, second = ssh_fleet.next_ip(), ssh_fleet.next_ip()
    ssh_fleet.pin_wrong_host_key(first)
    path = _jump_fleet(ssh_fleet, tmp_path, "jj-key", [f"{first}:{ssh_fleet.port}", f"{second}:{ssh_fleet.port}"])
    code, rows = gridctl_json("probe", "-f", path)
    assert code == 1
    assert rows[0]["health"] == "unreachable"
    assert f"[{first}]:{ssh_fleet.port} presented" in rows[0]["reason"], rows[0]["reason"]


def test_second_hop_is_opened_through_the_first(ssh_fleet, tmp_path):
    first, second = ssh_fleet.next_ip(), ssh_fleet.next_ip()
    closed = ssh_fleet.refused_port()
    path = _jump_fleet(ssh_fleet, tmp_path, "jj-order", [f"{first}:{ssh_fleet.port}", f"{second}:{closed}"])
    code, rows = gridctl_json("probe", "-f", path)
    assert code == 1
    assert rows[0]["health"] == "unreachable"
    # the first hop's sshd tried the second hop for us, and says so: not a refusal of our own connect
    assert f"via {first}: " in rows[0]["reason"], rows[0]["reason"]
    assert "connection refused by" not in rows[0]["reason"]
