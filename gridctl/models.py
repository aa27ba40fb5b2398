"""Frozen dataclasses and enums shared by every layer: what a probe saw, what health concluded,
what the store keeps. No I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from providers.base import Feature, Instance


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
    attempts: tuple["AttemptReport", ...] = ()   # job attempt dirs on the node (not yet reaped)
    spot_notice: str | None = None    # the cloud announced this spot instance's interruption (IMDS JSON)
    uptime_s: float | None = None     # seconds since boot when the kernel log was read (a complete probe):
                                      # where the next read starts
    work_dir_unsafe: str | None = None   # why the work dir is not trusted (another user could change it):
                                         # no attempt there was read or killed; finding `work-dir-unsafe`
    compute_apps: tuple[tuple[str, int], ...] = ()   # (GPU uuid, pid) of every compute process nvidia-smi lists
    foreign_attempts: tuple[str, ...] = ()  # attempt dirs without their token: not ours, never reported or killed
    probe_path: str = "sh"            # `agent` (resident session) or `sh` (one exec of the sh probe)
    nvml_error: str | None = None     # the agent's NVML did not initialise ("9 Driver Not Loaded"): it used nvidia-smi


@dataclass(frozen=True)
class LogPosition:
    """Where the last kernel-log read of a node stood: its boot, and seconds since that boot.
    The store keeps it from each observation (boot_id, uptime_s); no clock change can move it."""

    boot_id: str
    uptime_s: float


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
    draining: bool = False          # `gridctl drain`: cordoned, and its jobs are being moved
    cloud: tuple[tuple[str, str], ...] = ()   # cloud instance facts: instance_type, zone, spot, launched_at

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


@dataclass(frozen=True)
class PassRecord:
    """One reconcile pass as the store keeps it (table `passes`): who ran it, how, when, how long."""

    host: str
    pid: int
    mode: str                         # loop | once (`gridctl reconcile`) | command (a writing command's own pass)
    interval_s: float | None          # the loop's interval; None for a single pass
    started_at: float
    duration_s: float
    nodes: int                        # nodes probed
    launches: int = 0
    stops: int = 0

    @property
    def ended_at(self) -> float:
        return self.started_at + self.duration_s
EVENT_SEVERITIES = ("info", "warning", "alert")     # lowest first: an alert hook's min_severity ranks by it

# Every kind an Event is recorded with (tests/unit/test_alert_rules.py checks the code against it):
# alert hooks' `kinds:` filter is validated against this list.
EVENT_KINDS = frozenset({
    "alert", "attempt-back", "attempt-ended", "attempt-fenced", "attempt-moving", "attempt-running", "attempt-silent",
    "attempt-starting", "attempt-stop-failed", "attempt-stopped", "attempt-unconfirmed", "cancel-requested",
    "cordon", "drain", "fleet-partition", "fleet-partition-ended", "hedge", "instance-launch",
    "instance-launch-failed", "instance-replaced", "instance-retire-failed", "instance-retired", "job-created",
    "job-deleted", "job-restart", "job-state", "node-added", "node-rebooted", "node-removed", "node-state",
    "orphan-attempt", "pass-skipped", "pool-capacity", "pool-error", "replica-not-ready", "replica-ready", "restart-requested", "uncordon",
})


@dataclass(frozen=True)
class Delivery:
    """One event's delivery to one alert hook (gridctl.alerts): `pending` until the hook took it,
    `delivered`, or `failed` after the hook's max_tries. `next_try_at`: not sent again before it."""

    event_id: int
    hook: str
    state: str = "pending"          # pending | delivered | failed
    tries: int = 0
    next_try_at: float | None = None
    error: str = ""


# ---------------------------------------------------------------- jobs (DESIGN section 5)

class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Outcome(str, enum.Enum):
    """How one attempt ended, as far as recovery is concerned (recovery.decide's input)."""

    OK = "ok"                  # exit 0
    EXIT = "exit"              # exit != 0, or the process vanished without an exit code
    HUNG = "hung"              # no heartbeat for hang_timeout; killed
    NODE = "node"              # node failed, rebooted, was lost, or an infra exit code
    DURATION = "duration"      # ran past max_duration; killed
    DRAIN = "drain"            # moved off a draining node by the user
    CANCEL = "cancel"          # cancelled by the user
    SUPERSEDED = "superseded"  # a stale copy, replaced while its node was silent
    START = "start"            # the launch itself failed

    @property
    def failed_here(self) -> bool:
        """The attempt failed on its node: a requeue avoids that node when another fits."""
        return self in (Outcome.EXIT, Outcome.HUNG, Outcome.NODE, Outcome.START)


class AttemptState(str, enum.Enum):
    STARTING = "starting"            # recorded before the remote start; confirmed by the launch or a probe
    RUNNING = "running"
    SILENT = "silent"                # its node stopped answering: the process may or may not still run
    EXITED = "exited"
    LOST = "lost"                    # node failed, rebooted, or silent past unreachable_grace
    HUNG = "hung"                    # no heartbeat for hang_timeout: killed
    KILLED = "killed"                # stopped by gridctl (cancel, drain, fencing, max_duration)
    FAILED_TO_START = "failed_to_start"

    @property
    def live(self) -> bool:
        """May still hold GPUs and count as the replica's copy."""
        return self in (AttemptState.STARTING, AttemptState.RUNNING, AttemptState.SILENT)


