"""Every failure mode of the simulated fleet, classified over a real sshd: `gridctl probe --json`
for health and reason, `gridctl reconcile` for the state transitions and events."""

from __future__ import annotations

import pytest

from fleetsim import requires_root
from helpers import by_name, codes, gridctl, gridctl_json

GPU_MODES = ["healthy", "xid79", "ecc", "driver", "hang", "missing-gpu", "hot", "row-remap"]


@pytest.fixture(scope="module")
def fleet_file(ssh_fleet, tmp_path_factory):
    """One node per mode, plus the node-level faults."""
    f = ssh_fleet
    names = []
    for mode in GPU_MODES:
        f.add_node(f"m-{mode}", f.next_ip(), mode=mode)
        names.append(f"m-{mode}")
    ip = f.next_ip()
    f.add_node("m-refused", ip, port=f.refused_port())
    ip = f.next_ip()
    f.add_node("m-nobanner", ip, port=f.no_banner_port(ip))
    f.add_node("m-auth", f.next_ip(), key=str(f.other_key))
    ip = f.next_ip()
    f.add_node("m-hostkey", ip)
    f.pin_wrong_host_key(ip)
    names += ["m-refused", "m-nobanner", "m-auth", "m-hostkey"]
    import os
    import shutil
    if os.geteuid() == 0 and shutil.which("iptables"):
        ip = f.next_ip()
        f.add_node("m-blackhole", ip)
        f.blackhole(ip)
        names.append("m-blackhole")
    path = tmp_path_factory.mktemp("modes") / "fleet.yaml"
    return f.write_fleet(path, nodes=names, health={"probe_timeout": "4s", "unhealthy_after": 2})


@pytest.fixture(scope="module")
def probed(fleet_file):
    res = gridctl("probe", "-f", fleet_file, "--json")
    assert "Traceback" not in res.stderr, res.stderr
    import json
    return res.returncode, by_name(json.loads(res.stdout))


CASES = [
    # node, health, finding code, words in the reason
    ("m-healthy", "healthy", None, "4 GPUs healthy"),
    ("m-xid79", "unhealthy", "xid", "xid 79 on GPU 0000:48:00.0: fell off the bus"),
    ("m-ecc", "unhealthy", "ecc", "2 uncorrected ECC errors on GPU 0 (0000:18:00.0)"),
    ("m-driver", "unhealthy", "driver", "couldn't communicate with the NVIDIA driver"),
    ("m-hang", "unhealthy", "probe-hung", "slow: no answer in"),   # nvidia-smi's 2s, or the probe's 4s on a loaded box
    ("m-missing-gpu", "unhealthy", "gpu-missing", "saw 3 of 4 GPUs"),
    ("m-hot", "degraded", "hot", "GPU 0 (0000:18:00.0) at 95°C (limit 90°C)"),
    ("m-row-remap", "degraded", "row-remap-pending", "row remap pending on GPU 0"),
    ("m-refused", "unreachable", "unreachable", "connection refused"),
    ("m-nobanner", "unreachable", "unreachable", "no SSH banner"),
    ("m-auth", "unreachable", "auth-failed", "ssh authentication refused"),
    ("m-hostkey", "unreachable", "host-key-changed", "host key changed"),
    pytest.param("m-blackhole", "unreachable", "unreachable", "timed out after 2s", marks=requires_root),
]


@pytest.mark.parametrize("node,health,code,words", CASES)
def test_probe_classifies_failure_mode(probed, node, health, code, words):
    _, rows = probed
    row = rows[node]
    assert row["health"] == health, row
    assert words in row["reason"], row["reason"]
    if code:
        assert code in codes(row), row["findings"]
    else:
        assert row["findings"] == []


def test_probe_json_has_documented_keys(probed):
    _, rows = probed
    keys = {"name", "pool", "provider", "state", "health", "reason", "findings", "gpus_seen", "gpus_expected",
            "last_seen"}
    for row in rows.values():
        assert keys <= set(row), row
        for f in row["findings"]:
            assert set(f) == {"code", "severity", "gpu", "message"}


def test_probe_exits_1_when_a_node_is_not_healthy(probed):
    code, _ = probed
    assert code == 1


def test_probe_of_healthy_node_only_exits_0(fleet_file):
    res = gridctl("probe", "-f", fleet_file, "m-healthy")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "m-healthy" in res.stdout and "m-xid79" not in res.stdout


