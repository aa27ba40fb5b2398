"""Which replica the builtin router tries next: least outstanding requests, ties taken in turn,
never one the request already tried, never a benched one. Pure; used on the event loop only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from ..models import Endpoint


@dataclass(eq=False)
class _Member:
    endpoint: Endpoint
    outstanding: int = 0
    benched: bool = False


class Lease:
    """One try on one replica; release() on every outcome (success, error, cancel), idempotent.
    It holds its member, so a release after the replica left the set cannot touch a newer count."""

    __slots__ = ("_member", "_held")

    def __init__(self, member: _Member):
        self._member, self._held = member, True
        member.outstanding += 1

    @property
    def endpoint(self) -> Endpoint:
        return self._member.endpoint

    def release(self) -> None:
        if self._held:
            self._held = False
            self._member.outstanding -= 1


@dataclass(frozen=True)
class Change:
    added: list[Endpoint] = field(default_factory=list)
    removed: list[Endpoint] = field(default_factory=list)


class Balancer:
    def __init__(self) -> None:
        self._members: dict[str, _Member] = {}
        self._turn = 0

    def update(self, endpoints: Iterable[Endpoint]) -> Change:
        """Take the new ready set; members that stay keep their count and bench. A replica whose
        address changed is a new member."""
        wanted = {e.attempt: e for e in endpoints}
        change = Change()
        for attempt, member in list(self._members.items()):
            if wanted.get(attempt) != member.endpoint:
                change.removed.append(self._members.pop(attempt).endpoint)
        for attempt, e in wanted.items():
            if attempt not in self._members:
                self._members[attempt] = _Member(e)
                change.added.append(e)
        return change

    def acquire(self, exclude: frozenset[str]) -> Lease | None:
        """A lease on the least loaded replica not benched and not in `exclude`; None when none is left."""
        members = list(self._members.values())
        self._turn += 1
        best: _Member | None = None
        for i in range(len(members)):
            m = members[(self._turn + i) % len(members)]
            if m.benched or m.endpoint.attempt in exclude:
                continue
            if best is None or m.outstanding < best.outstanding:
                best = m
        return Lease(best) if best else None

    def bench(self, attempt: str) -> bool:
        """Take a replica out until unbench; True when it was in."""
        m = self._members.get(attempt)
        if m is None or m.benched:
            return False
        m.benched = True
        return True

    def unbench(self, attempt: str) -> bool:
        m = self._members.get(attempt)
        if m is None or not m.benched:
            return False
        m.benched = False
        return True

    def is_benched(self, attempt: str) -> bool:
        m = self._members.get(attempt)
        return m is not None and m.benched

    def outstanding(self, attempt: str) -> int:
        m = self._members.get(attempt)
        return m.outstanding if m else 0

    def endpoint(self, attempt: str) -> Endpoint | None:
        m = self._members.get(attempt)
        return m.endpoint if m else None

    def __len__(self) -> int:
        return len(self._members)
