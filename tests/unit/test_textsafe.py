"""textsafe.safe and the watch screen: node text that tries to drive the terminal is defanged."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from gridctl.models import NodeRecord, NodeState
from gridctl.screen import Snapshot, render
from gridctl.textsafe import safe


@pytest.mark.parametrize("raw, shown", [
    ("plain text", "plain text"),
    ("\x1b[2Jcleared", "cleared"),                       # CSI: clear screen
    ("\x1b]0;title\x07after", "after"),                  # OSC window title, ended by BEL
    ("\x1b]8;;http://x.example\x1b\\link", "link"),      # OSC hyperlink, ended by ST
    ("red\x1b[31m!\x1b[0m", "red!"),
    ("\x9b2Jeight-bit", "eight-bit"),                    # 8-bit CSI
    ("a\rb\x08c\x07d", "abcd"),
    ("two\nlines\tand tab", "two lines and tab"),
    ("ünïcode ✓ 80°C", "ünïcode ✓ 80°C"),
])
def test_safe_keeps_printable_text_and_drops_terminal_controls(raw, shown):
    assert safe(raw) == shown


def test_the_watch_screen_prints_no_escape_from_a_node_reason():
    node = NodeRecord(name="n1", pool="p", provider="ssh", host="h", port=22, state=NodeState.SUSPECT,
                      reason="nvidia-smi failed: \x1b[2J\x1b]0;pwned\x07boom")
    snap = Snapshot("f", 1000.0, [node], {}, [], [], [])
    out = io.StringIO()
    Console(file=out, width=120, color_system=None, force_terminal=False).print(render(snap, 120))
    assert "\x1b" not in out.getvalue() and "pwned" not in out.getvalue() and "boom" in out.getvalue()
