"""Make node-supplied text safe for a terminal (STYLE 18): a node's tools may print escape
sequences (clear the screen, set the window title, move the cursor) or bare carriage returns
that would repaint an operator's terminal. Called by every human renderer (cli/render.esc and
its callers, screen.py); JSON output is left as it is, since JSON escapes control characters.
"""

from __future__ import annotations

import re

# ESC-introduced sequences (CSI, OSC up to BEL/ST, two-byte escapes), 8-bit CSI/OSC, then any
# other C0 or C1 control character; tabs and newlines become spaces so a value stays on its line
_SEQUENCES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]|\x9b[0-?]*[ -/]*[@-~]"
                        r"|\x9d[^\x07\x9c]*[\x07\x9c]?")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_BLANKS = re.compile(r"[\t\n]")


def safe(text: object) -> str:
    """The printable part of text: escape sequences and control characters removed."""
    s = str(text)
    if s.isprintable():
        return s
    return _CONTROLS.sub("", _BLANKS.sub(" ", _SEQUENCES.sub("", s)))
