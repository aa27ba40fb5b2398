"""Pure health logic: Observation -> Findings -> Verdict, and the node state machine with hysteresis.

Called by reconcile/plan.py (state machine) and by `gridctl probe` (classification only). No I/O.
The catalogue and its sources: ../shared/reference/gpu-failure-modes.md; DESIGN section 3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .models import (Contact, Event, Expectation, Finding, GpuReading, Health, NodeRecord, NodeState, Observation,
                     Severity, Verdict, XidEvent)
from .probe import ProbeBudget

F, U, D, I = Severity.FATAL, Severity.UNHEALTHY, Severity.DEGRADED, Severity.INFO

# xid -> (severity, words, needs a GPU reset / reboot to clear)
XID_CATALOGUE: dict[int, tuple[Severity, str, bool]] = {
    13: (I, "graphics engine exception (application error)", False),
    31: (I, "GPU memory page fault (application error)", False),
    43: (I, "GPU stopped processing (application error)", False),
    45: (I, "preemptive cleanup after earlier errors", False),
    68: (I, "video processor exception (application error)", False),
    46: (F, "GPU stopped processing: reset required", True),
    48: (F, "double-bit ECC error", True),
    61: (D, "internal micro-controller breakpoint", False),
    62: (F, "internal micro-controller halt", True),
    63: (D, "row remapping pending: reset to activate", False),
    64: (F, "row remapping failure", True),
    74: (F, "NVLink error", True),
    79: (F, "fell off the bus", True),
    92: (D, "high single-bit ECC error rate", False),
    94: (D, "contained memory error", False),
    95: (F, "uncontained memory error", True),
    109: (F, "context switch timeout", True),
    119: (F, "GSP RPC timeout", True),
    120: (F, "GSP error", True),
    136: (F, "NVLink training failed", True),
    140: (F, "unrecoverable ECC error", True),
    143: (F, "GPU initialisation error", True),
    155: (F, "NVLink software-defined error", True),
    156: (F, "resource retirement event", True),
    158: (F, "GPU fatal timeout", True),
}
for _xid in range(144, 151):
    XID_CATALOGUE[_xid] = (F, "NVLink5 error", True)

SMI_RC = {  # nvidia-smi / NVML return codes that speak about the node (reference section 2.3)
    9: ("driver", "NVIDIA driver not loaded (nvidia-smi rc 9)"),
    10: ("driver", "NVIDIA driver interrupt issue (nvidia-smi rc 10)"),
    12: ("driver", "NVML library not found (nvidia-smi rc 12)"),
    14: ("gpu-inforom", "infoROM corrupted (nvidia-smi rc 14)"),
    15: ("gpu-lost", "a GPU has fallen off the bus or become inaccessible (nvidia-smi rc 15)"),
    18: ("driver", "driver/library version mismatch (nvidia-smi rc 18)"),
}
SMI_TIMEOUT_RC = (124, 137)   # `timeout` on the node: TERM after the budget, KILL 2 s later
HANG = "probe-hung"           # finding code: nvidia-smi, or the whole probe, did not answer in time
_HANDLE_RE = re.compile(r"Unable to determine the device handle for GPU (?P<bdf>[0-9A-Fa-f:.]+): (?P<why>.*)")
_RECOVERY_RE = re.compile(r"to 0x[0-9a-fA-F]+ \((?P<action>[^)]*)\)")


@dataclass(frozen=True)
class Thresholds:
    unhealthy_after: int = 2
    recover_after: int = 3
    stale_after_s: float = 60.0


def classify(obs: Observation, exp: Expectation) -> Verdict:
    """One observation -> health, findings, and a one-line reason."""
    findings = _contact_findings(obs, exp)
    if obs.contact is Contact.OK:
        findings += _output_findings(obs, exp)
    worst = max((f.severity for f in findings), key=lambda s: s.rank, default=I)
    if obs.contact in (Contact.UNREACHABLE, Contact.AUTH, Contact.HOST_KEY, Contact.HOST_KEY_UNKNOWN):
        health = Health.UNREACHABLE
    elif worst.rank >= U.rank:
        health = Health.UNHEALTHY
    elif worst is D:
        health = Health.DEGRADED
    else:
        health = Health.HEALTHY
    return Verdict(health=health, findings=tuple(findings), reason=_reason(findings, worst, obs))


def _reason(findings: list[Finding], worst: Severity, obs: Observation) -> str:
    if worst is I:
        return f"{len(obs.gpus)} GPUs healthy" if obs.gpus else "healthy"
    top = [f.message for f in sorted(findings, key=lambda f: f.code != "xid") if f.severity is worst]
    return "; ".join(top[:3]) + (f" (+{len(top) - 3} more)" if len(top) > 3 else "")


def _contact_findings(obs: Observation, exp: Expectation) -> list[Finding]:
    detail = obs.detail or "no answer"
    if obs.contact is Contact.UNREACHABLE:
        return [Finding("unreachable", U, f"unreachable: {detail}")]
    if obs.contact is Contact.AUTH:
        return [Finding("auth-failed", U, f"ssh authentication refused: {detail}", alert=True)]
    if obs.contact is Contact.HOST_KEY_UNKNOWN:
        return [Finding("host-key-unknown", U, f"host key not trusted (strict policy): {detail}", alert=True)]
    if obs.contact is Contact.HOST_KEY:
        return [Finding("host-key-changed", F, f"host key changed: {detail}", needs_reset=True, alert=True)]
    if obs.contact is Contact.HUNG:
        # a busy node or sshd answers slowly too: unhealthy, counted; fatal only when confirmed (next_node)
        return [Finding(HANG, U, f"probe slow: no answer in {exp.probe_timeout_s:g}s while SSH answered")]
    return []


def _output_findings(obs: Observation, exp: Expectation) -> list[Finding]:
    out: list[Finding] = []
    if not obs.complete:
        why = "; ".join(obs.parse_problems) or "no end marker"
        out.append(Finding("probe-incomplete", U, f"probe output incomplete: {why}"))
    elif obs.parse_problems:
        out += [Finding("probe-output", I, p) for p in obs.parse_problems]
    if exp.gpus > 0:
        out += _smi_findings(obs, exp)
        by_bus = {g.bus_id: g.index for g in obs.gpus if g.bus_id}
        for gpu in obs.gpus:
            out += _gpu_findings(gpu, exp)
        out += [f for x in obs.xids if (f := _xid_finding(x, by_bus)) is not None]
        if obs.xid_source is None and obs.complete:
            out.append(Finding("xid-unreadable", I, "kernel log not readable: XIDs unknown"))
    if obs.spot_notice:
        # degraded, not fatal: the node still works; its jobs leave by the drain path (services first)
        out.append(Finding("spot-interruption", D, f"spot interruption notice: {obs.spot_notice[:160]}; draining"))
    if obs.work_dir_unsafe:
        # no new work, running jobs left alone; clears when the dir is fixed (no reset needed)
        out.append(Finding("work-dir-unsafe", D, f"work dir unsafe: {obs.work_dir_unsafe[:160]}: nothing there is "
                           "read or killed, no new work", alert=True))
    if obs.foreign_attempts:
        shown = ", ".join(obs.foreign_attempts[:5])
        out.append(Finding("foreign-attempt-dir", I, f"attempt dir(s) without this store's token (a lost or "
                           f"replaced state file, another gridctl, or planted): {shown}: left alone", alert=True))
    if obs.stuck_smi > 0:
        out.append(Finding("smi-stuck", F, f"{obs.stuck_smi} nvidia-smi process(es) stuck in D state for over a minute: driver wedged",
                           needs_reset=True))
    if obs.disk_free_bytes is not None and obs.disk_total_bytes:
        free_pct = 100.0 * obs.disk_free_bytes / obs.disk_total_bytes
        if free_pct < exp.min_disk_free_pct:
            out.append(Finding("disk-full", D, f"disk {100 - free_pct:.0f}% full ({free_pct:.1f}% free)"))
    return out


def _smi_findings(obs: Observation, exp: Expectation) -> list[Finding]:
    out: list[Finding] = []
    text = " ".join(obs.smi_errors)
    rc = obs.smi_rc
    lost_bus = set()
    for line in obs.smi_errors:
        m = _HANDLE_RE.search(line)
        if m:
            bus = m.group("bdf").lower()
            lost_bus.add(bus)
            out.append(Finding("gpu-lost", F, f"GPU {bus} unreachable: {m.group('why').strip()}", needs_reset=True))
    if rc is None:
        if obs.complete:
            out.append(Finding("smi-missing", U, "probe output has no nvidia-smi section"))
        return out
    timed_out = rc in SMI_TIMEOUT_RC
    if timed_out:
        # without persistence mode nvidia-smi can take seconds: one timeout is not a wedged driver
        out.append(Finding(HANG, U, f"nvidia-smi slow: no answer in {ProbeBudget(exp.probe_timeout_s).smi_s}s"))
    elif "couldn't communicate with the NVIDIA driver" in text:
        out.append(Finding("driver", F, "nvidia-smi couldn't communicate with the NVIDIA driver", needs_reset=True))
    elif "version mismatch" in text.lower():
        out.append(Finding("driver", F, "NVML driver/library version mismatch", needs_reset=True))
    elif rc in SMI_RC and not (rc == 15 and lost_bus):
        code, words = SMI_RC[rc]
        out.append(Finding(code, F, words, needs_reset=True))
    elif rc == 127:
        out.append(Finding("smi-missing", U, "nvidia-smi not found on the node"))
    elif rc != 0 and not lost_bus:
        first = obs.smi_errors[0] if obs.smi_errors else "no message"
        out.append(Finding("smi-failed", U, f"nvidia-smi failed (rc {rc}): {first[:160]}"))
    if obs.nvml_error is not None and not any(f.code == "driver" for f in out):
        out.append(_nvml_finding(obs.nvml_error))
    seen = len(obs.gpus)
    # rows printed before a timeout are a partial list, not evidence that the rest are gone
    if seen < exp.gpus and obs.complete and not timed_out and (rc == 0 or obs.gpus or lost_bus):
        out.append(Finding("gpu-missing", F, f"saw {seen} of {exp.gpus} GPUs", needs_reset=True))
    return out


def _nvml_finding(error: str) -> Finding:
    """The agent's NVML did not initialise (it asked nvidia-smi instead): a driver that does not
    answer is fatal (same codes as nvidia-smi's rc); a binding or library problem is only noted."""
    code = error.split(" ", 1)[0]
    rc = int(code) if code.isdigit() else None
    if rc in SMI_RC and SMI_RC[rc][0] == "driver" and rc != 12:
        return Finding("driver", F, f"NVML did not initialise: {error[len(code):].strip()} (NVML error {rc})",
                       needs_reset=True)
    return Finding("nvml-unavailable", I, f"NVML did not initialise ({error}): read through nvidia-smi")


def _gpu_findings(g: GpuReading, exp: Expectation) -> list[Finding]:
    out: list[Finding] = []
    where = f"GPU {g.index}" + (f" ({g.bus_id})" if g.bus_id else "")
    if g.ecc_uncorrected_volatile:
        out.append(Finding("ecc", F, f"{g.ecc_uncorrected_volatile} uncorrected ECC errors on {where}", g.index, True))
    if g.remapped_rows_failure:
        out.append(Finding("row-remap-failed", F, f"row remapping failed on {where}", g.index, True))
    if g.recovery_action and g.recovery_action.lower() not in ("none", "0"):
        out.append(Finding("recovery-action", F, f"driver asks for recovery '{g.recovery_action}' on {where}",
                           g.index, True))
    if g.remapped_rows_pending or g.retired_pages_pending:
        out.append(Finding("row-remap-pending", D, f"row remap pending on {where}: reset to activate", g.index))
    if g.temperature_c is not None and g.temperature_c >= exp.max_gpu_temp_c:
        out.append(Finding("hot", D, f"{where} at {g.temperature_c:g}°C (limit {exp.max_gpu_temp_c:g}°C)", g.index))
    slow = [n for n, on in (("hw slowdown", g.hw_slowdown), ("thermal slowdown", g.thermal_slowdown),
                            ("power brake", g.power_brake_slowdown)) if on]
    if slow:
        out.append(Finding("slowdown", D, f"{', '.join(slow)} active on {where}", g.index))
    for field in g.unknown_fields:
        out.append(Finding("read-failed", U, f"{field} read failed ([Unknown Error]) on {where}", g.index))
    return out


def _xid_finding(x: XidEvent, by_bus: dict[str, int]) -> Finding | None:
    gpu = by_bus.get(x.bus_id)
    where = (f"GPU {gpu} ({x.bus_id})" if gpu is not None else f"GPU {x.bus_id}") + (f" {x.mig}" if x.mig else "")
    if x.xid == 154:
        m = _RECOVERY_RE.search(x.text)
        action = m.group("action") if m else "unknown"
        if action.lower() == "none":
            return Finding("xid", I, f"xid 154 on {where}: recovery action cleared", gpu)
        return Finding("xid", F, f"xid 154 on {where}: driver asks for '{action}'", gpu, True)
    severity, words, reset = XID_CATALOGUE.get(x.xid, (D, "unrecognised xid", False))
    return Finding("xid", severity, f"xid {x.xid} on {where}: {words}", gpu, reset)


# ---------------------------------------------------------------- node state machine

def next_node(node: NodeRecord, obs: Observation, verdict: Verdict, now: float, th: Thresholds,
              partitioned: bool = False) -> tuple[NodeRecord, list[Event]]:
    """Apply one verdict to a node: counters, state with hysteresis, and the events to record.

    Fatal evidence quarantines at once. Silence, a failed probe and a slow one (nvidia-smi or the
    whole probe past its deadline) only make a node suspect until `unhealthy_after` of them in a
    row or `stale_after`; silence never quarantines while our side looks partitioned.
    """
    events: list[Event] = []
    worst = verdict.worst
    silent = verdict.health is Health.UNREACHABLE and worst is not F
    answered = obs.contact in (Contact.OK, Contact.HUNG)
    healthy = verdict.health is Health.HEALTHY
    failed = worst.rank >= U.rank
    changes: dict = {"health": verdict.health, "findings": verdict.findings,
                     "last_seen": now if answered else node.last_seen}
    if obs.contact is Contact.OK:
        changes["gpus_seen"] = len(obs.gpus)
    needs_release = node.needs_release
    if rebooted(node, obs):
        events.append(Event(now, "node-rebooted", f"rebooted (boot id {node.boot_id[:8]} -> {obs.boot_id[:8]})",
                            node=node.name, severity="warning"))
        needs_release = False   # a reboot is the remedy for reset-class findings
    if obs.boot_id:
        changes["boot_id"] = obs.boot_id
    good = node.good + 1 if healthy else 0
    failures = node.failures + 1 if failed else 0
    last_good = now if healthy else node.last_good
    changes.update(good=good, failures=failures, last_good=last_good)
    old_codes = {f.code for f in node.findings}
    for f in verdict.findings:
        if f.alert and f.code not in old_codes:
            events.append(Event(now, "alert", f.message, node=node.name, severity="alert"))

    state, reason = node.state, node.reason
    if worst is F:
        state, reason = NodeState.QUARANTINED, verdict.reason
        needs_release = needs_release or any(f.needs_reset for f in verdict.findings if f.severity is F)
        if node.state is NodeState.QUARANTINED and node.needs_release:
            reason = node.reason  # keep the first cause; the new one is in the findings
    elif failed:
        state, reason, confirmed = _on_failure(node, verdict, failures, now, th, silent and partitioned)
        if confirmed is not None:
            changes["findings"] = confirmed
    elif not healthy:  # degraded: no new work, running jobs stay
        if node.state in (NodeState.READY, NodeState.SUSPECT, NodeState.PROVISIONING):
            state, reason = NodeState.SUSPECT, verdict.reason
    else:
        state, reason = _recover(node, good, needs_release, th, verdict)
    changes.update(needs_release=needs_release if state is NodeState.QUARANTINED else False)
    if state is not node.state:
        changes["state_since"] = now
        severity = "warning" if state in (NodeState.QUARANTINED, NodeState.SUSPECT) else "info"
        events.append(Event(now, "node-state", f"{node.state.value} -> {state.value}: {reason}", node=node.name,
                            severity=severity))
    changes.update(state=state, reason=reason)
    return replace(node, **changes), events


def _on_failure(node: NodeRecord, verdict: Verdict, failures: int, now: float, th: Thresholds, cut_off: bool):
    """next_node for an unhealthy or silent probe: (state, reason, findings to store or None).

    Counted, never acted on at once: `unhealthy_after` failures in a row (or `stale_after` without
    a good probe, from the second failure on) quarantine, unless silence while our side is cut off.
    A hang counts the same way and, once confirmed, is stored as fatal (not reset-class)."""
    hang = _hang(verdict)
    since = node.last_good or node.state_since or now
    # one failed probe never quarantines, however old the last good one (a node degraded for
    # an hour, a pass every five minutes from cron): only positive evidence acts at once
    stale = failures > 1 and now - since >= th.stale_after_s
    if (failures >= th.unhealthy_after or stale) and not cut_off:
        why = f"{failures} failed probes in a row" if failures >= th.unhealthy_after else \
            f"no good probe for {now - since:.0f}s"
        confirmed = None
        if hang is not None:
            fatal = replace(hang, severity=F, message=f"{_hung_words(hang.message)} ({why})")
            confirmed = tuple(fatal if f is hang else f for f in verdict.findings)
        if node.state is NodeState.QUARANTINED:
            return node.state, node.reason, confirmed
        words = _hung_words(verdict.reason) if hang is not None else verdict.reason
        return NodeState.QUARANTINED, f"{words} ({why})", confirmed
    if node.state not in (NodeState.READY, NodeState.SUSPECT, NodeState.PROVISIONING):
        return node.state, node.reason, None
    state = NodeState.SUSPECT if node.state is not NodeState.PROVISIONING else node.state
    reason = verdict.reason + (" (fleet partition suspected: not quarantining)" if cut_off else "")
    if hang is not None:
        reason += f" ({failures} of {th.unhealthy_after})"
    return state, reason, None


def rebooted(node: NodeRecord | None, obs: Observation) -> bool:
    """The node answered with a boot id other than the one recorded: it restarted since."""
    return bool(node is not None and obs.boot_id and node.boot_id and obs.boot_id != node.boot_id)


def condemns_attempts(node: NodeRecord, th: Thresholds) -> bool:
    """Whether a node, as judged after a probe that reached it, is evidence that the attempts on it
    are gone or unsafe: quarantined with a fatal finding now (a confirmed hang included), or with
    `unhealthy_after` failed probes in a row. One slow or failed probe never is, not even on a
    node still quarantined from before. For reconcile/nodes.node_views (NodeView.condemned)."""
    if node.state is not NodeState.QUARANTINED:
        return False
    return any(f.severity is F for f in node.findings) or node.failures >= th.unhealthy_after


def fault_gpus(node: NodeRecord, th: Thresholds) -> frozenset[int] | None:
    """The GPU indexes a condemned node's fatal findings name, when every one of them names a GPU:
    work on its other GPUs may move make-before-break. None when the fault is node-wide (a fatal
    finding without a GPU, or failures in a row) or the node is not condemned."""
    if not condemns_attempts(node, th):
        return None
    fatal = [f for f in node.findings if f.severity is F]
    if not fatal or any(f.gpu is None for f in fatal):
        return None
    return frozenset(f.gpu for f in fatal)


def _hang(verdict: Verdict) -> Finding | None:
    """The probe's unconfirmed hang (nvidia-smi or the whole probe too slow), if that is what failed."""
    return next((f for f in verdict.findings if f.code == HANG and f.severity is U), None)


def _hung_words(text: str) -> str:
    return text.replace(" slow: no answer", " hung: no answer")


def _recover(node: NodeRecord, good: int, needs_release: bool, th: Thresholds, verdict: Verdict):
    if node.state is NodeState.PROVISIONING:
        return NodeState.READY, verdict.reason
    if node.state in (NodeState.SUSPECT, NodeState.QUARANTINED):
        if node.state is NodeState.QUARANTINED and needs_release:
            return node.state, _strip_suffix(node.reason) + " (healthy now; waiting for uncordon or reboot)"
        if good >= th.recover_after:
            return NodeState.READY, f"{good} good probes in a row"
        return node.state, _strip_suffix(node.reason) + f" (recovering: {good}/{th.recover_after} good probes)"
    return node.state, verdict.reason


def _strip_suffix(reason: str) -> str:
    return re.sub(r" \((recovering: \d+/\d+ good probes|healthy now; waiting for uncordon or reboot)\)$", "", reason)
