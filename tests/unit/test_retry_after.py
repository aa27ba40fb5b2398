"""providers.base.retry_after_s: the cloud's Retry-After becomes TransientError.delay, bounded.

Guards against a pass hammering a cloud that said when to come back, and against a hostile or
broken header parking a pool for days.
"""

from __future__ import annotations

from email.utils import formatdate
import time

import pytest

from providers.base import RETRY_AFTER_MAX_S, retry_after_s


@pytest.mark.parametrize("headers,seconds", [
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after": "2.5"}, 2.5),
    ({"x-amz-retry-after": "1500"}, 1.5),
    ({"Retry-After": "86400"}, RETRY_AFTER_MAX_S),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),   # a date in the past: now
    ({"Retry-After": "soon"}, None),
    ({"x-amz-retry-after": "nan"}, None),
    ({"Content-Type": "text/xml"}, None),
    ({}, None),
    (None, None),
])
def test_retry_after_header_gives_bounded_seconds(headers, seconds):
    assert retry_after_s(headers) == seconds


def test_retry_after_as_an_http_date_counts_from_now():
    seconds = retry_after_s({"Retry-After": formatdate(time.time() + 120, usegmt=True)})
    assert seconds is not None and 100 < seconds <= 120
