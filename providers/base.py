"""The provider contract. Imports nothing from gridctl.

A provider maps one pool of the fleet spec onto a source of machines. The required core is
`list_instances`; abilities beyond it are declared in `features` and callers check them
(a static SSH pool cannot create machines, so it lacks Feature.CREATE).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


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
    """Retry after `delay` seconds."""

    def __init__(self, message: str, delay: float = 10.0):
        super().__init__(message)
        self.delay = delay


class NotFound(ProviderError):
    """The instance does not exist: treated as terminated."""


class Provider(ABC):
    """One pool's source of machines.

    Construction takes the fleet name, the pool's spec object (duck-typed: name, gpu, and the
    provider's own fields) and gridctl's state directory; it does no network I/O.
    """

    name: ClassVar[str]
    features: ClassVar[frozenset[Feature]] = frozenset()

    def __init__(self, fleet: str, pool: Any, state_dir: Path):
        self.fleet = fleet
        self.pool = pool
        self.state_dir = state_dir

    @abstractmethod
    def list_instances(self) -> dict[str, Instance]:
        """Every instance of this pool that exists now, by id; fresh each call, ours only (by tag
        for cloud pools). Idempotent, read-only towards the machines. Raises ProviderError."""
