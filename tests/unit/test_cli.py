"""The CLI on a simulated local fleet under tmp_path: validate, probe, reconcile, read commands, cordon.

In-process through typer's CliRunner where the happy path is tested; through the real console
script (subprocess) where the error -> message -> exit code mapping of gridctl.cli.main matters.
Guards against: tracebacks for user errors, --json losing documented keys, probe writing state,
and a fault on a node not showing up in the exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gridctl.cli import app
from gridctl.models import Health, NodeRecord, NodeState
from gridctl.reconcile import PassLock
from gridctl.store import connect, queries, write_tx
from providers.local import write_node

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# DESIGN section 8 and README "JSON output (stable interface)"
PROBE_KEYS = {"name", "pool", "provider", "host", "state", "health", "reason", "findings", "gpus_seen",
              "gpus_expected", "max_temp_c", "last_seen"}
EVENT_KEYS = {"time", "kind", "severity", "node", "job", "message"}
GRIDCTL = [shutil.which("gridctl")] if shutil.which("gridctl") else \
    [sys.executable, "-c", "from gridctl.cli import main; main()"]

runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GRIDCTL_FLEET", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    (tmp_path / "home").mkdir()


def write_fleet(root: Path, state: Path | None = None) -> Path:
    """Two simulated 4-GPU nodes under root/nodes, created healthy (no sweep needed to create them)."""
    path = root / "fleet.yaml"
    path.write_text("fleet: t\n"
                    + (f"state: {state}\n" if state else "")
                    + "health: {probe_timeout: 10s, recover_after: 2}\n"
                      "pools:\n"
                      "  - name: sim\n"
                      "    provider: local\n"
                      "    count: 2\n"
                      f"    dir: {root / 'nodes'}\n"
                      "    gpu: {type: H100, count: 4, memory_gb: 80}\n")
    for i in range(2):
        write_node(root / "nodes" / f"sim-{i}", f"sim-{i}", gpus=4)
    return path


@pytest.fixture
def fleet(tmp_path) -> Path:
    return write_fleet(tmp_path)


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "xdg" / "gridctl" / "t.db"


def cli(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def no_crash(result) -> bool:
    """No exception other than the SystemExit that carries a non-zero exit code."""
    return result.exception is None or isinstance(result.exception, SystemExit)


def cli_json(*args: str) -> tuple[int, list[dict]]:
    result = cli(*args, "--json")
    assert no_crash(result), repr(result.exception)
    return result.exit_code, json.loads(result.stdout)


def gridctl(*args: str) -> subprocess.CompletedProcess:
    """The real console script: errors mapped by gridctl.cli.main."""
    return subprocess.run([*GRIDCTL, *map(str, args)], capture_output=True, text=True, timeout=60, env=dict(os.environ))


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in rows}


def is_utc_iso(value: str) -> bool:
    return datetime.fromisoformat(value).utcoffset() == timedelta(0)


def assert_clean_errors(res: subprocess.CompletedProcess, code: int) -> list[str]:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = res.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), res.stderr
    return lines


# ---------------------------------------------------------------- validate

@pytest.mark.parametrize("config, line", [("fleet.example.yaml", "ok: 3 pools, 5 nodes"),
                                          ("local.yaml", "ok: 1 pools, 3 nodes")])
def test_validate_ok(config, line):
    result = cli("validate", "-f", CONFIGS / config)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == line


def test_validate_uses_gridctl_fleet_env(monkeypatch, fleet):
    monkeypatch.setenv("GRIDCTL_FLEET", str(fleet))
    result = cli("validate")
    assert result.exit_code == 0 and result.stdout.startswith("ok: 1 pools, 2 nodes")


def test_validate_bad_file_exits_2_with_file_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fleet: f\nssh:\n  connect_timout: 5s\npools:\n  - name: a\n    provider: aws2\n")
    res = gridctl("validate", "-f", bad)
    lines = assert_clean_errors(res, 2)
    assert lines == [
        f"error: {bad}:3 ssh.connect_timout: unknown key 'connect_timout' (did you mean 'connect_timeout'?)",
        f"error: {bad}:6 pools[0].provider: unknown provider 'aws2' (known: ssh, local, aws, gcp)",
    ]
    assert res.stdout == ""


def test_validate_malformed_yaml_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fleet: f\npools: [\n")
    (line,) = assert_clean_errors(gridctl("validate", "-f", bad), 2)
    assert line.startswith(f"error: {bad}:3: invalid YAML")


def test_validate_missing_file_exits_2(tmp_path):
    (line,) = assert_clean_errors(gridctl("validate", "-f", tmp_path / "nope.yaml"), 2)
    assert line == f"error: {tmp_path / 'nope.yaml'}: file not found"


@pytest.mark.parametrize("args", [("validate", "--no-such-flag"), ("nodes", "extra-arg")], ids=["flag", "extra-arg"])
def test_usage_error_exits_2_without_traceback(args):
    res = gridctl(*args)
    assert "Traceback" not in res.stderr
    assert res.returncode == 2


@pytest.mark.parametrize("args", [(), ("describe",)], ids=["bare", "describe"])
def test_bare_command_shows_help_and_exits_2_as_a_usage_error(args):
    """A command is missing: that is a usage error (DESIGN section 8: exit 2), with the help to fix it."""
    res = gridctl(*args)
    assert res.returncode == 2, res
    assert "Usage:" in res.stdout and "Commands" in res.stdout, res.stdout
    assert res.stderr.strip() == "", res.stderr


# ---------------------------------------------------------------- probe

def test_probe_json_has_the_documented_keys(fleet, tmp_path):
    code, rows = cli_json("probe", "-f", fleet)
    assert code == 0
    assert [r["name"] for r in rows] == ["sim-0", "sim-1"]
    for r in rows:
        assert PROBE_KEYS | {"probe_s"} <= set(r), set(r) ^ PROBE_KEYS
        assert (r["pool"], r["provider"], r["health"], r["findings"]) == ("sim", "local", "healthy", [])
        assert r["state"] is None                      # nothing decided yet
        assert (r["gpus_seen"], r["gpus_expected"]) == (4, 4)
        assert r["reason"] == "4 GPUs healthy" and is_utc_iso(r["last_seen"])
    assert not db_path(tmp_path).exists()              # probe never writes state


def test_probe_exits_1_and_names_the_xid79(fleet, tmp_path):
    write_node(tmp_path / "nodes" / "sim-1", "sim-1", gpus=4, mode="xid79")
    code, rows = cli_json("probe", "-f", fleet)
    assert code == 1
    sick = by_name(rows)["sim-1"]
    assert sick["health"] == "unhealthy" and sick["gpus_seen"] == 3
    xid = [f for f in sick["findings"] if f["code"] == "xid"]
    assert xid == [{"code": "xid", "severity": "fatal", "gpu": None,
                    "message": "xid 79 on GPU 0000:48:00.0: fell off the bus"}]
    assert {"gpu-lost", "gpu-missing"} <= {f["code"] for f in sick["findings"]}
    assert by_name(rows)["sim-0"]["health"] == "healthy"


@pytest.mark.parametrize("mode, health, code", [("ecc", "unhealthy", "ecc"), ("driver", "unhealthy", "driver"),
                                               ("hot", "degraded", "hot"), ("down", "unreachable", "unreachable")])
def test_probe_sees_each_simulated_fault(fleet, tmp_path, mode, health, code):
    write_node(tmp_path / "nodes" / "sim-0", "sim-0", gpus=4, mode=mode)
    exit_code, rows = cli_json("probe", "-f", fleet, "sim-0")
    assert exit_code == 1
    (row,) = rows
    assert row["health"] == health and code in {f["code"] for f in row["findings"]}


def test_probe_of_named_healthy_node_exits_0_while_another_is_sick(fleet, tmp_path):
    write_node(tmp_path / "nodes" / "sim-1", "sim-1", gpus=4, mode="ecc")
    code, rows = cli_json("probe", "-f", fleet, "sim-0")
    assert code == 0 and [r["name"] for r in rows] == ["sim-0"]


def test_probe_unknown_node_is_a_usage_error(fleet):
    (line,) = assert_clean_errors(gridctl("probe", "-f", fleet, "nope"), 2)
    assert line == "error: no node named nope in the fleet (known: sim-0, sim-1)"


def test_probe_table_output(fleet, tmp_path):
    write_node(tmp_path / "nodes" / "sim-1", "sim-1", gpus=4, mode="xid79")
    result = cli("probe", "-f", fleet)
    assert result.exit_code == 1 and no_crash(result), repr(result.exception)
    assert "sim-0" in result.stdout and "xid 79 on GPU 0000:48:00.0" in result.stdout


def test_probe_table_survives_brackets_in_node_output(fleet, tmp_path):
    node = tmp_path / "nodes" / "sim-0"
    (node / "smi.extra").write_text("[/bold] Unable to query: [Unknown Error]\n")
    (node / "smi.rc").write_text("3\n")
    result = runner.invoke(app, ["probe", "-f", str(fleet), "sim-0"])
    assert no_crash(result), repr(result.exception)
    assert result.exit_code == 1 and "[/bold] Unable to query" in result.stdout


# ---------------------------------------------------------------- reconcile and the read commands

def _reconcile_with_xid79(fleet: Path, root: Path) -> Path:
    write_node(root / "nodes" / "sim-1", "sim-1", gpus=4, mode="xid79")
    result = cli("reconcile", "-f", fleet)
    assert result.exit_code == 0, result.output
    return fleet


@pytest.fixture
def reconciled(fleet, tmp_path) -> Path:
    """sim-0 healthy, sim-1 with xid 79, after one reconcile pass (a store of its own, for tests that write)."""
    return _reconcile_with_xid79(fleet, tmp_path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """The same fleet and pass, shared by the read-only tests (explicit state: path, own XDG/HOME)."""
    root = tmp_path_factory.mktemp("shared")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(root / "xdg"))
        mp.setenv("HOME", str(root))
        mp.delenv("GRIDCTL_FLEET", raising=False)
        fleet = write_fleet(root, state=root / "state" / "t.db")
        return _reconcile_with_xid79(fleet, root)


def test_reconcile_prints_the_transitions_and_a_summary(fleet, tmp_path):
    write_node(tmp_path / "nodes" / "sim-1", "sim-1", gpus=4, mode="xid79")
    result = cli("reconcile", "-f", fleet)
    assert result.exit_code == 0
    out = result.stdout
    assert "sim-0: provisioning -> ready: 4 GPUs healthy" in out
    assert "sim-1: provisioning -> quarantined: xid 79 on GPU 0000:48:00.0: fell off the bus" in out
    assert "2 nodes (1 quarantined, 1 ready), 4 events" in out
    assert db_path(tmp_path).exists()


def test_nodes_json_after_reconcile(shared):
    code, rows = cli_json("nodes", "-f", shared)
    assert code == 0
    nodes = by_name(rows)
    assert set(nodes) == {"sim-0", "sim-1"}
    for r in rows:
        assert PROBE_KEYS | {"cordoned", "cordon_reason", "state_since"} <= set(r)
        assert is_utc_iso(r["last_seen"]) and is_utc_iso(r["state_since"])
        assert all(set(f) == {"code", "severity", "gpu", "message"} for f in r["findings"])
    assert (nodes["sim-0"]["state"], nodes["sim-0"]["health"]) == ("ready", "healthy")
    assert (nodes["sim-1"]["state"], nodes["sim-1"]["health"]) == ("quarantined", "unhealthy")
    assert nodes["sim-1"]["reason"].startswith("xid 79 on GPU 0000:48:00.0: fell off the bus")
    assert (nodes["sim-1"]["gpus_seen"], nodes["sim-1"]["gpus_expected"]) == (3, 4)
    assert nodes["sim-0"]["cordoned"] is False


def test_events_json_after_reconcile(shared):
    code, rows = cli_json("events", "-f", shared)
    assert code == 0
    assert all(EVENT_KEYS <= set(r) and is_utc_iso(r["time"]) for r in rows)
    assert [(r["kind"], r["node"]) for r in rows] == [("node-added", "sim-0"), ("node-state", "sim-0"),
                                                      ("node-added", "sim-1"), ("node-state", "sim-1")]
    _, only = cli_json("events", "-f", shared, "--node", "sim-1", "--since", "1h")
    assert {r["node"] for r in only} == {"sim-1"} and len(only) == 2


def test_events_bad_since_is_a_usage_error(shared):
    (line,) = assert_clean_errors(gridctl("events", "-f", shared, "--since", "yesterday"), 2)
    assert line.startswith("error: --since: expected a duration")


def test_describe_node(shared):
    result = cli("describe", "node", "sim-1", "-f", shared)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "quarantined" in out and "xid 79 on GPU 0000:48:00.0: fell off the bus" in out
    assert "needs a GPU reset or reboot" in out
    code, (row,) = cli_json("describe", "node", "sim-1", "-f", shared)
    assert code == 0 and row["name"] == "sim-1" and len(row["gpus"]) == 3
    assert [e["kind"] for e in row["events"]] == ["node-added", "node-state"]


def test_cordon_uncordon_round_trip(reconciled):
    result = cli("cordon", "sim-0", "--reason", "swap disk", "-f", reconciled)
    assert result.exit_code == 0 and "sim-0 cordoned: swap disk" in result.stdout
    _, rows = cli_json("nodes", "-f", reconciled)
    assert (by_name(rows)["sim-0"]["cordoned"], by_name(rows)["sim-0"]["cordon_reason"]) == (True, "swap disk")
    assert by_name(rows)["sim-0"]["state"] == "ready"     # cordon is a flag, not a state

    result = cli("uncordon", "sim-0", "-f", reconciled)
    assert result.exit_code == 0
    _, rows = cli_json("nodes", "-f", reconciled)
    assert (by_name(rows)["sim-0"]["cordoned"], by_name(rows)["sim-0"]["cordon_reason"]) == (False, None)

    _, events = cli_json("events", "-f", reconciled, "--node", "sim-0")
    assert [(e["kind"], e["message"]) for e in events[-2:]] == [("cordon", "swap disk"), ("uncordon", "uncordoned")]


def test_uncordon_releases_a_reset_class_quarantine_to_suspect(reconciled, tmp_path):
    result = cli("uncordon", "sim-1", "-f", reconciled)
    assert result.exit_code == 0 and "released from quarantine" in result.stdout
    _, rows = cli_json("nodes", "-f", reconciled)
    assert by_name(rows)["sim-1"]["state"] == "suspect"
    write_node(tmp_path / "nodes" / "sim-1", "sim-1", gpus=4)      # repaired
    assert cli("reconcile", "-f", reconciled, "-q").exit_code == 0
    _, rows = cli_json("nodes", "-f", reconciled)
    assert by_name(rows)["sim-1"]["state"] == "suspect"            # recover_after: 2 good probes
    assert cli("reconcile", "-f", reconciled, "-q").exit_code == 0
    _, rows = cli_json("nodes", "-f", reconciled)
    assert by_name(rows)["sim-1"]["state"] == "ready"


@pytest.mark.parametrize("args", [("cordon", "nope"), ("uncordon", "nope"), ("describe", "node", "nope")])
def test_unknown_node_exits_1_with_a_clear_message(shared, args):
    (line,) = assert_clean_errors(gridctl(*args, "-f", shared), 1)
    assert line == "error: no node named nope (known: sim-0, sim-1)"


def test_second_reconcile_while_one_holds_the_lock_exits_0_and_says_who(fleet, tmp_path):
    db_path(tmp_path).parent.mkdir(parents=True)
    lock = PassLock(db_path(tmp_path))
    assert lock.acquire()
    try:
        result = cli("reconcile", "-f", fleet)
    finally:
        lock.release()
    assert result.exit_code == 0
    assert f"another reconcile is running (pid {os.getpid()}" in result.stdout
    conn = connect(db_path(tmp_path))
    assert queries.load_nodes(conn) == {}                # the second pass did nothing
    conn.close()


# ---------------------------------------------------------------- before any reconcile

@pytest.mark.parametrize("command", ["nodes", "events"])
def test_read_commands_before_any_reconcile_do_not_traceback(fleet, tmp_path, command):
    result = cli(command, "-f", fleet)
    assert result.exit_code == 0 and result.exception is None
    assert "run `gridctl reconcile` first" in result.stderr
    code, rows = cli_json(command, "-f", fleet)
    assert code == 0 and rows == []
    assert not db_path(tmp_path).exists()


def test_nodes_before_any_reconcile_via_the_console_script(fleet):
    res = gridctl("nodes", "-f", fleet)
    assert res.returncode == 0 and "Traceback" not in res.stderr
    assert "run `gridctl reconcile` first" in res.stderr


def test_describe_before_any_reconcile_exits_1(fleet):
    res = gridctl("describe", "node", "sim-0", "-f", fleet)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == "error: no node named sim-0: no state recorded yet"


def test_nodes_table_survives_brackets_in_a_stored_reason(fleet, tmp_path):
    conn = connect(db_path(tmp_path))
    with write_tx(conn):
        queries.save_node(conn, NodeRecord(name="sim-0", pool="sim", provider="local", host="local", port=22,
                                           state=NodeState.SUSPECT, health=Health.UNHEALTHY,
                                           reason="nvidia-smi failed (rc 3): [/bold] Unable to query"), 1.0)
    conn.close()
    result = runner.invoke(app, ["nodes", "-f", str(fleet)])
    assert result.exception is None, repr(result.exception)
    assert "[/bold] Unable to query" in result.stdout


def test_reconcile_survives_brackets_in_node_output(fleet, tmp_path):
    assert cli("reconcile", "-f", fleet, "-q").exit_code == 0           # both nodes ready
    node = tmp_path / "nodes" / "sim-0"
    (node / "smi.extra").write_text("[/bold] Unable to query: [Unknown Error]\n")
    (node / "smi.rc").write_text("3\n")
    result = runner.invoke(app, ["reconcile", "-f", str(fleet)])
    assert result.exception is None, repr(result.exception)
    assert "ready -> suspect: nvidia-smi failed (rc 3): [/bold] Unable to query" in result.stdout
