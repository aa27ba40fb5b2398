"""Pure: a MetricsSnapshot -> Prometheus metric families (prometheus_client's own types).

Called by metrics.exporter.StoreCollector. Names follow the Prometheus conventions
(shared/reference/serving-and-metrics.md): `gridctl_` prefix, base units in the name, `_total` on
counters, states as one-hot gauges. Label values are bounded: node, pool, GPU index and UUID, state,
health, finding code and severity, job class, attempt outcome; never a job or attempt id or a
message (a job name is the user's, unbounded over time).
"""

from __future__ import annotations

import re
from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..jobspec import CLASSES
from ..models import Health, JobState, NodeState, Outcome
from .snapshot import MetricsSnapshot

MIB = 1024 * 1024
NODE = ["node", "pool"]
GPU = ["node", "gpu", "uuid"]
_UUID = re.compile(r"^[A-Za-z0-9-]{1,96}$")   # GPU-1a2b...; anything else from a node is not a label value


def families(snap: MetricsSnapshot) -> Iterator[Metric]:
    yield from _node_families(snap)
    yield from _gpu_families(snap)
    yield from _job_families(snap)
    yield from _pass_families(snap)
    yield from _failover_families(snap)


def _node_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    state = GaugeMetricFamily("gridctl_node_state", "The decision about a node, one-hot: 1 for its current state.",
                              labels=NODE + ["state"])
    health = GaugeMetricFamily("gridctl_node_health", "What the last probe saw, one-hot: 1 for its health.",
                               labels=NODE + ["health"])
    cordoned = GaugeMetricFamily("gridctl_node_cordoned", "1 when a person cordoned (or is draining) the node.",
                                 labels=NODE)
    seen = GaugeMetricFamily("gridctl_node_gpus_seen", "GPUs the last probe that reached the node listed.",
                             labels=NODE)
    expected = GaugeMetricFamily("gridctl_node_gpus_expected", "GPUs the pool's spec says the node has.",
                                 labels=NODE)
    findings = GaugeMetricFamily("gridctl_node_findings", "The node's current findings by code and severity.",
                                 labels=NODE + ["code", "severity"])
    probe = GaugeMetricFamily("gridctl_node_last_probe_duration_seconds", "How long the node's latest probe took.",
                              labels=NODE)
    for n in snap.nodes:
        at = [n.name, n.pool]
        for s in NodeState:
            state.add_metric(at + [s.value], 1.0 if n.state is s else 0.0)
        for h in Health:
            health.add_metric(at + [h.value], 1.0 if n.health is h else 0.0)
        cordoned.add_metric(at, 1.0 if n.cordoned else 0.0)
        if n.gpus_seen is not None:
            seen.add_metric(at, n.gpus_seen)
        expected.add_metric(at, n.gpus_expected)
        counts: dict[tuple[str, str], int] = {}
        for f in n.findings:
            counts[(f.code, f.severity.value)] = counts.get((f.code, f.severity.value), 0) + 1
        for (code, severity), count in sorted(counts.items()):
            findings.add_metric(at + [code, severity], count)
        if n.name in snap.probe_s:
            probe.add_metric(at, snap.probe_s[n.name])
    yield from (state, health, cordoned, seen, expected, findings, probe)


def _gpu_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    temp = GaugeMetricFamily("gridctl_gpu_temperature_celsius", "GPU temperature at the latest probe.", labels=GPU)
    util = GaugeMetricFamily("gridctl_gpu_utilization_ratio", "GPU utilisation at the latest probe (0 to 1).",
                             labels=GPU)
    used = GaugeMetricFamily("gridctl_gpu_memory_used_bytes", "GPU memory in use at the latest probe.", labels=GPU)
    total = GaugeMetricFamily("gridctl_gpu_memory_total_bytes", "GPU memory the card reports.", labels=GPU)
    power = GaugeMetricFamily("gridctl_gpu_power_watts", "GPU power draw at the latest probe.", labels=GPU)
    live = {n.name for n in snap.nodes}
    for node, readings in sorted(snap.gpus.items()):
        if node not in live:
            continue
        for g in readings:
            uuid = g.get("uuid") or ""
            at = [node, str(int(g["index"])), uuid if _UUID.match(uuid) else ""]
            for family, value, scale in ((temp, g.get("temperature_c"), 1.0), (util, g.get("utilization_pct"), 0.01),
                                         (used, g.get("memory_used_mib"), MIB), (total, g.get("memory_total_mib"), MIB),
                                         (power, g.get("power_w"), 1.0)):
                if isinstance(value, (int, float)):
                    family.add_metric(at, value * scale)
    yield from (temp, util, used, total, power)


def _job_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("gridctl_jobs", "Jobs by workload class and state.", labels=["class", "state"])
    classes = sorted(set(CLASSES) | {c for c, _ in snap.jobs})
    for c in classes:
        for s in JobState:
            jobs.add_metric([c, s.value], snap.jobs.get((c, s.value), 0))
    restarts = CounterMetricFamily("gridctl_job_restarts", "Node-failure requeues of the jobs kept in the store.",
                                   labels=["class"])
    started = CounterMetricFamily("gridctl_attempts_started", "Attempts confirmed running on a node.",
                                  labels=["class"])
    ended = CounterMetricFamily("gridctl_attempts_ended", "Attempts ended, by how they ended (recovery's outcome).",
                                labels=["class", "outcome"])
    for c in classes:
        restarts.add_metric([c], snap.restarts.get(c, 0))
        started.add_metric([c], snap.started.get(c, 0))
        for o in Outcome:
            ended.add_metric([c, o.value], snap.ended.get((c, o.value), 0))
    yield from (jobs, restarts, started, ended)


def _pass_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    if snap.last_pass_done is not None:
        yield GaugeMetricFamily("gridctl_last_pass_timestamp_seconds", "When the last completed reconcile pass ended "
                                "(Unix time).", value=snap.last_pass_done)
        yield GaugeMetricFamily("gridctl_seconds_since_last_pass", "Seconds since the last completed reconcile pass "
                                "ended: nothing is reconciling the fleet when this keeps growing.",
                                value=max(0.0, snap.read_at - snap.last_pass_done))
    if snap.last_pass_s is not None:
        yield GaugeMetricFamily("gridctl_last_pass_duration_seconds", "How long the last completed pass took.",
                                value=snap.last_pass_s)
    part = GaugeMetricFamily("gridctl_partition_suspected", "1 for each scope (fleet or pool) the last pass saw "
                             "mostly silent: gridctl suspects its own network and quarantines no silent node.",
                             labels=["scope"])
    for scope in snap.partitions:
        part.add_metric([scope], 1.0)
    yield part


def _failover_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    f = snap.failover
    if f is None:
        return
    yield GaugeMetricFamily("gridctl_last_failover_timestamp_seconds", "When the fault behind the latest failover "
                            "is dated: the node's last healthy probe before its attempt left it (Unix time).",
                            value=f.fault_at)
    if f.detect_s is not None:
        yield GaugeMetricFamily("gridctl_last_failover_detection_seconds", "Latest failover: from the node's last "
                                "healthy probe to the event that took the attempt off it.", value=f.detect_s)
    if f.recover_s is not None:
        yield GaugeMetricFamily("gridctl_last_failover_recovery_seconds", "Latest failover: from the node's last "
                                "healthy probe to the replacement attempt started on another node.",
                                value=f.recover_s)
