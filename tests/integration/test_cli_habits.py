"""The CLI as kubectl / tail users type it (issue 14, item 6), through the real console script on a
real store of a `provider: local` fleet: pipes get plain aligned text, options go before or after
the command, -f always means the fleet, logs mark their streams, and a read command stays light."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from helpers import gridctl, gridctl_json, stop_attempts, write_local_fleet

BOX = re.compile("[\u2500-\u257f]")      # every box-drawing character (─ │ ┏ ┃ ╭ ...)
LONG_REASON = "waiting for a replacement fan from the vendor, ticket 4711, do not uncordon before " * 3


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("habits")
    path = write_local_fleet(root, "habits", count=2, gpus=2)
    # a hook that takes nothing: every event stays undelivered (events --undelivered has rows)
    path.write_text(path.read_text() + "alerts:\n  - command: [\"false\"]\n    min_severity: info\n")
    assert gridctl("reconcile", "-q", "-f", path).returncode == 0
    runs = [["--name", "talk", "--class", "batch", "--", "sh", "-c", "echo o1; echo o2; echo e1 >&2"],
            ["--name", "web", "--port", "auto", "--replicas", "2", "--", "sleep", "300"],
            ["--name", "huge", "--class", "batch", "--gpus", "2", "--", "true"]]   # web holds one GPU of each node
    try:
        for args in runs:
            res = gridctl("run", "-f", path, *args)
            assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 30
        while _job(path, "talk")["state"] != "succeeded" and time.monotonic() < deadline:
            gridctl("reconcile", "-q", "-f", path)
        assert _job(path, "talk")["state"] == "succeeded"
        assert gridctl("cordon", "sim-1", "--reason", LONG_REASON, "-f", path).returncode == 0
        yield path
    finally:
        stop_attempts(root)


def _job(path, name: str) -> dict:
    code, rows = gridctl_json("describe", "job", name, "-f", path)
    assert code == 0
    return rows[0]


DRY_RUN = ("run", "--dry-run", "--name", "maybe", "--gpus", "2", "--", "sleep", "1")
READS = [("nodes",), ("jobs",), ("events",), ("events", "--undelivered"), ("endpoints",), ("describe", "node", "sim-0"),
         ("describe", "job", "talk"), ("probe",), ("status",), DRY_RUN, ("prune", "--older-than", "300d")]


def read(lab, command: tuple, *flags: str):
    """The command, then -f and flags (before `--` when the command ends with `-- ARGS`)."""
    cut = command.index("--") if "--" in command else len(command)
    return gridctl(*command[:cut], "-f", lab, *flags, *command[cut:])


@pytest.mark.parametrize("command", READS, ids=[" ".join(c[:2]) for c in READS])
def test_read_commands_through_a_pipe_print_plain_aligned_text_without_box_characters(lab, command):
    res = read(lab, command)
    assert res.returncode == 0, res.stderr
    assert not BOX.search(res.stdout + res.stderr), res.stdout
    assert "\x1b[" not in res.stdout + res.stderr, res.stdout + res.stderr     # no colour either
    if command[0] == "status":      # a summary line, then one table (or a "no ..." line) per block
        summary, *blocks = res.stdout.split("\n\n")
        assert summary.startswith("habits  ") and "\n" not in summary, res.stdout
        assert blocks[0].startswith("NODES   COUNT\nready   2"), res.stdout
        for block in blocks[:2]:
            _assert_aligned(block, columns=2)
    elif command[0] == "run":       # a line saying what it is, then a table
        assert res.stdout.startswith("dry run: job maybe "), res.stdout
        _assert_aligned(res.stdout.split("\n", 1)[1], columns=2)
    elif command[0] not in ("describe", "prune"):
        _assert_aligned(res.stdout)


def _assert_aligned(text: str, columns: int = 3) -> None:
    """A header in capitals, then rows whose every column starts where its header starts, with at
    least two spaces before it: what `awk` and `cut -c` need."""
    header, *rows = text.splitlines()
    assert header.split()[0].isupper() and rows, text
    starts = [m.start() for m in re.finditer(r"(?:(?<=^)|(?<=  ))\S", header)]
    assert len(starts) >= columns, header
    for row in rows:
        for start in starts[1:]:
            assert row[start - 2:start] == "  " and row[start] != " ", f"column at {start} off in:\n{header}\n{row}"


def test_nodes_says_which_gpus_it_counts_and_wide_adds_columns(lab):
    plain = gridctl("nodes", "-f", lab).stdout.splitlines()
    assert "GPUS SEEN/EXP" in plain[0]     # the same header, and meaning, as in `gridctl watch`
    wide = gridctl("nodes", "-f", lab, "-o", "wide").stdout.splitlines()
    assert "HOST" in wide[0] and "STATE SINCE" in wide[0] and "HOST" not in plain[0]
    assert LONG_REASON.strip() in "\n".join(wide)        # nothing cut


def test_version_is_the_installed_package_version():
    from importlib.metadata import version
    res = gridctl("--version")
    assert (res.returncode, res.stdout) == (0, f"gridctl {version('gridctl')}\n")


def test_fleet_and_output_options_work_before_or_after_the_command_and_the_commands_own_win(lab, tmp_path):
    after = gridctl("nodes", "-f", lab, "-o", "name")
    before = gridctl("-f", lab, "-o", "name", "nodes")
    assert after.stdout == before.stdout == "sim-0\nsim-1\n"
    code, rows = gridctl_json("-f", tmp_path / "no-such-fleet.yaml", "jobs", "-f", lab)
    assert code == 0 and {r["name"] for r in rows} == {"talk", "web", "huge"}
    res = gridctl("--json", "nodes", "-f", lab)
    assert [r["name"] for r in json.loads(res.stdout)] == ["sim-0", "sim-1"]
    assert gridctl("-o", "yaml", "nodes", "-f", lab, "-o", "name").stdout == "sim-0\nsim-1\n"


YAML_READS = [("nodes",), ("jobs",), ("events",), ("events", "--undelivered"), ("endpoints",),
              ("describe", "job", "web"), ("prune", "--older-than", "300d"), DRY_RUN]


@pytest.mark.parametrize("command", YAML_READS, ids=[" ".join(c[:2]) for c in YAML_READS])
def test_yaml_output_is_the_same_objects_as_json(lab, command):
    as_json = json.loads(read(lab, command, "--json").stdout)
    as_yaml = yaml.safe_load(read(lab, command, "-o", "yaml").stdout)
    if command[0] == "describe":      # the object is the same; its "ago" fields are not part of it
        assert as_yaml[0]["attempts"] == as_json[0]["attempts"] and as_yaml[0]["spec"] == as_json[0]["spec"]
    else:
        assert as_yaml == as_json


def test_unknown_output_format_is_one_line_usage_error(lab):
    res = gridctl("nodes", "-f", lab, "-o", "table-ish")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == "error: -o/--output: unknown format 'table-ish' (known: wide, json, yaml, name)\n"


def test_a_table_on_an_80_column_terminal_cuts_the_reason_with_an_ellipsis(lab):
    env = {**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "80", "NO_COLOR": "1"}
    res = gridctl("nodes", "-f", lab, env=env)
    lines = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout).splitlines()     # bold headers are not width
    assert BOX.search(res.stdout)                       # a rich table: this is a terminal
    cordoned = [line for line in lines if line.startswith("sim-1")]
    assert len(cordoned) == 1 and cordoned[0].rstrip().endswith("…"), res.stdout    # one line, cut
    assert all(len(line) <= 80 for line in lines), res.stdout


def test_logs_mark_both_streams_and_pick_one_with_tail(lab):
    res = gridctl("logs", "talk", "-f", lab)
    assert (res.returncode, res.stdout) == (0, "[stdout] o1\n[stdout] o2\n[stderr] e1\n"), res.stderr
    assert gridctl("logs", "talk", "--stdout", "--tail", "1", "-f", lab).stdout == "o2\n"
    assert gridctl("-f", lab, "logs", "talk", "--stderr").stdout == "e1\n"


def test_logs_replica_picks_that_replicas_attempt(lab):
    code, rows = gridctl_json("describe", "job", "web", "-f", lab)
    by_replica = {a["replica"]: a for a in rows[0]["attempts"]}
    assert set(by_replica) == {0, 1}
    res = gridctl("logs", "web", "--replica", "1", "--attempt", str(by_replica[0]["n"]), "-f", lab)
    assert res.returncode == 1 and res.stderr.startswith(f"error: job web has no attempt {by_replica[0]['n']} "
                                                          "of replica 1"), res.stderr
    res = gridctl("logs", "web", "--replica", "7", "-f", lab)
    assert (res.returncode, res.stderr) == (1, "error: job web has no replica 7 (replicas: 0, 1)\n")


def test_logs_dash_f_without_a_file_says_it_means_fleet_and_how_to_follow(lab):
    res = gridctl("logs", "talk", "-f")
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == ("error: -f is --fleet and needs a fleet file (gridctl logs JOB -f fleet.yaml); "
                          "to follow logs use -F/--follow\n")
    res = gridctl("logs", "-f", "talk", "talk")
    assert res.returncode == 2 and "-f is --fleet" in res.stderr and "-F/--follow" in res.stderr, res.stderr


LIGHT_PROBE = ("import sys\nsys.argv = ['gridctl', *sys.argv[1:]]\nfrom gridctl.cli import main\n"
               "try:\n    main()\nexcept SystemExit:\n    pass\n"
               "print(sorted(m for m in ('paramiko', 'aiohttp', 'rich', 'boto3', 'prometheus_client', 'urllib.request',"
               " 'http.client') if m in sys.modules), file=sys.stderr)")


def test_a_read_command_imports_neither_ssh_nor_http_nor_rich_when_piped(lab):
    for args in (["nodes", "--help"], ["metrics", "--help"], ["nodes", "-f", str(lab)], ["jobs", "-f", str(lab)],
                 ["describe", "node", "sim-0", "-f", str(lab)], ["status", "-f", str(lab)],
                 ["events", "-f", str(lab)], ["events", "--undelivered", "-f", str(lab)]):
        res = subprocess.run([sys.executable, "-c", LIGHT_PROBE, *args], capture_output=True, text=True, timeout=60)
        assert res.stderr.splitlines()[-1] == "[]", (args, res.stderr)


def test_the_nothing_reconciles_warning_through_a_pipe_is_one_plain_line_without_rich(tmp_path):
    path = write_local_fleet(tmp_path, "alone", count=1, gpus=1)
    try:
        ran = gridctl("run", "-f", path, "--name", "once", "--class", "batch", "--", "true")   # its own pass only
        assert ran.returncode == 0, ran.stderr
        res = subprocess.run([sys.executable, "-c", LIGHT_PROBE, "jobs", "-f", str(path)], capture_output=True,
                             text=True, timeout=60)
        *warning, imported = res.stderr.splitlines()
        assert warning == ["warning: no reconcile pass recorded: nothing is reconciling this fleet "
                           "(start `gridctl reconcile --loop`)"], res.stderr
        assert imported == "[]"
    finally:
        stop_attempts(tmp_path)


def test_status_and_prune_take_output_formats(lab):
    assert gridctl("status", "-f", lab, "-o", "name").stdout == "habits\n"
    (status,) = yaml.safe_load(gridctl("-o", "yaml", "status", "-f", lab).stdout)
    assert (status["fleet"], status["nodes"]) == ("habits", {"ready": 2})
    assert gridctl("prune", "--older-than", "300d", "-f", lab, "-o", "name").stdout == ""


def test_every_command_help_has_an_example():
    from gridctl.cli import app
    import typer
    missing = []

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
        if "Example: gridctl" not in (command.help or "") + (command.epilog or ""):
            missing.append(" ".join(path) or "gridctl")

    walk(typer.main.get_command(app), [])
    assert missing == []