def test_probe_unknown_node_is_a_usage_error(fleet_file):
    res = gridctl("probe", "-f", fleet_file, "nope")
    assert res.returncode == 2
    assert "no node named nope" in res.stderr and "Traceback" not in res.stderr


def test_probe_changes_no_state(fleet_file):
    gridctl("probe", "-f", fleet_file, "m-healthy")
    assert not (fleet_file.parent / "state.db").exists()


@pytest.fixture(scope="module")
def reconciled(fleet_file):
    first = gridctl("reconcile", "-f", fleet_file)
    assert first.returncode == 0, first.stderr
    _, after_one = gridctl_json("nodes", "-f", fleet_file)
    second = gridctl("reconcile", "-f", fleet_file)
    assert second.returncode == 0, second.stderr
    _, after_two = gridctl_json("nodes", "-f", fleet_file)
    _, events = gridctl_json("events", "-f", fleet_file)
    return by_name(after_one), by_name(after_two), events, first.stdout


@pytest.mark.parametrize("node", ["m-xid79", "m-ecc", "m-driver", "m-missing-gpu", "m-hostkey"])
def test_fatal_finding_quarantines_at_once(reconciled, node):
    one, _, events, _ = reconciled
    assert one[node]["state"] == "quarantined", one[node]
    moves = [e for e in events if e["node"] == node and e["kind"] == "node-state"]
    assert moves and "-> quarantined:" in moves[-1]["message"]


def test_hung_nvidia_smi_quarantines_only_when_it_hangs_again(reconciled):
    one, two, _, _ = reconciled
    assert one["m-hang"]["state"] == "provisioning", one["m-hang"]       # one slow probe: no verdict yet
    # which budget runs out first (nvidia-smi's 2s or, on a loaded machine, the probe's 4s) varies
    assert " slow: no answer in " in one["m-hang"]["reason"] and one["m-hang"]["reason"].endswith(" (1 of 2)")
    assert two["m-hang"]["state"] == "quarantined", two["m-hang"]
    assert " hung: no answer in " in two["m-hang"]["reason"]
    assert two["m-hang"]["reason"].endswith(" (2 failed probes in a row)")


@pytest.mark.parametrize("node", ["m-hot", "m-row-remap"])
def test_degraded_node_is_suspect_not_quarantined(reconciled, node):
    one, two, _, _ = reconciled
    assert one[node]["state"] == "suspect"
    assert two[node]["state"] == "suspect"


@pytest.mark.parametrize("node", ["m-refused", "m-nobanner",
                                  pytest.param("m-blackhole", marks=requires_root)])
def test_silent_node_is_suspect_then_quarantined_after_unhealthy_after(reconciled, node):
    one, two, _, _ = reconciled
    # never answered yet: it stays provisioning (no work) on one silent probe, not quarantined
    assert one[node]["state"] == "provisioning", one[node]
    assert one[node]["health"] == "unreachable"
    assert two[node]["state"] == "quarantined", two[node]
    assert "2 failed probes in a row" in two[node]["reason"]


def test_healthy_node_becomes_ready(reconciled):
    one, _, _, _ = reconciled
    assert one["m-healthy"]["state"] == "ready"
    assert one["m-healthy"]["health"] == "healthy"
    assert one["m-healthy"]["gpus_seen"] == 4


def test_host_key_change_and_auth_failure_raise_alerts(reconciled):
    _, _, events, output = reconciled
    alerts = [e for e in events if e["kind"] == "alert"]
    assert any(e["node"] == "m-hostkey" and "host key changed" in e["message"] for e in alerts)
    assert any(e["node"] == "m-auth" and "authentication refused" in e["message"] for e in alerts)
    # alerts are raised once, not on every pass
    assert len([e for e in alerts if e["node"] == "m-hostkey"]) == 1
    assert "host key changed" in output


def test_changed_host_key_is_never_accepted(reconciled, ssh_fleet):
    pinned = ssh_fleet.known_hosts.read_text().splitlines()
    ip = ssh_fleet.nodes["m-hostkey"]["host"]
    entries = [line for line in pinned if line.startswith(f"[{ip}]:")]
    assert len(entries) == 1, entries   # only the wrong key we pinned; the presented one was not added