@dataclass(frozen=True)
class AttemptReport:
    """One attempt directory as a node's probe saw it (times on the node's clock)."""

    id: str
    pid: int | None
    alive: bool
    exit_code: int | None
    heartbeat_at: int | None
    started_at: int | None
    fenced: bool = False              # the probe killed it because it was on the kill list
    node_now: int | None = None       # the node's clock when it looked
    reaped: bool = False              # on the kill list: marked done by this probe
    pid_mismatch: bool = False        # its pid is held by another process (reused): the attempt's own is
                                      # gone, nothing was signalled; finding `pid-mismatch`


@dataclass(frozen=True)
class Attempt:
    """One run of one replica of a job on one node, as the store keeps it."""

    id: str                           # "<job>.<n>"
    job: str
    n: int
    replica: int
    node: str
    state: AttemptState
    reason: str = ""
    gpus: tuple[str, ...] = ()        # GPU UUIDs (CUDA_VISIBLE_DEVICES)
    created_at: float = 0.0
    started_at: float | None = None   # confirmed running
    ended_at: float | None = None
    exit_code: int | None = None
    pid: int | None = None
    heartbeat_at: float | None = None  # our clock, from the probe's heartbeat age
    silent_since: float | None = None
    outcome: Outcome | None = None    # how a terminal attempt counts (None while it is live)
    reaped: bool = False              # its directory on the node is marked done
    port: int | None = None           # a service's port on its node (GRIDCTL_PORT)
    ready: bool = False               # its readiness check passes: routers send it requests
    ready_since: float | None = None
    check_failures: int = 0           # readiness checks failed in a row


@dataclass(frozen=True)
class JobRecord:
    """A job: the user's intent (spec, cancel) and the decided state with its reason."""

    name: str
    spec: dict                        # the validated job spec as JSON-able dict
    state: JobState = JobState.PENDING
    reason: str = "waiting for the next reconcile pass"
    reason_code: str = "pending"
    created_at: float = 0.0
    updated_at: float = 0.0
    restarts: int = 0                 # node-failure requeues so far
    failures: int = 0                 # process failures so far (exit != 0, hung)
    next_try_at: float | None = None  # backoff: no new attempt before this
    pending_since: float | None = None
    cancel_requested: bool = False
    attempts_made: int = 0
    cancel_by: str = "user"           # who asked for the cancel: "user", "demo"
    restart_asked: int = 0            # restarts the user asked for (`gridctl restart`; a user column) ...
    restart_done: int = 0             # ... and those a pass has carried out (a pass column)

    @property
    def job_class(self) -> str:
        return self.spec.get("class", "service")


@dataclass(frozen=True)
class ReadyTarget:
    """One replica's readiness check, as the controller makes it."""

    attempt: str
    host: str
    port: int
    http_path: str | None          # None: a TCP connect is the check
    timeout_s: float


@dataclass(frozen=True)
class ReadyCheck:
    ok: bool
    detail: str                    # "HTTP 200", "HTTP 503", "connection refused", "timed out after 1s"
    checked_at: float


LOCAL_HOST = "127.0.0.1"     # simulated (`provider: local`) nodes serve on this machine


def service_host(node_host: str | None) -> str:
    """The address a replica on this node listens on and routers call (GRIDCTL_HOST)."""
    return LOCAL_HOST if node_host in (None, "", "local") else node_host


@dataclass(frozen=True)
class Endpoint:
    """One live replica of a service as a router sees it (`gridctl endpoints`, `gridctl route`)."""

    job: str
    replica: int
    attempt: str
    node: str
    host: str
    port: int
    ready: bool
    ready_since: float | None
    draining: bool                    # its node is draining or its replacement is taking over


# ---------------------------------------------------------------- the fleet as a pass sees it

@dataclass(frozen=True)
class Target:
    """Where and how to reach one node. Built by reconcile/observe from the spec and ~/.ssh/config."""

    name: str
    host: str
    port: int = 22
    user: str = "root"
    keys: tuple[Path, ...] = ()
    proxy_jump: "Target | None" = None
    connect_timeout: float = 5.0
    host_key_policy: str = "accept-new"
    known_hosts: Path = Path("~/.config/gridctl/known_hosts")
    local_dir: Path | None = None            # set for simulated nodes: run locally, no SSH
    local_env: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple:
        return (self.user, self.host, self.port, self.proxy_jump.key if self.proxy_jump else None)


@dataclass(frozen=True)
class Expectation:
    """What the spec says a node should look like, and the limits to judge it by."""

    gpus: int = 0
    max_gpu_temp_c: float = 90.0
    min_disk_free_pct: float = 5.0
    probe_timeout_s: float = 15.0


@dataclass(frozen=True)
class InventoryNode:
    """One node the fleet has now, with how to reach it and what it should look like."""

    name: str
    pool: str
    provider: str
    target: Target
    expect: Expectation
    work_dir: str
    cloud: tuple[tuple[str, str], ...] = ()    # instance facts worth showing (type, zone, spot, launched)
    metadata: str | None = None                # instance metadata endpoint to ask for spot notices


@dataclass(frozen=True)
class Inventory:
    nodes: list[InventoryNode]
    failed_pools: dict[str, str]     # pool -> why its listing failed (its nodes are left alone)
    instances: dict[str, dict[str, Instance]] | None = None   # pool -> every listed instance, any state
    features: dict[str, frozenset[Feature]] = field(default_factory=dict)   # pool -> what its provider can do
