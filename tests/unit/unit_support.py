"""Helpers shared by the unit tests: read fixture files (minus their `# source:` comment lines)."""

from __future__ import annotations

import textwrap
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture_lines(rel: str) -> list[str]:
    """The fixture's lines without the leading `#` comment lines that name the source."""
    text = (FIXTURES / rel).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if not line.startswith("#")]


def fixture_text(rel: str) -> str:
    """The fixture as a probe would have printed it: comment lines stripped, line ends kept."""
    text = (FIXTURES / rel).read_text(encoding="utf-8")
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))


def write_yaml(tmp_path: Path, text: str, name: str) -> Path:
    """A dedented spec file for a test."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path
