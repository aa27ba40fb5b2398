"""A node that now offers only a host key of another type than the one pinned (ed25519 pinned,
ecdsa offered, or the reverse) has changed its host key: the same fatal, alerting
`host-key-changed` as a different key of the same type, never `unreachable` (which would count
toward a fleet partition and hide a possible attack). Issue 11, item 13."""

from __future__ import annotations

import subprocess

from helpers import by_name, codes, gridctl, gridctl_json


def test_a_host_key_of_another_type_than_the_pinned_one_is_a_changed_host_key(ssh_fleet, tmp_path):
    ip = ssh_fleet.next_ip()
    ssh_fleet.add_node("keytype", ip)
    other = tmp_path / "ecdsa_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(other)], check=True)
    kind, blob = (other.with_suffix(".pub")).read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[{ip}]:{ssh_fleet.port} {kind} {blob}\n")            # the sshd offers ed25519 only
    path = ssh_fleet.write_fleet(tmp_path / "fleet.yaml", nodes=["keytype"])
    path.write_text(path.read_text().replace(str(ssh_fleet.known_hosts), str(known)))
    code, rows = gridctl_json("probe", "-f", path)
    row = by_name(rows)["keytype"]
    assert code == 1 and "host-key-changed" in codes(row), row
    assert "ecdsa" in row["reason"] and "ed25519" in row["reason"], row["reason"]
    assert gridctl("reconcile", "-f", path).returncode == 0
    _, nodes = gridctl_json("nodes", "-f", path)
    assert by_name(nodes)["keytype"]["state"] == "quarantined"
    _, events = gridctl_json("events", "-f", path)
    assert [e["kind"] for e in events if e["kind"] == "alert"] == ["alert"]
    assert known.read_text().count(f"[{ip}]:") == 1                      # the offered key was not pinned
