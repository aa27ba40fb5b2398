"""What the agent path adds to a probe's output and its findings: the `nvml` section (NVML did not
initialise, the agent asked nvidia-smi) and XIDs NVML pushed, read by the one parser and classifier."""

from __future__ import annotations

import pytest

from gridctl.health import classify
from gridctl.models import Expectation, Severity
from gridctl.probe import parse_probe

N = "ab" * 16
ROW = "0, GPU-1, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 40, 70.00, 81559, 1, 0, 0, 0, No, No, No, Not Active, Not Active, Not Active, None"
QUERY = ("index,uuid,name,pci.bus_id,temperature.gpu,power.draw,memory.total,memory.used,utilization.gpu,"
         "ecc.errors.uncorrected.volatile.total,ecc.errors.corrected.volatile.total,retired_pages.pending,"
         "remapped_rows.pending,remapped_rows.failure,clocks_throttle_reasons.hw_slowdown,"
         "clocks_throttle_reasons.hw_thermal_slowdown,clocks_throttle_reasons.hw_power_brake_slowdown,gpu_recovery_action")


def output(nvml: str | None, rc: int = 0, rows: tuple[str, ...] = (ROW,), xid_lines: tuple[str, ...] = ()) -> str:
    lines = [f"@{N} gridctl-probe 2", f"@{N} time 1764180000", f"@{N} boot_id b-1", f"@{N} stuck nvidia-smi=0"]
    if nvml:
        lines.append(f"@{N} nvml error={nvml}")
    lines += [f"@{N} nvidia-smi rc={rc} query={QUERY}", *("|" + r for r in rows),
              f"@{N} xid source=journalctl since=0 uptime=100", *("|" + x for x in xid_lines), f"@{N} end"]
    return "\n".join(lines) + "\n"


def verdict(text: str):
    obs = parse_probe("n", text, started_at=0, duration_s=0, nonce=N)
    return obs, classify(obs, Expectation(gpus=1))


@pytest.mark.parametrize("nvml, rc, rows, code, severity", [
    ("9 Driver Not Loaded", 9, ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",),
     "driver", Severity.FATAL),
    ("9 Driver Not Loaded", 0, (ROW,), "driver", Severity.FATAL),           # nvidia-smi answered, NVML did not
    ("18 RM has detected an NVML/RM version mismatch.", 0, (ROW,), "driver", Severity.FATAL),
    ("12 NVML Shared Library Not Found", 0, (ROW,), "nvml-unavailable", Severity.INFO),
])
def test_nvml_that_did_not_initialise_is_a_finding_by_its_code(nvml, rc, rows, code, severity):
    obs, v = verdict(output(nvml, rc, rows))
    assert obs.nvml_error == nvml
    found = [f for f in v.findings if f.code == code]
    assert len(found) == 1 and found[0].severity is severity


def test_no_nvml_section_means_no_nvml_finding():
    obs, v = verdict(output(None))
    assert obs.nvml_error is None and v.findings == ()


def test_xid_pushed_by_nvml_reads_as_a_kernel_xid():
    pushed = "2026-12-02T07:00:00+0000 nvml: NVRM: Xid (PCI:00000000:18:00.0): 79, reported by an NVML event"
    obs, v = verdict(output(None, xid_lines=(pushed,)))
    assert [(x.xid, x.bus_id) for x in obs.xids] == [(79, "0000:18:00.0")]
    assert any(f.code == "xid" and f.severity is Severity.FATAL and f.gpu == 0 for f in v.findings)
