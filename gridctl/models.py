"""Frozen dataclasses and enums shared by every layer: what a probe saw, what health concluded,
what the store keeps. No I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Health(str, enum.Enum):
    """What the last probe saw."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"


class NodeState(str, enum.Enum):
    """The decision taken about a node (DESIGN section 3)."""

    PROVISIONING = "provisioning"
    READY = "ready"
    SUSPECT = "suspect"
    QUARANTINED = "quarantined"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


class Severity(str, enum.Enum):
    """How bad one finding is. `unhealthy` counts toward `unhealthy_after`; `fatal` quarantines at once."""

    INFO = "info"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    FATAL = "fatal"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.DEGRADED: 1, Severity.UNHEALTHY: 2, Severity.FATAL: 3}


class Contact(str, enum.Enum):
    """How the probe's SSH exec ended, before any GPU output is looked at."""

    OK = "ok"                      # the script ran to its end marker
    UNREACHABLE = "unreachable"    # connect refused / timed out / no banner / DNS: silence
    AUTH = "auth"                  # credentials refused: configuration, alert
    HOST_KEY = "host-key"          # host key changed: alert, may be an attack
    HOST_KEY_UNKNOWN = "host-key-unknown"  # strict policy and the key is not known: alert
    HUNG = "hung"                  # connected, but the probe did not finish in time


@dataclass(frozen=True)
class GpuReading:
    """One nvidia-smi row. None means the field was absent ([N/A], [Not Supported], ...)."""

    index: int
    uuid: str | None = None
    name: str | None = None
    bus_id: str | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    utilization_pct: float | None = None
    ecc_uncorrected_volatile: int | None = None
    ecc_corrected_volatile: int | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    retired_pages_pending: bool | None = None
    hw_slowdown: bool | None = None
    thermal_slowdown: bool | None = None
    power_brake_slowdown: bool | None = None
    recovery_action: str | None = None
    unknown_fields: tuple[str, ...] = ()   # health fields that read as [Unknown Error]


@dataclass(frozen=True)
class XidEvent:
    """One NVRM Xid (or fallen-off-the-bus) kernel log record."""

    xid: int
    bus_id: str            # normalised 0000:8a:00.0 style, lower case
    text: str              # the rest of the line after the xid number
    time: str | None = None
    mig: str | None = None


@dataclass(frozen=True)
class Finding:
    """One thing the classifier concluded about a node, in words an operator understands."""

    code: str
    severity: Severity
    message: str
    gpu: int | None = None
    needs_reset: bool = False   # cleared only by a GPU reset / reboot / operator, not by good probes
    alert: bool = False         # a person should look even if no node action is taken

    def to_json(self) -> dict:
        return {"code": self.code, "severity": self.severity.value, "gpu": self.gpu, "message": self.message}


@dataclass(frozen=True)
class Observation:
    """What one probe of one node saw. Built by probe.parse_probe or from a transport failure."""

    node: str
    contact: Contact
    started_at: float                 # our clock, epoch seconds
    duration_s: float
    detail: str = ""                  # transport failure words, when contact is not OK
    node_time: int | None = None
    boot_id: str | None = None
    smi_rc: int | None = None
    smi_fields: tuple[str, ...] = ()
    smi_errors: tuple[str, ...] = ()  # non-row lines nvidia-smi printed
    gpus: tuple[GpuReading, ...] = ()
    xids: tuple[XidEvent, ...] = ()
    xid_source: str | None = None     # journalctl | dmesg | None when unreadable
    disk_free_bytes: int | None = None
    disk_total_bytes: int | None = None
    stuck_smi: int = 0                # nvidia-smi processes in D state on the node
    parse_problems: tuple[str, ...] = ()
    complete: bool = False            # saw @end


@dataclass(frozen=True)
class Verdict:
    """health.classify's answer for one observation."""

    health: Health
    findings: tuple[Finding, ...]
    reason: str

    @property
    def worst(self) -> Severity:
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=Severity.INFO)


@dataclass(frozen=True)
class NodeRecord:
    """A node as the store keeps it: identity, the decision, and the counters behind hysteresis."""

    name: str
    pool: str
    provider: str
    host: str
    port: int
    state: NodeState = NodeState.READY
    health: Health = Health.UNKNOWN
    reason: str = "not probed yet"
    cordoned: bool = False
    cordon_reason: str = ""
    failures: int = 0               # consecutive unhealthy / silent probes
    good: int = 0                   # consecutive healthy probes
    needs_release: bool = False     # quarantined for a reset-class finding: wait for reboot/uncordon
    boot_id: str | None = None
    last_seen: float | None = None  # last time the node answered at all
    last_good: float | None = None  # last healthy probe
    state_since: float | None = None
    gpus_expected: int = 0
    gpus_seen: int | None = None
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def schedulable(self) -> bool:
        return self.state is NodeState.READY and not self.cordoned


@dataclass(frozen=True)
class Event:
    """One recorded transition or notice; `kind` is a stable slug (node-state, fleet-partition, ...)."""

    time: float
    kind: str
    message: str
    node: str | None = None
    job: str | None = None
    severity: str = "info"   # info | warning | alert
