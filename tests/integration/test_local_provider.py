"""`provider: local` end to end: the same probe script and parser, run as local subprocesses."""

from __future__ import annotations


import pytest

from helpers import by_name, gridctl, gridctl_json

from providers.local import reboot, write_node


@pytest.fixture
def local_fleet(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(f"""
fleet: sim
state: {tmp_path}/state.db
health: {{probe_timeout: 3s, recover_after: 2}}
pools:
  - name: sim
    provider: local
    count: 3
    dir: {tmp_path}/nodes
    gpu: {{type: H100, count: 4, memory_gb: 80}}
""")
    return path, tmp_path / "nodes"


def _states(path) -> dict[str, dict]:
    _, rows = gridctl_json("nodes", "-f", path)
    return by_name(rows)


def test_local_nodes_are_created_healthy_and_become_ready(local_fleet):
    path, nodes = local_fleet
    assert gridctl("reconcile", "-f", path).returncode == 0
    states = _states(path)
    assert sorted(states) == ["sim-0", "sim-1", "sim-2"]
    assert {n["state"] for n in states.values()} == {"ready"}
    assert (nodes / "sim-0" / "gpu.03").exists()


def test_reboot_clears_reset_class_quarantine_after_good_probes(local_fleet):
    path, nodes = local_fleet
    gridctl("reconcile", "-f", path)
    write_node(nodes / "sim-1", "sim-1", mode="xid79")
    gridctl("reconcile", "-f", path)
    assert _states(path)["sim-1"]["state"] == "quarantined"
    # healthy again without a reboot (say, a GPU reset we cannot see): still waits for a person
    write_node(nodes / "sim-1", "sim-1", mode="healthy")
    for _ in range(3):
        gridctl("reconcile", "-f", path)
    node = _states(path)["sim-1"]
    assert node["state"] == "quarantined" and "waiting for uncordon or reboot" in node["reason"]
    reboot(nodes / "sim-1")
    gridctl("reconcile", "-f", path)
    gridctl("reconcile", "-f", path)
    assert _states(path)["sim-1"]["state"] == "ready"
    _, events = gridctl_json("events", "--node", "sim-1", "-f", path)
    assert any(e["kind"] == "node-rebooted" for e in events)


def test_uncordon_releases_a_quarantined_node_to_suspect(local_fleet):
    path, nodes = local_fleet
    gridctl("reconcile", "-f", path)
    write_node(nodes / "sim-2", "sim-2", mode="ecc")
    gridctl("reconcile", "-f", path)
    write_node(nodes / "sim-2", "sim-2", mode="healthy")
    res = gridctl("uncordon", "sim-2", "-f", path)
    assert res.returncode == 0 and "released from quarantine" in res.stdout
    assert _states(path)["sim-2"]["state"] == "suspect"
    gridctl("reconcile", "-f", path)
    gridctl("reconcile", "-f", path)
    assert _states(path)["sim-2"]["state"] == "ready"


def test_down_node_is_unreachable_silence(local_fleet):
    path, nodes = local_fleet
    gridctl("reconcile", "-f", path)
    write_node(nodes / "sim-0", "sim-0", mode="down")
    gridctl("reconcile", "-f", path)
    node = _states(path)["sim-0"]
    assert node["health"] == "unreachable" and node["state"] == "suspect"


def test_describe_node_tells_the_story(local_fleet):
    path, nodes = local_fleet
    gridctl("reconcile", "-f", path)
    write_node(nodes / "sim-1", "sim-1", mode="xid79")
    gridctl("reconcile", "-f", path)
    res = gridctl("describe", "node", "sim-1", "-f", path)
    assert res.returncode == 0, res.stderr
    for words in ("quarantined", "xid 79", "saw 3 of 4 GPUs", "Recent events", "ready -> quarantined"):
        assert words in res.stdout, res.stdout
