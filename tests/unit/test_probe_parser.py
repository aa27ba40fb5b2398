"""The probe parser against real kernel-log / nvidia-smi samples (tests/fixtures) and random input.

Guards against: missing an XID because its line format differs (journalctl, dmesg -T, MIG, the
multi-line "fallen off the bus"), reading [Unknown Error] as a clean value, and a node's odd
output crashing the sweep (parse_probe must never raise).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridctl.models import Contact, GpuReading, Observation
from gridctl.probe import (CORE_FIELDS, FULL_FIELDS, MAX_OUTPUT_BYTES, normalise_bus_id, parse_gpu_rows,
                           _csv_row, _value, parse_probe, parse_xids, query)
from unit_support import FIXTURES, fixture_lines, fixture_text

FULL_COLUMNS = query(FULL_FIELDS).split(",")


def _probe(rel: str, **kw) -> Observation:
    return parse_probe("node-a", fixture_text(rel), started_at=1000.0, duration_s=0.5, **kw)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp()


# ---------------------------------------------------------------- fixtures are sourced

def test_every_fixture_names_its_source():
    files = [p for p in FIXTURES.rglob("*") if p.is_file()]
    assert len(files) >= 20
    for path in files:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# source: "), f"{path} does not start with '# source:'"


# ---------------------------------------------------------------- parse_xids

@pytest.mark.parametrize("rel, xid, bus, mig, text_start", [
    ("kernel/journalctl_xid79.log", 79, "0000:2b:00.0", None, "GPU has fallen off the bus."),
    ("kernel/journalctl_short_iso_xid79.log", 79, "0000:8a:00.0", None, "GPU has fallen off the bus."),
    ("kernel/dmesg_xid119.log", 119, "0000:9b:00.0", None, "pid=2024380, name=nvidia-smi, Timeout after 6s"),
    ("kernel/mig_xid94.log", 94, "0000:01:00.0", "GPU-I:05", "pid=7194, Contained: CE User Channel"),
    ("kernel/mig_xid95.log", 95, "0000:01:00.0", "GPU-I:05", "pid=7062, Uncontained: LTC TAG"),
    ("kernel/xid63.log", 63, "0000:10:1c.0", None, "pid=1896, Row Remapper: New row marked for remapping"),
    ("kernel/xid154_drain_reset.log", 154, "0009:01:00.0", None,
     "GPU recovery action changed from 0x0 (None) to 0x4 (Drain and Reset)"),
    ("kernel/fallen_off_bus_no_xid.log", 79, "0000:b3:00.0", None, "GPU has fallen off the bus."),
    ("kernel/nvidia_docs_xid14.log", 14, "0000:03:00.0", None, "Channel 00000001"),
], ids=["journalctl-xid79", "short-iso-xid79", "dmesg-T-xid119", "mig-xid94", "mig-xid95", "xid63",
        "xid154-drain-and-reset", "fallen-off-bus-3-lines-no-xid", "nvidia-docs-no-PCI-prefix-xid14"])
def test_parse_xids_reads_every_real_line_format(rel, xid, bus, mig, text_start):
    events = parse_xids(fixture_lines(rel))
    assert len(events) == 1, events
    ev = events[0]
    assert (ev.xid, ev.bus_id, ev.mig) == (xid, bus, mig)
    assert ev.text.startswith(text_start)


def test_short_iso_line_keeps_its_time_and_other_formats_have_none():
    (iso,) = parse_xids(fixture_lines("kernel/journalctl_short_iso_xid79.log"))
    assert iso.time == "2026-11-26T10:01:02"
    (dmesg,) = parse_xids(fixture_lines("kernel/dmesg_xid119.log"))
    assert dmesg.time is None


def test_since_skips_older_iso_lines_but_keeps_lines_without_a_time():
    lines = fixture_lines("kernel/journalctl_short_iso_xid79.log") + fixture_lines("kernel/dmesg_xid119.log")
    stamp = _epoch("2026-11-26T10:01:02")
    assert {e.xid for e in parse_xids(lines, since=stamp - 1)} == {79, 119}
    assert {e.xid for e in parse_xids(lines, since=stamp)} == {79, 119}   # not older: kept
    assert {e.xid for e in parse_xids(lines, since=stamp + 1)} == {119}


def test_all_formats_in_one_log_give_one_event_each():
    rels = ["kernel/journalctl_xid79.log", "kernel/dmesg_xid119.log", "kernel/mig_xid94.log", "kernel/mig_xid95.log",
            "kernel/xid63.log", "kernel/xid154_drain_reset.log", "kernel/fallen_off_bus_no_xid.log"]
    lines = [line for rel in rels for line in fixture_lines(rel)]
    got = {(e.xid, e.bus_id) for e in parse_xids(lines)}
    assert got == {(79, "0000:2b:00.0"), (119, "0000:9b:00.0"), (94, "0000:01:00.0"), (95, "0000:01:00.0"),
                   (63, "0000:10:1c.0"), (154, "0009:01:00.0"), (79, "0000:b3:00.0")}


def test_repeated_xid_on_one_gpu_is_one_event_with_the_newest_text_last():
    lines = ["2026-11-26T10:00:00+00:00 h kernel: NVRM: Xid (PCI:0000:10:1c): 63, pid=1, first",
             "2026-11-26T10:00:05+00:00 h kernel: NVRM: Xid (PCI:0000:9b:00): 119, pid=2, other",
             "2026-11-26T10:00:09+00:00 h kernel: NVRM: Xid (PCI:0000:10:1c): 63, pid=3, second"]
    events = parse_xids(lines)
    assert [(e.xid, e.text) for e in events] == [(119, "pid=2, other"), (63, "pid=3, second")]


@pytest.mark.parametrize("prefix", ["2026-11-26T10:01:02+00:00 host kernel: ", "[Sun Feb 23 16:24:18 2025] ",
                                    "May 18 19:02:39 kernel: "], ids=["short-iso", "dmesg-T", "journalctl"])
def test_fallen_off_bus_lines_with_a_log_prefix(prefix):
    lines = [prefix + line for line in fixture_lines("kernel/fallen_off_bus_no_xid.log")]
    (ev,) = parse_xids(lines)
    assert (ev.xid, ev.bus_id) == (79, "0000:b3:00.0")


def test_fallen_off_bus_is_attributed_to_the_gpu_named_just_before():
    lines = (["NVRM: GPU at PCI:0000:03:00: GPU-b850f46d-…"] + fixture_lines("kernel/fallen_off_bus_no_xid.log"))
    (ev,) = parse_xids(lines)
    assert ev.bus_id == "0000:b3:00.0"


def test_xid79_line_and_fallen_off_bus_text_for_one_gpu_are_one_event():
    lines = ["NVRM: Xid (PCI:0000:b3:00): 79, pid=0, GPU has fallen off the bus."] + \
        fixture_lines("kernel/fallen_off_bus_no_xid.log")
    (ev,) = parse_xids(lines)
    assert (ev.xid, ev.bus_id) == (79, "0000:b3:00.0")


def test_fallen_off_bus_without_a_gpu_line_before_it_still_counts_as_xid79():
    (ev,) = parse_xids(["NVRM: fallen off the bus and is not responding to commands."])
    assert ev.xid == 79 and ev.bus_id == "unknown"


def test_lines_that_are_not_nvrm_are_ignored():
    lines = ["May 18 19:02:39 kernel: usb 1-1: new high-speed USB device",
             "task python:1234 blocked for more than 120 seconds.",
             "the GPU has fallen off the bus (a user-space message)"]
    assert parse_xids(lines) == ()


# ---------------------------------------------------------------- normalise_bus_id

@pytest.mark.parametrize("raw, want", [
    ("00000000:8A:00.0", "0000:8a:00.0"),       # nvidia-smi pci.bus_id
    ("PCI:0000:8a:00", "0000:8a:00.0"),         # kernel log, no function
    ("0000:10:1c", "0000:10:1c.0"),
    ("0009:01:00", "0009:01:00.0"),             # non-zero domain
    (" 00000000:DB:00.0 ", "0000:db:00.0"),
    ("0000:0B:00.0", "0000:0b:00.0"),           # nvidia-smi error text
    ("0000:b3:00.0", "0000:b3:00.0"),
    ("not-a-bus-id", "not-a-bus-id"),
])
def test_normalise_bus_id(raw, want):
    assert normalise_bus_id(raw) == want
    assert normalise_bus_id(want) == want   # idempotent


def test_smi_and_kernel_spellings_of_one_gpu_normalise_equal():
    assert normalise_bus_id("00000000:8A:00.0") == normalise_bus_id("PCI:0000:8a:00")


# ---------------------------------------------------------------- parse_gpu_rows

def _csv_rows() -> tuple[tuple[GpuReading, ...], tuple[str, ...]]:
    gpus, errors, _ = parse_gpu_rows(FULL_COLUMNS, fixture_lines("smi/csv_tokens.csv"))
    return gpus, errors


def test_clean_row_reads_every_field():
    gpus, errors = _csv_rows()
    assert errors == ()
    g = gpus[0]
    assert g == GpuReading(index=0, uuid="GPU-5f0e2c1a-0000-4000-8000-000000000000", name="NVIDIA H100 80GB HBM3",
                           bus_id="0000:18:00.0", temperature_c=41.0, power_w=69.85, memory_total_mib=81559,
                           memory_used_mib=1, utilization_pct=0.0, ecc_uncorrected_volatile=0,
                           ecc_corrected_volatile=0, remapped_rows_pending=False, remapped_rows_failure=False,
                           retired_pages_pending=None, hw_slowdown=False, thermal_slowdown=False,
                           power_brake_slowdown=False, recovery_action="None", unknown_fields=())


def test_na_and_not_supported_are_absent_not_zero_and_not_failures():
    gpus, _ = _csv_rows()
    g = gpus[1]
    assert g.power_w is None and g.ecc_uncorrected_volatile is None and g.ecc_corrected_volatile is None
    assert g.recovery_action is None and g.retired_pages_pending is None
    assert g.unknown_fields == ()


def test_unknown_error_on_a_health_field_is_a_failed_read():
    gpus, _ = _csv_rows()
    g = gpus[2]
    assert g.temperature_c is None
    # power.draw is not a health field: [Unknown Error] there is just absent
    assert g.power_w is None
    assert g.unknown_fields == ("temperature_c",)


def test_insufficient_permissions_is_absent():
    gpus, _ = _csv_rows()
    assert gpus[3].ecc_uncorrected_volatile is None
    assert gpus[3].unknown_fields == ()


@pytest.mark.parametrize("column, field", [
    ("ecc.errors.uncorrected.volatile.total", "ecc_uncorrected_volatile"),
    ("remapped_rows.pending", "remapped_rows_pending"),
    ("remapped_rows.failure", "remapped_rows_failure"),
    ("retired_pages.pending", "retired_pages_pending"),
    ("gpu_recovery_action", "recovery_action"),
])
def test_unknown_error_vs_absent_on_each_health_field(column, field):
    columns = ["index", column]
    (unknown,), _, _ = parse_gpu_rows(columns, ["0, [Unknown Error]"])
    (absent,), _, _ = parse_gpu_rows(columns, ["0, [N/A]"])
    assert getattr(unknown, field) is None and getattr(absent, field) is None
    assert unknown.unknown_fields == (field,)
    assert absent.unknown_fields == ()


@pytest.mark.parametrize("raw, want", [("Active", True), ("Not Active", False), ("Yes", True), ("No", False),
                                       ("[N/A]", None)])
def test_boolean_fields(raw, want):
    (g,), _, _ = parse_gpu_rows(["index", "clocks_event_reasons.hw_thermal_slowdown"], [f"0, {raw}"])
    assert g.thermal_slowdown is want


def test_core_query_and_event_reason_alias_map_to_the_same_fields():
    cols = query(CORE_FIELDS).split(",")
    assert parse_gpu_rows(cols, [])[0] == ()
    alias = [c.replace("clocks_throttle_reasons", "clocks_event_reasons") for c in cols]
    line = ("0, GPU-x, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 41, 69.85, 81559, 1, 0, 0, 0, [N/A], No, No, "
            "Active, Not Active, Not Active")
    (a,), _, _ = parse_gpu_rows(cols, [line])
    (b,), _, _ = parse_gpu_rows(alias, [line])
    assert a == b and a.hw_slowdown is True and a.thermal_slowdown is False


@pytest.mark.parametrize("rel", ["smi/couldnt_communicate.txt", "smi/device_handle_unknown_error.txt",
                                 "smi/gpu_is_lost.txt", "smi/version_mismatch.txt"])
def test_nvidia_smi_failure_text_comes_back_as_errors_not_rows(rel):
    lines = fixture_lines(rel)
    gpus, errors, _ = parse_gpu_rows(FULL_COLUMNS, lines)
    assert gpus == ()
    assert errors == tuple(line.strip() for line in lines)


def test_row_with_wrong_column_count_is_an_error():
    gpus, errors, _ = parse_gpu_rows(["index", "uuid", "name"], ["0, not-a-uuid", "", "1, GPU-y, NVIDIA H100"])
    assert [g.index for g in gpus] == [1]
    assert errors == ("0, not-a-uuid",)


def test_row_in_the_design_example_order_is_read_by_position_and_reported():
    row = "0, GPU-1a2b, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 81559, 1203, 41, 71.23, 0, 0"   # DESIGN section 4
    text = f"@gridctl-probe 1\n@nvidia-smi rc=0 query={query(FULL_FIELDS)}\n{row}\n@end\n"
    obs = parse_probe("n", text, started_at=0, duration_s=0)
    (g,) = obs.gpus
    assert (g.index, g.bus_id, g.memory_total_mib, g.memory_used_mib, g.temperature_c, g.power_w,
            g.ecc_uncorrected_volatile) == (0, "0000:18:00.0", 81559, 1203, 41.0, 71.23, 0)
    assert any("read by position" in p for p in obs.parse_problems)


# ---------------------------------------------------------------- parse_probe on whole outputs

def test_healthy_8xh100_output():
    obs = _probe("probe/healthy_8xh100.out")
    assert obs.contact is Contact.OK and obs.complete
    assert obs.node == "node-a" and obs.started_at == 1000.0 and obs.duration_s == 0.5
    assert obs.node_time == 1764180000
    assert obs.boot_id == "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e"
    assert obs.smi_rc == 0 and obs.smi_fields == tuple(FULL_COLUMNS) and obs.smi_errors == ()
    assert [g.index for g in obs.gpus] == list(range(8))
    assert [g.bus_id for g in obs.gpus][4] == "0000:8a:00.0"
    assert all(g.unknown_fields == () and g.ecc_uncorrected_volatile == 0 for g in obs.gpus)
    assert obs.xid_source == "journalctl" and obs.xids == ()
    assert (obs.disk_free_bytes, obs.disk_total_bytes) == (51234567, 98765432)
    assert obs.stuck_smi == 0 and obs.parse_problems == ()


def test_xid79_output():
    obs = _probe("probe/xid79.out")
    assert obs.complete and obs.smi_rc == 15
    assert len(obs.gpus) == 7 and 4 not in [g.index for g in obs.gpus]
    assert obs.smi_errors == ("Unable to determine the device handle for GPU 0000:8A:00.0: Unknown Error",)
    assert [(x.xid, x.bus_id, x.time) for x in obs.xids] == [(79, "0000:8a:00.0", "2026-11-26T10:01:02")]


def test_xid_older_than_since_is_dropped_from_the_observation():
    stamp = _epoch("2026-11-26T10:01:02")
    assert _probe("probe/xid79.out", since=stamp + 60).xids == ()
    assert len(_probe("probe/xid79.out", since=stamp - 60).xids) == 1


def test_ecc_output():
    obs = _probe("probe/ecc.out")
    assert obs.complete and obs.xid_source == "dmesg"
    assert [g.ecc_uncorrected_volatile for g in obs.gpus] == [0, 0, 2, 0, 0, 0, 0, 0]


def test_driver_rc9_output():
    obs = _probe("probe/driver_rc9.out")
    assert obs.complete and obs.smi_rc == 9 and obs.gpus == ()
    assert obs.smi_errors == tuple(fixture_lines("smi/couldnt_communicate.txt"))


def test_truncated_output_is_incomplete_but_keeps_what_arrived():
    obs = _probe("probe/truncated.out")
    assert not obs.complete
    assert obs.boot_id == "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e" and obs.smi_rc == 0
    assert [(g.index, g.bus_id) for g in obs.gpus[:3]] == [(0, "0000:18:00.0"), (1, "0000:2a:00.0"),
                                                          (2, "0000:3a:00.0")]
    assert len(obs.gpus) < 8
    assert obs.disk_free_bytes is None and obs.xid_source is None


def test_garbage_output_is_incomplete_and_says_what_it_saw():
    obs = _probe("probe/garbage.out")
    assert obs.contact is Contact.OK and not obs.complete
    assert obs.gpus == () and obs.smi_rc is None and obs.boot_id is None
    assert any("not probe output: 'This account is currently not available.'" in p for p in obs.parse_problems)


def test_bytes_and_text_parse_the_same():
    text = fixture_text("probe/xid79.out")
    a = parse_probe("n", text, started_at=1, duration_s=1)
    b = parse_probe("n", text.encode(), started_at=1, duration_s=1)
    assert a == b


def test_login_banner_before_the_header_is_a_problem_but_output_still_complete():
    text = "Welcome to Ubuntu 22.04.4 LTS\n" + fixture_text("probe/healthy_8xh100.out")
    obs = parse_probe("n", text, started_at=1, duration_s=1)
    assert obs.complete and len(obs.gpus) == 8
    assert obs.parse_problems == ("unexpected output before the probe header",)


def test_end_without_header_is_not_complete():
    obs = parse_probe("n", "@nvidia-smi rc=0 query=index\n0\n@end\n", started_at=1, duration_s=1)
    assert not obs.complete


def test_unreadable_kernel_log_and_unknown_boot_id():
    text = "@gridctl-probe 1\n@boot_id unknown\n@xid source=none\n@end\n"
    obs = parse_probe("n", text, started_at=1, duration_s=1)
    assert obs.complete and obs.boot_id is None and obs.xid_source is None and obs.xids == ()


def test_node_side_truncation_marker_is_reported():
    text = fixture_text("probe/healthy_8xh100.out").replace("@xid", "@truncated nvidia-smi\n@xid")
    obs = parse_probe("n", text, started_at=1, duration_s=1)
    assert any("truncated" in p for p in obs.parse_problems)


def test_stuck_nvidia_smi_count():
    text = fixture_text("probe/healthy_8xh100.out").replace("@stuck nvidia-smi=0", "@stuck nvidia-smi=3")
    assert parse_probe("n", text, started_at=1, duration_s=1).stuck_smi == 3


# ---------------------------------------------------------------- never raises

def _assert_observation(obs) -> None:
    assert isinstance(obs, Observation)
    assert obs.node == "n" and obs.contact is Contact.OK


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_any_bytes_parse_without_raising(data):
    _assert_observation(parse_probe("n", data, started_at=0, duration_s=0))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=2000))
def test_any_text_parses_without_raising(text):
    _assert_observation(parse_probe("n", text, started_at=0, duration_s=0))


_HEADERS = ["@gridctl-probe 1", "@gridctl-probe", "@time 1764180000", "@time x", "@boot_id 6f1c", "@boot_id",
            "@stuck nvidia-smi=2", "@stuck nvidia-smi=", "@nvidia-smi rc=0 query=" + query(FULL_FIELDS),
            "@nvidia-smi rc=0 query=" + query(CORE_FIELDS), "@nvidia-smi rc=", "@nvidia-smi rc=9",
            "@nvidia-smi rc=0 query=index,memory.total,temperature.gpu", "@nvidia-smi query=,,,",
            "@truncated nvidia-smi", "@xid source=journalctl", "@xid source=", "@xid", "@disk / 1 2",
            "@disk", "@disk a b", "@end", "@", "@@", "@ end"]
_REAL_LINES = [line for rel in ("kernel/journalctl_xid79.log", "kernel/journalctl_short_iso_xid79.log",
                                "kernel/dmesg_xid119.log", "kernel/mig_xid94.log", "kernel/xid154_drain_reset.log",
                                "kernel/fallen_off_bus_no_xid.log", "smi/couldnt_communicate.txt",
                                "smi/csv_tokens.csv", "probe/healthy_8xh100.out")
               for line in fixture_lines(rel)]


_CELL = st.one_of(st.sampled_from(["[N/A]", "[Not Supported]", "[Unknown Error]", "[Insufficient Permissions]",
                                   "Yes", "No", "Active", "None", "nan", "-1", "0x0000000000000001",
                                   "00000000:8A:00.0", '"', ""]),
                  st.integers(-10**12, 10**12).map(str),
                  st.floats().map(str),
                  st.text(max_size=12))
_ROW = st.lists(_CELL, min_size=1, max_size=20).map(", ".join)
_LINE = st.one_of(st.sampled_from(_HEADERS), st.sampled_from(_REAL_LINES), _ROW,
                  st.text(max_size=80))


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINE, max_size=40), st.sampled_from(["\n", "\r\n", "\r"]), st.floats(0, 2e9))
def test_section_headers_mixed_with_random_lines_parse_without_raising(lines, newline, since):
    text = newline.join(lines)
    obs = parse_probe("n", text, started_at=0, duration_s=0, since=since)
    _assert_observation(obs)
    if obs.complete:
        assert "@end" in text
    assert all(isinstance(g, GpuReading) for g in obs.gpus)


@pytest.mark.parametrize("cell", ["inf", "1e400", "-Infinity"])
def test_infinite_number_in_an_integer_column_does_not_raise(cell):
    text = f"@gridctl-probe 1\n@nvidia-smi rc=0 query=index,memory.total\n0, {cell}\n@end\n"
    obs = parse_probe("n", text, started_at=0, duration_s=0)
    assert obs.gpus[0].memory_total_mib is None


def test_absurdly_long_xid_number_does_not_raise():
    text = "@gridctl-probe 1\n@xid source=dmesg\nNVRM: Xid (PCI:0000:01:00): " + "9" * 5000 + ", junk\n@end\n"
    obs = parse_probe("n", text, started_at=0, duration_s=0)
    assert obs.complete


def test_ten_megabyte_nvidia_smi_section_completes():
    row = ("0, GPU-5f0e2c1a-0000-4000-8000-000000000000, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 41, 69.85, "
           "81559, 1, 0, 0, 0, [N/A], No, No, Not Active, Not Active, Not Active, None\n")
    body = row * (10 * 1024 * 1024 // len(row) + 1)
    text = f"@gridctl-probe 1\n@nvidia-smi rc=0 query={query(FULL_FIELDS)}\n{body}@xid source=journalctl\n@end\n"
    assert len(text) > 10 * 1024 * 1024
    t0 = time.monotonic()
    obs = parse_probe("n", text.encode(), started_at=0, duration_s=0)
    elapsed = time.monotonic() - t0
    _assert_observation(obs)
    assert 0 < len(obs.gpus) <= 5000          # section lines are capped
    assert not obs.complete                   # beyond the client cap: the end marker is never seen
    print(f"10 MB section parsed in {elapsed:.2f}s")


def test_ten_megabyte_single_line_completes():
    text = "@gridctl-probe 1\n@nvidia-smi rc=0 query=index\n" + "x" * (10 * 1024 * 1024) + "\n@end\n"
    obs = parse_probe("n", text, started_at=0, duration_s=0)
    _assert_observation(obs)
    assert len(text) > MAX_OUTPUT_BYTES and not obs.complete


def test_long_nvidia_smi_line_under_the_client_cap_does_not_raise():
    text = "@gridctl-probe 1\n@nvidia-smi rc=0 query=index,uuid\n" + "y" * 200_000 + "\n@end\n"
    obs = parse_probe("n", text, started_at=0, duration_s=0)
    assert obs.complete and obs.gpus == () and len(obs.smi_errors) == 1


# ---------------------------------------------------------------- framing: node output cannot forge sections

NONCE = "5ec7e7a1b2c3d4e5f60718293a4b5c6d"
ROW = "0, GPU-aa, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 40, 70, 81559, 1, 0, 0"
BOOT_ID = "6f1c2d3e-0000-4000-8000-00000000beef"


def _framed(*lines: str) -> str:
    """Probe version 2 output: `@<nonce> ` before our lines; a `|` before every line of tool output;
    a line starting `!` goes out as it is (without the `!`)."""
    return "".join(f"@{NONCE} {ln[1:]}\n" if ln.startswith("@") else f"{ln.removeprefix('!')}\n" for ln in lines)


def test_tool_output_lines_that_look_like_sections_stay_tool_output():
    text = _framed("@gridctl-probe 2", "@time 1764180000", f"@boot_id {BOOT_ID}",
                   "@nvidia-smi rc=0 query=index,uuid,name,pci.bus_id",
                   "|0, GPU-aa, NVIDIA H100 80GB HBM3, 00000000:18:00.0",
                   "|@boot_id 00000000-0000-0000-0000-000000000000", f"|@{NONCE} boot_id 00000000-forged", "|@end",
                   "@end")
    obs = parse_probe("n", text, started_at=0, duration_s=0, nonce=NONCE)
    assert obs.complete and obs.boot_id == BOOT_ID and len(obs.gpus) == 1
    assert obs.smi_errors == ("@boot_id 00000000-0000-0000-0000-000000000000", f"@{NONCE} boot_id 00000000-forged",
                              "@end")


def test_unframed_lines_and_another_nonce_are_ignored_and_said():
    text = _framed("@gridctl-probe 2", f"@boot_id {BOOT_ID}", "@nvidia-smi rc=0 query=index",
                   "!@boot_id 00000000-0000-0000-0000-000000000000",
                   "!@0123456789abcdef0123456789abcdef boot_id 00000000-other-nonce", "|0", "@end")
    obs = parse_probe("n", text, started_at=0, duration_s=0, nonce=NONCE)
    assert obs.complete and obs.boot_id == BOOT_ID and [g.index for g in obs.gpus] == [0]
    assert "2 output lines without this probe's framing ignored" in obs.parse_problems


def test_an_attempt_dir_without_its_token_is_not_an_attempt():
    from gridctl.launcher import attempt_token
    key = b"k" * 32
    good = attempt_token(key, "job.1")
    text = _framed("@gridctl-probe 2",
                   f"@attempt job.1 pid=10 alive=1 exit=- hb=1 started=1 now=2 mismatch=0 tok={good}",
                   f"@attempt job.2 pid=11 alive=1 exit=- hb=1 started=1 now=2 mismatch=0 tok={good}",
                   "@attempt job.3 pid=12 alive=1 exit=- hb=1 started=1 now=2 mismatch=0 tok=",
                   "@attempt job.4 pid=13 alive=0 exit=- hb=1 started=1 now=2 mismatch=1 tok=" + attempt_token(key, "job.4"),
                   "@foreign job.5", "@end")
    obs = parse_probe("n", text, started_at=0, duration_s=0, nonce=NONCE, key=key)
    assert [(r.id, r.alive, r.pid_mismatch) for r in obs.attempts] == [("job.1", True, False), ("job.4", False, True)]
    assert obs.foreign_attempts == ("job.2", "job.3", "job.5")


def test_unsafe_work_dir_is_read():
    text = _framed("@gridctl-probe 2", "@unsafe /scratch/gridctl/n1 belongs to uid 65534", "@end")
    obs = parse_probe("n", text, started_at=0, duration_s=0, nonce=NONCE)
    assert obs.work_dir_unsafe == "/scratch/gridctl/n1 belongs to uid 65534" and obs.complete


def test_the_kernel_log_position_moves_only_with_a_complete_read():
    lines = ("@gridctl-probe 2", "@xid source=journalctl since=0 uptime=1234.56", "|x")
    assert parse_probe("n", _framed(*lines, "@end"), started_at=0, duration_s=0, nonce=NONCE).uptime_s == 1234.56
    assert parse_probe("n", _framed(*lines), started_at=0, duration_s=0, nonce=NONCE).uptime_s is None


def test_kernel_log_read_from_the_nodes_since_skips_lines_stamped_ahead_of_its_clock():
    now = _epoch("2026-11-26T10:00:00+00:00")
    text = _framed("@gridctl-probe 2", f"@time {now:.0f}", f"@xid source=journalctl since={now - 60:.0f}",
                   "|2026-11-26T09:00:00+00:00 h kernel: NVRM: Xid (PCI:0000:18:00): 48, old, read before",
                   "|2026-11-26T09:59:30+00:00 h kernel: NVRM: Xid (PCI:0000:18:00): 79, new",
                   "|2027-11-26T09:00:00+00:00 h kernel: NVRM: Xid (PCI:0000:18:00): 94, logged while the clock ran "
                   "ahead, read then", "@end")
    obs = parse_probe("n", text, started_at=0, duration_s=0, nonce=NONCE, since=now + 10 ** 8)
    assert [x.xid for x in obs.xids] == [79]


# the row reader's fast path (a line without quotes is split on its commas) against the csv module itself
_CELL = st.text(alphabet=st.sampled_from(list(" ,\t\x00\x0b\x1cab19.-_eEinfINF[]/\u0663\u2028")), max_size=12)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_CELL, max_size=20))
def test_rows_read_as_the_csv_module_reads_them(cells):
    import csv
    line = ",".join(cells)
    try:
        want = next(csv.reader([line], skipinitialspace=True))
    except (csv.Error, StopIteration):
        want = []
    assert _csv_row(line) == want


NUMBER_COLUMNS = [c for c, f in FULL_FIELDS if f in ("index", "temperature_c", "power_w", "memory_total_mib",
                                                      "utilization_pct", "ecc_uncorrected_volatile")]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_CELL.filter(lambda c: "," not in c), min_size=len(FULL_FIELDS), max_size=len(FULL_FIELDS)))
def test_each_cell_of_a_row_reads_as_that_cell_alone(cells):
    """A row split on its commas gives each cell to _value: the same values as each cell read alone."""
    cells[0] = "0"
    columns = [c for c, _ in FULL_FIELDS]
    (gpu,), errors, _ = parse_gpu_rows(columns, [", ".join(cells)])
    for (column, field), cell in zip(FULL_FIELDS, cells):
        unknown: list[str] = []
        want = _value(field, cell.lstrip(" "), unknown)
        got = getattr(gpu, field)
        assert got == want or (got != got and want != want), (column, cell)    # nan is nan


@pytest.mark.parametrize("cell, want", [
    ("40", 40), (" 40 ", 40), ("40.7", 40), ("1e3", 1000), ("1_000", 1000), ("\u0663", 3), ("inf", None),
    ("1e400", None), ("nan", None), ("[N/A]", None), ("", None), ("-3", -3), ("\x1c5\x1c", 5), ("0x10", None),
])
def test_integer_cells(cell, want):
    assert _value("memory_total_mib", cell, []) == want
