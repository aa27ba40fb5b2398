"""Text from a node never reaches the terminal raw (issue 11, item 4): a node's nvidia-smi that
prints escape sequences (clear screen, set the window title, a bell, a fake newline) cannot repaint
the operator's terminal through `reconcile`, `probe`, `nodes`, `describe node` or `events`; the
same text is kept, escaped, in `--json` (JSON escapes control characters itself).
"""

from __future__ import annotations

import json

import pytest

from helpers import gridctl, write_local_fleet

HOSTILE = "\x1b[2J\x1b]0;pwned\x07NVRM: driver\r\nfake-line \x9b31m red\x1b[0m"


@pytest.fixture
def hostile_fleet(tmp_path):
    path = write_local_fleet(tmp_path, "hostile", count=1, gpus=2)
    assert gridctl("reconcile", "-f", path).returncode == 0
    node = tmp_path / "nodes" / "sim-0"
    (node / "smi.extra").write_text(HOSTILE + "\n")
    (node / "smi.rc").write_text("42\n")        # an unknown failure: its first line becomes the reason
    return path


def _clean(text: str) -> bool:
    return not any(ord(c) < 32 and c not in "\n" or 0x7f <= ord(c) <= 0x9f for c in text)


@pytest.mark.parametrize("command", [
    ("reconcile",), ("probe",), ("nodes",), ("describe", "node", "sim-0"), ("events",),
])
def test_node_supplied_escape_sequences_never_reach_the_terminal(hostile_fleet, command):
    gridctl("reconcile", "-f", hostile_fleet)
    res = gridctl(*command, "-f", hostile_fleet)
    assert "Traceback" not in res.stderr, res.stderr
    assert _clean(res.stdout) and _clean(res.stderr), repr(res.stdout[-2000:])
    # the printable words stay; the window-title sequence goes whole, payload included
    assert "NVRM:" in res.stdout and "driver" in res.stdout, res.stdout
    assert "pwned" not in res.stdout


def test_json_keeps_the_node_text_escaped(hostile_fleet):
    gridctl("reconcile", "-f", hostile_fleet)
    res = gridctl("describe", "node", "sim-0", "-f", hostile_fleet, "--json")
    assert _clean(res.stdout)
    text = json.dumps(json.loads(res.stdout))
    assert "pwned" in text
