"""Durations for people: `describe` shows them exact with units (issue 14, item 6)."""

from __future__ import annotations

import pytest

from gridctl.timefmt import duration


@pytest.mark.parametrize("seconds,words", [
    (None, "-"), (0, "0s"), (2.5, "2.5s"), (45, "45s"), (59.6, "1m"), (60, "1m"), (330, "5m30s"),
    (3600, "1h"), (3725, "1h2m"), (86400 + 3 * 3600 + 59, "1d3h"), (7 * 86400, "7d"),
])
def test_duration_has_units_and_at_most_two_of_them(seconds, words):
    assert duration(seconds) == words
