"""The provider contract. Imports nothing from gridctl.

A provider maps one pool of the fleet spec onto a source of machines. The required core is
`list_instances` and `pool_model`, the schema of its pool section; abilities beyond it are
declared in `features` and callers check them (a static SSH pool cannot create machines, so it
lacks Feature.CREATE).
"""

from __future__ import annotations

import enum
import math
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, ClassVar

from .schema import PoolSpec


class Feature(str, enum.Enum):
    CREATE = "create"      # launch / terminate instances
    SPOT = "spot"
    STOP = "stop"
    SIMULATED = "simulated"  # nodes are local simulations (chaos may change them)


class InstanceState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    TERMINATED = "terminated"
    PREEMPTED = "preempted"


@dataclass(frozen=True)
class Instance:
    """One machine as its provider sees it. `host` may be empty while an instance is pending."""

    id: str
    provider: str
    pool: str
    state: InstanceState
    host: str
    port: int | None = None
    user: str | None = None
    instance_type: str | None = None
    zone: str | None = None
    spot: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    launched_at: float | None = None
    local_dir: Path | None = None    # simulated nodes only: the node's state directory


# Every instance gridctl creates carries these tags (AWS) / labels (GCP); listing is by tag, so
# leaks are found and a lost store can be rebuilt (DESIGN section 7).
TAG_FLEET, TAG_POOL, TAG_REQUEST, TAG_TRIAGE = "gridctl-fleet", "gridctl-pool", "gridctl-request", "gridctl-triage"
REQUEST_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")


@dataclass(frozen=True)
class LaunchRequest:
    """Ask a pool for `count` machines. `request_id` names the request for its whole life: the
    pass records it in the store before calling `launch` and reuses it on every retry, so a lost
    answer never launches twice. It is a tag / label value on every instance, so it must be
    lower-case letters, digits, '-' or '_', at most 63 characters (`new_request_id()` makes one).
    A new need is a new request id: clouds remember request ids, so one whose instances were
    terminated is not launched again. `spot` None means the pool's own `spot` setting."""

    request_id: str
    count: int = 1
    spot: bool | None = None

    def __post_init__(self):
        if not REQUEST_ID_RE.match(self.request_id):
            raise ValueError(f"invalid request id {self.request_id!r}: use lower-case letters, digits, '-' "
                             "and '_', at most 63 characters")
        if not 1 <= self.count <= 1000:
            raise ValueError(f"count must be between 1 and 1000, got {self.count}")


def new_request_id() -> str:
    """A fresh request id for LaunchRequest (32 lower-case hex digits)."""
    return uuid.uuid4().hex


class ProviderError(Exception):
    """Base of provider errors; adapters raise these `from` the SDK's own errors."""


class ProviderUnavailable(ProviderError):
    """The provider is unknown or its SDK is not installed."""


class CapacityError(ProviderError):
    """No capacity for this request now: try the next pool."""


class QuotaError(ProviderError):
    """An account limit refuses the request."""


class AuthError(ProviderError):
    """Credentials missing or refused: permanent until a person acts."""


class TransientError(ProviderError):
    """The cloud is busy, throttling or unreachable: the same call may succeed after `delay`
    seconds. Adapters have already retried inside the call (a short, bounded SDK retry), so this
    is the wait before the caller tries again, on a later pass. `delay` is the cloud's own word
    when it gives one (Retry-After), else the adapter's default for the kind of error: a few
    seconds for throttling, longer for server errors and an unreachable endpoint."""

    def __init__(self, message: str, delay: float = 10.0):
        super().__init__(message)
        self.delay = delay


RETRY_AFTER_MAX_S = 300.0   # a longer Retry-After is not believed: the pass looks again by then


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from an HTTP answer's Retry-After (seconds or an HTTP date) or AWS's
    x-amz-retry-after (milliseconds), bounded to 0..RETRY_AFTER_MAX_S; None when absent or
    unreadable. Called by adapters to set TransientError.delay."""
    found = {k.lower(): v for k, v in (headers or {}).items()}
    seconds: float | None = None
    try:
        if "x-amz-retry-after" in found:
            seconds = float(found["x-amz-retry-after"]) / 1000
        elif "retry-after" in found:
            value = found["retry-after"].strip()
            if re.fullmatch(r"\d+(\.\d+)?", value):
                seconds = float(value)
            else:
                seconds = parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError, OverflowError):
        return None
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


class NotFound(ProviderError):
    """The instance does not exist: treated as terminated."""


class Provider(ABC):
    """One pool's source of machines.

    Registered by `name` under the entry point group `gridctl.providers` (module:Class).
    `pool_model` is the pydantic model of the provider's pool section in fleet.yaml: a subclass
    of schema.PoolSpec whose `provider` field is `Literal[name]`, a subclass of
    schema.CloudPoolSpec when the provider has Feature.CREATE (the pool planner reads min, max,
    fallback, ...). gridctl.spec validates each pool with its provider's model and reports its
    errors as file:line field; checks that need the whole fleet stay in the spec. Importing the
    provider's module must be cheap and must not import its SDK: `gridctl validate` loads it.
    `requires` names the SDK modules the adapter imports when it works ({module: pip
    distribution}); the registry checks them before handing out the class and says what to
    install.

    Construction takes the fleet name, the pool's spec object (an instance of `pool_model`) and
    gridctl's state directory; it does no network I/O.
    """

    name: ClassVar[str]
    pool_model: ClassVar[type[PoolSpec]]
    features: ClassVar[frozenset[Feature]] = frozenset()
    requires: ClassVar[Mapping[str, str]] = {}

    def __init__(self, fleet: str, pool: Any, state_dir: Path):
        self.fleet = fleet
        self.pool = pool
        self.state_dir = state_dir

    @abstractmethod
    def list_instances(self) -> dict[str, Instance]:
        """Every instance of this pool that exists now, by id; fresh each call, ours only (by tag
        for cloud pools). Idempotent, read-only towards the machines. Raises ProviderError."""

    def launch(self, req: LaunchRequest) -> list[Instance]:
        """Create `req.count` instances tagged with the fleet, pool and request id; needs
        Feature.CREATE. Idempotent per `req.request_id`: instances already tagged with it are
        returned instead of launching more, so retrying after a lost answer is safe. May return
        before the machines boot: instances can be `pending` with an empty `host`; `list_instances`
        shows them later. An adapter that creates one by one can fail part-way: what it launched
        carries the request tag, is listed, and a retry with the same id completes the set.
        Raises CapacityError (try the next pool), QuotaError, AuthError, TransientError;
        ProviderUnavailable when the provider cannot create machines."""
        raise ProviderUnavailable(f"provider '{self.name}' cannot create machines (pool '{self.pool.name}')")

    def terminate(self, ids: Iterable[str]) -> None:
        """Delete these instances; needs Feature.CREATE. Idempotent: an id that is already gone,
        or was never ours (not tagged with this fleet and pool), is skipped, never an error.
        Returns once the cloud accepted the deletion, not when the machines are gone."""
        raise ProviderUnavailable(f"provider '{self.name}' cannot terminate machines (pool '{self.pool.name}')")

    def stop(self, ids: Iterable[str], *, triage: bool = False) -> None:
        """Stop (not delete) these instances, keeping their disks; needs Feature.STOP. `triage`
        also tags them `gridctl-triage=true` (keep_for_triage: a person looks before deleting).
        Idempotent like `terminate`; ids gone or not ours are skipped."""
        raise ProviderUnavailable(f"provider '{self.name}' cannot stop machines (pool '{self.pool.name}')")
