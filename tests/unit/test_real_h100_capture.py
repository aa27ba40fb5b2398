"""The parser and classifier against output captured on a real NVIDIA H100 (tests/fixtures/real/).

Guards against: our fake nvidia-smi drifting from what a real driver prints (units, [N/A] tokens,
"Not Active", the comma fraction in `dmesg --time-format iso`), and a healthy real GPU being
reported as anything but healthy.
"""

from __future__ import annotations

from gridctl.health import Expectation, classify
from gridctl.models import Contact, Health
from gridctl.probe import FULL_FIELDS, normalise_bus_id, parse_gpu_rows, parse_probe, parse_xids, query
from unit_support import fixture_lines, fixture_text

UUID = "GPU-47ae04c4-fbe5-3ebc-707e-e2f63ddad76d"


def test_real_probe_output_parses_to_one_healthy_h100():
    obs = parse_probe("h100", fixture_text("real/h100_probe.out"), started_at=1795739732.0, duration_s=0.07)
    assert obs.contact is Contact.OK and obs.complete and not obs.parse_problems
    assert obs.boot_id == "e7b56775-feef-49e1-9de1-199aba396e07"
    assert obs.smi_rc == 0 and obs.xid_source == "dmesg" and obs.xids == ()
    (gpu,) = obs.gpus
    assert (gpu.index, gpu.uuid, gpu.name) == (0, UUID, "NVIDIA H100 80GB HBM3")
    assert gpu.bus_id == normalise_bus_id("00000000:00:06.0") == "0000:00:06.0"
    assert (gpu.temperature_c, gpu.memory_total_mib, gpu.ecc_uncorrected_volatile) == (47.0, 81559, 0)
    assert gpu.retired_pages_pending is None            # [N/A] on H100: absent, not an error
    assert gpu.remapped_rows_pending is False and gpu.hw_slowdown is False
    assert gpu.recovery_action == "None" and gpu.unknown_fields == ()
    assert obs.disk_free_bytes == 68701442048 and obs.disk_total_bytes == 270553174016
    verdict = classify(obs, Expectation(gpus=1))
    assert verdict.health is Health.HEALTHY, verdict
    assert classify(obs, Expectation(gpus=2)).health is Health.UNHEALTHY   # a GPU missing is fatal


def test_real_csv_without_units_matches_the_probe_columns():
    rows, errors, _ = parse_gpu_rows(query(FULL_FIELDS).split(","), fixture_lines("real/h100_smi_full.csv"))
    assert errors == () and len(rows) == 1 and rows[0].uuid == UUID and rows[0].power_w is not None


def test_real_kernel_lines_from_the_nvidia_driver_are_not_xids():
    lines = fixture_lines("real/h100_dmesg_nvrm.log")
    assert len(lines) == 3 and all("NVRM" in line for line in lines)
    assert parse_xids(lines) == ()


def test_real_probe_reports_a_running_attempt_pinned_by_gpu_uuid():
    obs = parse_probe("h100", fixture_text("real/h100_probe_with_attempt.out"), started_at=1795745837.0,
                      duration_s=0.1)
    assert obs.complete and classify(obs, Expectation(gpus=1)).health is Health.HEALTHY
    (report,) = obs.attempts
    assert (report.id, report.pid, report.alive, report.exit_code) == ("smoke.1", 647, True, None)
    assert report.node_now - report.heartbeat_at == 0 and report.started_at == 1795745832
    assert obs.gpus[0].memory_used_mib > 2000          # the attempt's 2 GiB allocation is visible
    (app,) = fixture_lines("real/h100_compute_apps.csv")
    pid, gpu_uuid, used = [x.strip() for x in app.split(",")]
    assert gpu_uuid == obs.gpus[0].uuid and int(used) > 2000
