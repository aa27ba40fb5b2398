"""health.classify (Observation -> Verdict) table-style, and the node state machine next_node.

Guards against the two classic failures of a fleet health tool: missing a dead GPU (a fatal
finding read as healthy) and killing healthy work over a transient probe failure (silence read as
evidence). Kernel-log and nvidia-smi inputs are the real samples in tests/fixtures.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridctl.health import Expectation, Thresholds, classify, condemns_attempts, next_node
from gridctl.models import (Contact, GpuReading, Health, NodeRecord, NodeState, Observation, Severity,
                            Verdict)
from gridctl.probe import parse_probe, parse_xids
from unit_support import fixture_lines, fixture_text

EXP = Expectation(gpus=8, max_gpu_temp_c=90.0, min_disk_free_pct=5.0, probe_timeout_s=15.0)
BUSES = ["18", "2a", "3a", "8a", "9a", "ab", "ba", "db"]     # GPU 3 sits at 0000:8a:00.0
BOOT = "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e"


def gpu(i: int, **kw) -> GpuReading:
    base = dict(index=i, uuid=f"GPU-{i:08d}", name="NVIDIA H100 80GB HBM3", bus_id=f"0000:{BUSES[i]}:00.0",
                temperature_c=40.0 + i, power_w=69.85, memory_total_mib=81559, memory_used_mib=1,
                utilization_pct=0.0, ecc_uncorrected_volatile=0, ecc_corrected_volatile=0,
                remapped_rows_pending=False, remapped_rows_failure=False, retired_pages_pending=None,
                hw_slowdown=False, thermal_slowdown=False, power_brake_slowdown=False, recovery_action="None")
    base.update(kw)
    return GpuReading(**base)


def obs(*, gpus=None, xid_lines=(), smi_rc=0, smi_errors=(), contact=Contact.OK, detail="", complete=True,
        boot_id=BOOT, disk=(50, 100), xid_source="journalctl", stuck=0, problems=(), node="n1") -> Observation:
    return Observation(
        node=node, contact=contact, started_at=1000.0, duration_s=0.4, detail=detail,
        node_time=1764180000 if contact is Contact.OK else None,
        boot_id=boot_id if contact is Contact.OK else None,
        smi_rc=smi_rc if contact is Contact.OK else None, smi_errors=tuple(smi_errors),
        gpus=tuple(gpus if gpus is not None else [gpu(i) for i in range(8)]) if contact is Contact.OK else (),
        xids=parse_xids(list(xid_lines)), xid_source=xid_source,
        disk_free_bytes=disk[0] if disk else None, disk_total_bytes=disk[1] if disk else None,
        stuck_smi=stuck, parse_problems=tuple(problems), complete=complete and contact is Contact.OK)


def silent(detail="connection timed out") -> Observation:
    return obs(contact=Contact.UNREACHABLE, detail=detail)


def with_gpu(i: int, **kw) -> list[GpuReading]:
    return [gpu(j, **kw) if j == i else gpu(j) for j in range(8)]


def xid_line(xid: int, rest: str, bus: str = "0000:8a:00") -> str:
    return f"2026-11-26T10:01:02+00:00 host kernel: NVRM: Xid (PCI:{bus}): {xid}, {rest}"


def codes(verdict: Verdict) -> set[str]:
    return {f.code for f in verdict.findings}


# ---------------------------------------------------------------- classify, table-style

CASES = [
    # id, observation, health, worst severity, finding code (or None), words in the reason
    ("all-good", obs(), Health.HEALTHY, Severity.INFO, None, "8 GPUs healthy"),
    ("xid79-journalctl", obs(xid_lines=fixture_lines("kernel/journalctl_short_iso_xid79.log")),
     Health.UNHEALTHY, Severity.FATAL, "xid", "xid 79 on GPU 3 (0000:8a:00.0): fell off the bus"),
    ("fallen-off-bus-3-lines", obs(xid_lines=fixture_lines("kernel/fallen_off_bus_no_xid.log")),
     Health.UNHEALTHY, Severity.FATAL, "xid", "xid 79 on GPU 0000:b3:00.0: fell off the bus"),
    ("xid13-app-error", obs(xid_lines=[xid_line(13, "Graphics SM Warp Exception")]),
     Health.HEALTHY, Severity.INFO, "xid", "8 GPUs healthy"),
    ("xid31-app-error", obs(xid_lines=[xid_line(31, "pid=1, Ch 00000010, intr 10000000. MMU Fault")]),
     Health.HEALTHY, Severity.INFO, "xid", "8 GPUs healthy"),
    ("xid43-app-error", obs(xid_lines=[xid_line(43, "pid=1, Ch 00000008")]),
     Health.HEALTHY, Severity.INFO, "xid", "8 GPUs healthy"),
    ("xid45-app-error", obs(xid_lines=[xid_line(45, "pid=1, Ch 00000008")]),
     Health.HEALTHY, Severity.INFO, "xid", "8 GPUs healthy"),
    ("xid13-31-43-45-together", obs(xid_lines=[xid_line(x, "app") for x in (13, 31, 43, 45)]),
     Health.HEALTHY, Severity.INFO, "xid", "8 GPUs healthy"),
    ("xid63-row-remap", obs(xid_lines=fixture_lines("kernel/xid63.log")),
     Health.DEGRADED, Severity.DEGRADED, "xid", "xid 63"),
    ("xid92-sbe-rate", obs(xid_lines=[xid_line(92, "High single-bit ECC error rate")]),
     Health.DEGRADED, Severity.DEGRADED, "xid", "xid 92 on GPU 3"),
    ("xid94-mig-contained", obs(xid_lines=fixture_lines("kernel/mig_xid94.log")),
     Health.DEGRADED, Severity.DEGRADED, "xid", "xid 94 on GPU 0000:01:00.0 GPU-I:05: contained memory error"),
    ("xid48-dbe", obs(xid_lines=[xid_line(48, "An uncorrectable double bit error")]),
     Health.UNHEALTHY, Severity.FATAL, "xid", "xid 48 on GPU 3"),
    ("xid95-mig-uncontained", obs(xid_lines=fixture_lines("kernel/mig_xid95.log")),
     Health.UNHEALTHY, Severity.FATAL, "xid", "xid 95 on GPU 0000:01:00.0 GPU-I:05: uncontained memory error"),
    ("xid140-ecc-escape", obs(xid_lines=[xid_line(140, "Unrecoverable ECC error")]),
     Health.UNHEALTHY, Severity.FATAL, "xid", "xid 140 on GPU 3"),
    ("xid119-gsp-timeout-dmesg", obs(xid_lines=fixture_lines("kernel/dmesg_xid119.log")),
     Health.UNHEALTHY, Severity.FATAL, "xid", "xid 119"),
    ("xid154-to-none", obs(xid_lines=[xid_line(154, "GPU recovery action changed from 0x4 (Drain and Reset) "
                                                    "to 0x0 (None)")]),
     Health.HEALTHY, Severity.INFO, "xid", "8 GPUs healthy"),
    ("xid154-to-drain-and-reset", obs(xid_lines=fixture_lines("kernel/xid154_drain_reset.log")),
     Health.UNHEALTHY, Severity.FATAL, "xid", "driver asks for 'Drain and Reset'"),
    ("ecc-uncorrected", obs(gpus=with_gpu(2, ecc_uncorrected_volatile=2)),
     Health.UNHEALTHY, Severity.FATAL, "ecc", "2 uncorrected ECC errors on GPU 2 (0000:3a:00.0)"),
    ("rc9-couldnt-communicate", obs(gpus=[], smi_rc=9, smi_errors=fixture_lines("smi/couldnt_communicate.txt")),
     Health.UNHEALTHY, Severity.FATAL, "driver", "couldn't communicate with the NVIDIA driver"),
    ("rc9-no-text", obs(gpus=[], smi_rc=9), Health.UNHEALTHY, Severity.FATAL, "driver", "rc 9"),
    ("rc18-version-mismatch", obs(gpus=[], smi_rc=18, smi_errors=fixture_lines("smi/version_mismatch.txt")),
     Health.UNHEALTHY, Severity.FATAL, "driver", "version mismatch"),
    ("rc15-no-text", obs(gpus=[], smi_rc=15), Health.UNHEALTHY, Severity.FATAL, "gpu-lost", "fallen off the bus"),
    ("rc15-gpu-is-lost", obs(gpus=[gpu(i) for i in range(7)], smi_rc=15,
                             smi_errors=fixture_lines("smi/gpu_is_lost.txt")),
     Health.UNHEALTHY, Severity.FATAL, "gpu-lost", "GPU 0000:02:00.0 unreachable: GPU is lost"),
    ("handle-unknown-error", obs(gpus=[gpu(i) for i in range(7)], smi_rc=15,
                                 smi_errors=fixture_lines("smi/device_handle_unknown_error.txt")),
     Health.UNHEALTHY, Severity.FATAL, "gpu-lost", "GPU 0000:0b:00.0 unreachable: Unknown Error"),
    ("rc124-smi-timed-out-is-slow-not-fatal", obs(gpus=[], smi_rc=124), Health.UNHEALTHY, Severity.UNHEALTHY,
     "probe-hung", "nvidia-smi slow: no answer in 7s"),
    ("rc137-smi-killed-is-slow-not-fatal", obs(gpus=[], smi_rc=137), Health.UNHEALTHY, Severity.UNHEALTHY,
     "probe-hung", "nvidia-smi slow: no answer in 7s"),
    ("rc124-after-3-rows-is-not-gpu-missing", obs(gpus=[gpu(i) for i in range(3)], smi_rc=124), Health.UNHEALTHY,
     Severity.UNHEALTHY, "probe-hung", "nvidia-smi slow: no answer in 7s"),
    ("fewer-gpus-than-expected", obs(gpus=[gpu(i) for i in range(7)]),
     Health.UNHEALTHY, Severity.FATAL, "gpu-missing", "saw 7 of 8 GPUs"),
    ("nvidia-smi-stuck-in-D", obs(stuck=1), Health.UNHEALTHY, Severity.FATAL, "smi-stuck", "driver wedged"),
    ("hot", obs(gpus=with_gpu(0, temperature_c=95.0)),
     Health.DEGRADED, Severity.DEGRADED, "hot", "GPU 0 (0000:18:00.0) at 95°C (limit 90°C)"),
    ("thermal-slowdown", obs(gpus=with_gpu(1, thermal_slowdown=True)),
     Health.DEGRADED, Severity.DEGRADED, "slowdown", "thermal slowdown active on GPU 1"),
    ("row-remap-pending", obs(gpus=with_gpu(5, remapped_rows_pending=True)),
     Health.DEGRADED, Severity.DEGRADED, "row-remap-pending", "row remap pending on GPU 5"),
    ("row-remap-failed", obs(gpus=with_gpu(5, remapped_rows_failure=True)),
     Health.UNHEALTHY, Severity.FATAL, "row-remap-failed", "row remapping failed on GPU 5"),
    ("recovery-action-reset", obs(gpus=with_gpu(6, recovery_action="GPU Reset")),
     Health.UNHEALTHY, Severity.FATAL, "recovery-action", "recovery 'GPU Reset' on GPU 6"),
    ("unknown-error-on-temperature", obs(gpus=with_gpu(4, temperature_c=None, unknown_fields=("temperature_c",))),
     Health.UNHEALTHY, Severity.UNHEALTHY, "read-failed", "temperature_c read failed ([Unknown Error]) on GPU 4"),
    ("disk-above-95pct", obs(disk=(3, 100)), Health.DEGRADED, Severity.DEGRADED, "disk-full", "97% full"),
    ("contact-unreachable", silent("connection refused"), Health.UNREACHABLE, Severity.UNHEALTHY, "unreachable",
     "unreachable: connection refused"),
    ("contact-auth", obs(contact=Contact.AUTH, detail="publickey refused"),
     Health.UNREACHABLE, Severity.UNHEALTHY, "auth-failed", "ssh authentication refused"),
    ("contact-host-key-changed", obs(contact=Contact.HOST_KEY, detail="[h100-a.example]:22 presented ssh-ed25519 "
                                     "SHA256:new, pinned SHA256:old in /root/.config/gridctl/known_hosts"),
     Health.UNREACHABLE, Severity.FATAL, "host-key-changed", "host key changed"),
    ("contact-host-key-unknown", obs(contact=Contact.HOST_KEY_UNKNOWN, detail="h host key unknown; policy strict"),
     Health.UNREACHABLE, Severity.UNHEALTHY, "host-key-unknown", "host key not trusted"),
    ("contact-hung-is-slow-not-fatal", obs(contact=Contact.HUNG, detail="no answer in 15s"),
     Health.UNHEALTHY, Severity.UNHEALTHY, "probe-hung", "probe slow: no answer in 15s while SSH answered"),
    ("incomplete-output", obs(complete=False, problems=("no end marker",)),
     Health.UNHEALTHY, Severity.UNHEALTHY, "probe-incomplete", "probe output incomplete"),
]


@pytest.mark.parametrize("observation, health, worst, code, words", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_classify(observation, health, worst, code, words):
    v = classify(observation, EXP)
    assert v.health is health, v
    assert v.worst is worst, v
    if code is not None:
        assert code in codes(v), v
    else:
        assert v.findings == ()
    assert words in v.reason, v.reason


def test_xid79_finding_as_the_json_documents_it():
    v = classify(obs(xid_lines=fixture_lines("kernel/journalctl_short_iso_xid79.log")), EXP)
    (f,) = [f for f in v.findings if f.code == "xid"]
    assert f.to_json() == {"code": "xid", "severity": "fatal", "gpu": 3,
                           "message": "xid 79 on GPU 3 (0000:8a:00.0): fell off the bus"}
    assert f.needs_reset


def test_app_xid_is_reported_as_info_for_the_job():
    v = classify(obs(xid_lines=[xid_line(13, "Graphics SM Warp Exception")]), EXP)
    (f,) = v.findings
    assert f.severity is Severity.INFO and f.gpu == 3 and "application error" in f.message


def test_app_xid_next_to_a_fatal_one_does_not_hide_it():
    v = classify(obs(xid_lines=[xid_line(45, "pid=1"), xid_line(79, "GPU has fallen off the bus.")]), EXP)
    assert v.worst is Severity.FATAL and v.reason.startswith("xid 79 on GPU 3")


@pytest.mark.parametrize("rel, rc, code", [
    ("probe/healthy_8xh100.out", 0, None),
    ("probe/xid79.out", 15, "xid"),
    ("probe/ecc.out", 0, "ecc"),
    ("probe/driver_rc9.out", 9, "driver"),
])
def test_full_probe_outputs_classify(rel, rc, code):
    o = parse_probe("n", fixture_text(rel), started_at=0, duration_s=0)
    assert o.smi_rc == rc
    v = classify(o, EXP)
    if code is None:
        assert v.health is Health.HEALTHY and v.reason == "8 GPUs healthy"
    else:
        assert v.health is Health.UNHEALTHY and v.worst is Severity.FATAL and code in codes(v)


def test_xid79_probe_output_names_the_lost_gpu_and_the_xid():
    o = parse_probe("n", fixture_text("probe/xid79.out"), started_at=0, duration_s=0)
    v = classify(o, EXP)
    assert {"xid", "gpu-lost", "gpu-missing"} <= codes(v)
    assert "xid 79 on GPU 0000:8a:00.0: fell off the bus" in v.reason


def test_garbage_probe_output_is_unhealthy_not_healthy():
    o = parse_probe("n", fixture_text("probe/garbage.out"), started_at=0, duration_s=0)
    v = classify(o, EXP)
    assert v.health is Health.UNHEALTHY and "probe-incomplete" in codes(v)
    assert "This account is currently not available." in v.reason


def test_truncated_probe_output_is_unhealthy():
    o = parse_probe("n", fixture_text("probe/truncated.out"), started_at=0, duration_s=0)
    v = classify(o, EXP)
    assert v.health is Health.UNHEALTHY and "probe-incomplete" in codes(v)


def test_truncated_probe_output_is_not_fatal_evidence():
    o = parse_probe("n", fixture_text("probe/truncated.out"), started_at=0, duration_s=0)
    v = classify(o, EXP)
    assert v.worst is not Severity.FATAL, v.findings


def test_changed_host_key_on_a_host_named_unknown_is_still_fatal():
    detail = ("[unknown-rack7.example]:22 presented ssh-ed25519 SHA256:new, pinned SHA256:old in "
              "/root/.config/gridctl/known_hosts")
    v = classify(obs(contact=Contact.HOST_KEY, detail=detail), EXP)
    assert "host-key-changed" in codes(v) and v.worst is Severity.FATAL


@pytest.mark.parametrize("contact", [Contact.AUTH, Contact.HOST_KEY, Contact.HOST_KEY_UNKNOWN])
def test_configuration_failures_alert(contact):
    v = classify(obs(contact=contact, detail="x"), EXP)
    assert any(f.alert for f in v.findings)


def test_silence_does_not_alert():
    assert not any(f.alert for f in classify(silent(), EXP).findings)


def test_disk_at_exactly_the_threshold_is_fine_and_below_it_is_degraded():
    assert "disk-full" not in codes(classify(obs(disk=(5, 100)), EXP))
    assert "disk-full" in codes(classify(obs(disk=(4, 100)), EXP))


def test_unreadable_kernel_log_is_info_not_a_failure():
    v = classify(obs(xid_source=None), EXP)
    assert v.health is Health.HEALTHY and "xid-unreadable" in codes(v)


def test_reason_lists_at_most_three_causes():
    gpus = [gpu(i, ecc_uncorrected_volatile=1) for i in range(8)]
    v = classify(obs(gpus=gpus), EXP)
    assert v.reason.count("uncorrected ECC") == 3 and v.reason.endswith("(+5 more)")


# ---------------------------------------------------------------- the state machine

TH = Thresholds(unhealthy_after=2, recover_after=3, stale_after_s=60.0)


def ready(**kw) -> NodeRecord:
    base = dict(name="n1", pool="p", provider="ssh", host="h", port=22, state=NodeState.READY,
                health=Health.HEALTHY, reason="8 GPUs healthy", boot_id=BOOT, last_seen=1000.0, last_good=1000.0,
                state_since=900.0, gpus_expected=8, gpus_seen=8, good=5)
    base.update(kw)
    return NodeRecord(**base)


def step(node: NodeRecord, o: Observation, now: float, th: Thresholds = TH, partitioned: bool = False):
    return next_node(node, o, classify(o, EXP), now, th, partitioned=partitioned)


def run(node: NodeRecord, observations, start: float = 1015.0, every: float = 15.0, **kw):
    """Feed observations one pass apart; return the final node and every event."""
    events = []
    for i, o in enumerate(observations):
        node, evs = step(node, o, start + i * every, **kw)
        events += evs
    return node, events


def state_events(events):
    return [e for e in events if e.kind == "node-state"]


def test_xid79_quarantines_node_at_once():
    node, events = step(ready(), obs(xid_lines=fixture_lines("kernel/journalctl_short_iso_xid79.log")), 1015.0)
    assert node.state is NodeState.QUARANTINED and node.needs_release
    assert node.reason == "xid 79 on GPU 3 (0000:8a:00.0): fell off the bus"
    (ev,) = state_events(events)
    assert ev.message == "ready -> quarantined: xid 79 on GPU 3 (0000:8a:00.0): fell off the bus"
    assert ev.severity == "warning" and ev.node == "n1"


@pytest.mark.parametrize("observation", [
    obs(gpus=[], smi_rc=9, smi_errors=fixture_lines("smi/couldnt_communicate.txt")),
    obs(gpus=with_gpu(2, ecc_uncorrected_volatile=2)),
    obs(gpus=[gpu(i) for i in range(7)]),
], ids=["driver-rc9", "ecc", "gpu-missing"])
def test_fatal_evidence_quarantines_at_once(observation):
    node, _ = step(ready(), observation, 1015.0)
    assert node.state is NodeState.QUARANTINED and node.needs_release


def test_one_silent_probe_only_makes_node_suspect():
    node, events = step(ready(), silent(), 1015.0)
    assert node.state is NodeState.SUSPECT and node.health is Health.UNREACHABLE
    assert node.failures == 1 and not node.needs_release
    assert node.last_seen == 1000.0          # silence is not an answer
    (ev,) = state_events(events)
    assert ev.message == "ready -> suspect: unreachable: connection timed out"


def test_silence_quarantines_after_unhealthy_after():
    node, events = run(ready(), [silent(), silent()])
    assert node.state is NodeState.QUARANTINED
    assert node.reason == "unreachable: connection timed out (2 failed probes in a row)"
    assert not node.needs_release            # silence is not a reset-class fault
    assert [e.message.split(":")[0] for e in state_events(events)] == ["ready -> suspect", "suspect -> quarantined"]


def test_unhealthy_after_is_honoured():
    th = Thresholds(unhealthy_after=4, recover_after=3, stale_after_s=3600.0)
    node, _ = run(ready(), [silent()] * 3, th=th)
    assert node.state is NodeState.SUSPECT
    node, _ = step(node, silent(), 1100.0, th)
    assert node.state is NodeState.QUARANTINED


def test_silence_never_quarantines_during_partition():
    node, events = run(ready(), [silent()] * 10, partitioned=True)    # 150 s: past unhealthy_after and stale_after
    assert node.state is NodeState.SUSPECT and node.failures == 10
    assert "fleet partition suspected: not quarantining" in node.reason
    assert [e.message.split(":")[0] for e in state_events(events)] == ["ready -> suspect"]


def test_partition_does_not_excuse_positive_evidence():
    node, _ = step(ready(), obs(xid_lines=fixture_lines("kernel/mig_xid95.log")), 1015.0, partitioned=True)
    assert node.state is NodeState.QUARANTINED


def test_stale_after_quarantines_silent_node():
    th = Thresholds(unhealthy_after=100, recover_after=3, stale_after_s=60.0)
    node, _ = step(ready(), silent(), 1030.0, th)
    assert node.state is NodeState.SUSPECT                   # 30 s without a good probe
    node, _ = step(node, silent(), 1061.0, th)
    assert node.state is NodeState.QUARANTINED               # 61 s
    assert node.reason.endswith("(no good probe for 61s)")


def test_degraded_node_is_suspect_not_quarantined():
    hot = obs(gpus=with_gpu(0, temperature_c=95.0))
    node, events = run(ready(), [hot] * 10)
    assert node.state is NodeState.SUSPECT and node.health is Health.DEGRADED
    assert node.failures == 0 and node.good == 0
    assert "95°C" in node.reason
    assert len(state_events(events)) == 1


def test_recovers_only_after_recover_after_good_probes():
    node, _ = step(ready(), silent(), 1015.0)
    assert node.state is NodeState.SUSPECT
    node, ev1 = step(node, obs(), 1030.0)
    assert node.state is NodeState.SUSPECT and node.reason.endswith("(recovering: 1/3 good probes)")
    node, ev2 = step(node, obs(), 1045.0)
    assert node.state is NodeState.SUSPECT and node.reason.endswith("(recovering: 2/3 good probes)")
    node, ev3 = step(node, obs(), 1060.0)
    assert node.state is NodeState.READY and node.reason == "3 good probes in a row"
    assert state_events(ev1 + ev2) == []
    assert [e.message for e in state_events(ev3)] == ["suspect -> ready: 3 good probes in a row"]


def test_a_bad_probe_restarts_the_recovery_count():
    node, _ = run(ready(), [silent(), obs(), obs(), silent(), obs(), obs()])
    assert node.state is NodeState.SUSPECT and node.good == 2


def test_silence_quarantine_recovers_after_good_probes_without_uncordon():
    node, _ = run(ready(), [silent(), silent()])
    assert node.state is NodeState.QUARANTINED
    node, _ = run(node, [obs()] * 3, start=1100.0)
    assert node.state is NodeState.READY


def test_reset_class_quarantine_waits_for_reboot_or_uncordon():
    xid79 = obs(xid_lines=fixture_lines("kernel/journalctl_short_iso_xid79.log"))
    node, _ = step(ready(), xid79, 1015.0)
    assert node.state is NodeState.QUARANTINED and node.needs_release

    node, events = run(node, [obs()] * 10, start=1030.0)   # same boot: good probes do not release
    assert node.state is NodeState.QUARANTINED and node.needs_release
    assert node.reason == "xid 79 on GPU 3 (0000:8a:00.0): fell off the bus (healthy now; waiting for uncordon or reboot)"
    assert state_events(events) == []

    rebooted = replace(obs(), boot_id="0a0b0c0d-new-boot")
    node, events = step(node, rebooted, 1200.0)
    assert [e.kind for e in events if e.kind == "node-rebooted"] == ["node-rebooted"]
    reboot_ev = next(e for e in events if e.kind == "node-rebooted")
    assert "6f1c2d3e -> 0a0b0c0d" in reboot_ev.message and reboot_ev.node == "n1"
    assert node.state is NodeState.READY and not node.needs_release and node.boot_id == "0a0b0c0d-new-boot"


def test_after_reboot_a_fresh_reset_class_quarantine_still_needs_good_probes():
    xid79 = obs(xid_lines=fixture_lines("kernel/journalctl_short_iso_xid79.log"))
    node, _ = step(ready(), xid79, 1015.0)
    node, _ = step(node, replace(obs(), boot_id="0a0b0c0d-new-boot"), 1030.0)
    assert node.state is NodeState.QUARANTINED and not node.needs_release
    node, _ = run(node, [replace(obs(), boot_id="0a0b0c0d-new-boot")] * 2, start=1045.0)
    assert node.state is NodeState.READY


def test_reboot_is_an_event_even_on_a_healthy_node():
    node, events = step(ready(), replace(obs(), boot_id="ffffffff-2"), 1015.0)
    assert node.state is NodeState.READY
    assert [e.kind for e in events] == ["node-rebooted"]


def test_second_fatal_cause_keeps_the_first_reason():
    node, _ = step(ready(), obs(xid_lines=fixture_lines("kernel/journalctl_short_iso_xid79.log")), 1015.0)
    node, events = step(node, obs(gpus=with_gpu(2, ecc_uncorrected_volatile=1)), 1030.0)
    assert node.reason.startswith("xid 79 on GPU 3") and "ecc" in {f.code for f in node.findings}
    assert state_events(events) == []


def test_alert_event_only_when_finding_is_new():
    auth = obs(contact=Contact.AUTH, detail="publickey refused")
    node, ev1 = step(ready(), auth, 1015.0)
    node, ev2 = step(node, auth, 1030.0)
    node, ev3 = step(node, obs(), 1045.0)
    node, ev4 = step(node, auth, 1060.0)
    alerts = [[e for e in evs if e.kind == "alert"] for evs in (ev1, ev2, ev3, ev4)]
    assert [len(a) for a in alerts] == [1, 0, 0, 1]
    assert alerts[0][0].severity == "alert" and "ssh authentication refused" in alerts[0][0].message


def test_host_key_changed_quarantines_and_alerts():
    o = obs(contact=Contact.HOST_KEY, detail="[h]:22 presented ssh-ed25519 SHA256:new, pinned SHA256:old")
    node, events = step(ready(), o, 1015.0)
    assert node.state is NodeState.QUARANTINED and node.needs_release
    assert [e.kind for e in events].count("alert") == 1


# ---------------------------------------------------------------- hangs: confirmed, never assumed (DESIGN 3)

SMI_SLOW = obs(gpus=[], smi_rc=124)                                  # nvidia-smi killed by `timeout` on the node
PROBE_SLOW = obs(contact=Contact.HUNG, detail="no end in 15s")        # the whole exec passed its deadline
HANGS = pytest.mark.parametrize("hang, words", [
    (SMI_SLOW, "nvidia-smi slow: no answer in 7s"),
    (PROBE_SLOW, "probe slow: no answer in 15s while SSH answered"),
], ids=["smi-timeout", "probe-deadline"])


@HANGS
def test_first_hang_makes_node_suspect_and_counts_toward_unhealthy_after(hang, words):
    node, events = step(ready(), hang, 1015.0)
    assert node.state is NodeState.SUSPECT and not node.needs_release
    assert node.reason == f"{words} (1 of 2)"
    assert [e.message for e in state_events(events)] == [f"ready -> suspect: {words} (1 of 2)"]


@HANGS
def test_second_hang_in_a_row_quarantines_without_needing_a_reset(hang, words):
    node, events = run(ready(), [hang, hang])
    hung = words.replace(" slow:", " hung:")
    assert node.state is NodeState.QUARANTINED and not node.needs_release
    assert node.reason == f"{hung} (2 failed probes in a row)"
    assert [e.message for e in state_events(events)] == [
        f"ready -> suspect: {words} (1 of 2)", f"suspect -> quarantined: {hung} (2 failed probes in a row)"]
    (f,) = [f for f in node.findings if f.code == "probe-hung"]
    assert f.severity is Severity.FATAL and f.message == f"{hung} (2 failed probes in a row)"


def test_hang_count_follows_unhealthy_after():
    th = Thresholds(unhealthy_after=3, recover_after=3, stale_after_s=3600.0)
    node, _ = step(ready(), SMI_SLOW, 1015.0, th)
    assert node.state is NodeState.SUSPECT and node.reason == "nvidia-smi slow: no answer in 7s (1 of 3)"
    node, _ = step(node, SMI_SLOW, 1030.0, th)
    assert node.state is NodeState.SUSPECT and node.reason == "nvidia-smi slow: no answer in 7s (2 of 3)"
    node, _ = step(node, SMI_SLOW, 1045.0, th)
    assert node.state is NodeState.QUARANTINED and node.reason == "nvidia-smi hung: no answer in 7s (3 failed probes in a row)"


@HANGS
def test_one_hang_then_healthy_probes_return_the_node_to_ready(hang, words):
    node, events = run(ready(), [hang, obs(), obs(), obs()])
    assert node.state is NodeState.READY and node.reason == "3 good probes in a row"
    assert [e.message.split(":")[0] for e in state_events(events)] == ["ready -> suspect", "suspect -> ready"]


@HANGS
def test_hang_quarantine_returns_to_ready_by_itself_after_recover_after_good_probes(hang, words):
    node, _ = run(ready(), [hang, hang])
    assert node.state is NodeState.QUARANTINED
    node, events = run(node, [obs()] * 2, start=1100.0)
    assert node.state is NodeState.QUARANTINED and node.reason.endswith("(recovering: 2/3 good probes)")
    node, events = step(node, obs(), 1130.0)
    assert node.state is NodeState.READY and not node.needs_release
    assert [e.message for e in state_events(events)] == ["quarantined -> ready: 3 good probes in a row"]


def test_hang_with_nvidia_smi_in_d_state_over_a_minute_is_fatal_at_once():
    node, _ = step(ready(), replace(SMI_SLOW, stuck_smi=1), 1015.0)
    assert node.state is NodeState.QUARANTINED and node.needs_release
    assert "stuck in D state for over a minute" in node.reason


@pytest.mark.parametrize("xid", [119, 120])
def test_hang_with_a_gsp_timeout_xid_is_fatal_at_once(xid):
    gsp = replace(SMI_SLOW, xids=parse_xids([xid_line(xid, "pid=1, name=nvidia-smi, Timeout after 6s of waiting "
                                                            "for RPC response from GPU3 GSP!")]))
    node, _ = step(ready(), gsp, 1015.0)
    assert node.state is NodeState.QUARANTINED and node.needs_release
    assert node.reason.startswith(f"xid {xid} on GPU 0000:8a:00.0: GSP")


def test_xid119_from_the_real_dmesg_sample_is_fatal_at_once():
    node, _ = step(ready(), obs(xid_lines=fixture_lines("kernel/dmesg_xid119.log")), 1015.0)
    assert node.state is NodeState.QUARANTINED and node.needs_release and "GSP RPC timeout" in node.reason


# one observation of each kind of failed or slow probe that is not positive evidence of a fatal fault
ONE_BAD_PROBE = {
    "probe-deadline": PROBE_SLOW, "smi-rc124": SMI_SLOW, "smi-rc137": obs(gpus=[], smi_rc=137),
    "smi-rc124-after-3-rows": obs(gpus=[gpu(i) for i in range(3)], smi_rc=124),
    "incomplete": obs(complete=False, problems=("no end marker",)),
    "read-failed": obs(gpus=with_gpu(4, temperature_c=None, unknown_fields=("temperature_c",))),
    "smi-failed": obs(gpus=[], smi_rc=3, smi_errors=("Unable to query",)),
    "smi-missing": obs(gpus=[], smi_rc=127), "no-smi-section": obs(gpus=[], smi_rc=None),
    "unreachable": silent(), "auth": obs(contact=Contact.AUTH, detail="refused"),
    "host-key-unknown": obs(contact=Contact.HOST_KEY_UNKNOWN, detail="strict"),
}
LONG_DEGRADED = ready(state=NodeState.SUSPECT, health=Health.DEGRADED, reason="GPU 0 at 95°C", good=0,
                      last_good=100.0, state_since=100.0)                 # degraded for 15 minutes
CRON_READY = ready(last_good=700.0, last_seen=700.0)                      # one pass every 5 minutes


@pytest.mark.parametrize("before", [ready(), LONG_DEGRADED, CRON_READY], ids=["ready", "long-degraded", "cron"])
@pytest.mark.parametrize("kind", sorted(ONE_BAD_PROBE))
def test_a_single_failed_or_slow_probe_never_quarantines(before, kind):
    node, _ = step(before, ONE_BAD_PROBE[kind], 1015.0)
    assert node.state is NodeState.SUSPECT, (node.state, node.reason)
    assert not node.needs_release


# what the job planner may kill on (health.condemns_attempts): evidence, never one bad probe

@pytest.mark.parametrize("history, condemned", [
    (["xid79"], True),
    (["smi-slow"], False),
    (["smi-slow", "smi-slow"], True),                     # a confirmed hang
    (["read-failed", "read-failed"], True),               # unhealthy_after answered failures
    (["silent", "silent", "good"], False),                # quarantined for silence, answering healthy
    (["silent", "silent", "good", "smi-slow"], False),    # ... then one slow probe while it recovers
    (["silent", "silent", "good", "hung"], False),
    (["silent", "silent", "good", "incomplete"], False),
    (["silent", "silent", "good", "smi-slow", "smi-slow"], True),
    (["hot"], False),
], ids=lambda v: "-".join(v) if isinstance(v, list) else str(v))
def test_only_evidence_condemns_the_attempts_on_a_node(history, condemned):
    node, _ = run(ready(), [_KINDS[k] for k in history])
    assert condemns_attempts(node, TH) is condemned, (node.state, node.reason, node.failures)


def test_provisioning_node_becomes_ready_on_first_good_probe():
    node = ready(state=NodeState.PROVISIONING, reason="waiting for the first healthy probe", good=0)
    node, events = step(node, obs(), 1015.0)
    assert node.state is NodeState.READY
    assert [e.message for e in state_events(events)] == ["provisioning -> ready: 8 GPUs healthy"]


def test_gpus_seen_and_last_seen_follow_answers_only():
    node, _ = step(ready(), obs(gpus=[gpu(i) for i in range(7)]), 1015.0)
    assert node.gpus_seen == 7 and node.last_seen == 1015.0
    node, _ = step(node, silent(), 1030.0)
    assert node.gpus_seen == 7 and node.last_seen == 1015.0


_KINDS = {
    "good": obs(), "silent": silent(), "hot": obs(gpus=with_gpu(0, temperature_c=99.0)),
    "xid79": obs(xid_lines=fixture_lines("kernel/journalctl_short_iso_xid79.log")),
    "read-failed": obs(gpus=with_gpu(4, temperature_c=None, unknown_fields=("temperature_c",))),
    "auth": obs(contact=Contact.AUTH, detail="refused"), "hung": obs(contact=Contact.HUNG),
    "incomplete": obs(complete=False), "rebooted": replace(obs(), boot_id="b00710-2"),
    "smi-slow": obs(gpus=[], smi_rc=124),
}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(sorted(_KINDS)), min_size=1, max_size=25), st.booleans())
def test_every_transition_has_an_event_with_reason(kinds, partitioned):
    node = ready()
    now = 1000.0
    for kind in kinds:
        now += 15.0
        before = node
        node, events = step(node, _KINDS[kind], now, partitioned=partitioned)
        transitions = state_events(events)
        if node.state is before.state:
            assert transitions == []
        else:
            (ev,) = transitions
            prefix = f"{before.state.value} -> {node.state.value}: "
            assert ev.message.startswith(prefix) and len(ev.message) > len(prefix)
            assert ev.node == "n1" and ev.time == now and node.state_since == now
        assert node.reason
        # silence alone never quarantines while our side looks partitioned
        if partitioned and kind == "silent" and before.state is not NodeState.QUARANTINED:
            assert node.state is not NodeState.QUARANTINED
        # one failed or slow probe after one that did not fail quarantines only on fatal evidence
        if before.failures == 0 and before.state is not NodeState.QUARANTINED and \
                classify(_KINDS[kind], EXP).worst is not Severity.FATAL:
            assert node.state is not NodeState.QUARANTINED, (kinds, node.reason)
        # only a healthy probe can make a node ready
        if node.state is NodeState.READY and before.state is not NodeState.READY:
            assert node.health is Health.HEALTHY
        assert node.needs_release is False or node.state is NodeState.QUARANTINED
