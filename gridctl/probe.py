"""The probe: a POSIX sh script sent to a node on stdin, and its pure parser -> Observation.

Called by reconcile/observe.py (via a transport, through probe_request) and by tests with saved
outputs. The script installs nothing; every slow command on the node is bounded by `timeout -k`
and every output it reads is capped as it is read. What it changes on the node is limited to
attempt dirs it has proven are gridctl's (launcher.TRUST_FN): fencing, log trimming, retention.
Everything a node prints is untrusted: each line of ours starts with `@<nonce> ` (a per-probe
secret) and each line of tool output with `|`, so no tool output can pose as a section.
The parser never raises: garbage in gives an Observation with parse problems.
"""

from __future__ import annotations

import csv
import hmac
import re
import secrets
import shlex
from dataclasses import dataclass, field
from datetime import datetime

from .launcher import ATTEMPT_ID_RE, attempt_token
from .models import AttemptReport, Contact, GpuReading, LogPosition, Observation, XidEvent
from .probe_script import (CORE_FIELDS, FULL_FIELDS, KERNEL_LOG_CAP, PROBE_VERSION, SCRIPT, SMI_OUTPUT_CAP,  # noqa: F401
                           query)

MAX_OUTPUT_BYTES = 4 * 1024 * 1024      # client-side cap on what one probe may return

_COLUMN_TO_FIELD = dict(FULL_FIELDS)
_COLUMN_TO_FIELD["clocks_event_reasons.hw_slowdown"] = "hw_slowdown"
_COLUMN_TO_FIELD["clocks_event_reasons.hw_thermal_slowdown"] = "thermal_slowdown"
_COLUMN_TO_FIELD["clocks_event_reasons.hw_power_brake_slowdown"] = "power_brake_slowdown"
# fields whose "[Unknown Error]" is a failed health read, not an absent value
HEALTH_FIELDS = {"temperature_c", "ecc_uncorrected_volatile", "remapped_rows_pending", "remapped_rows_failure",
                 "retired_pages_pending", "recovery_action"}
_INT_FIELDS = {"index", "memory_total_mib", "memory_used_mib", "ecc_uncorrected_volatile", "ecc_corrected_volatile"}
_FLOAT_FIELDS = {"temperature_c", "power_w", "utilization_pct"}
_BOOL_FIELDS = {"remapped_rows_pending", "remapped_rows_failure", "retired_pages_pending", "hw_slowdown",
                "thermal_slowdown", "power_brake_slowdown"}
ABSENT = {"[n/a]", "n/a", "[not supported]", "[insufficient permissions]", "",
          "[requested functionality has been deprecated]"}
UNKNOWN = "[unknown error]"





@dataclass(frozen=True)
class ProbeBudget:
    """How the probe's time is split: the client deadline bounds the whole exec."""

    total_s: float

    @property
    def smi_s(self) -> int:
        return max(1, int(self.total_s * 0.5))

    @property
    def log_s(self) -> int:
        return max(1, int(self.total_s * 0.15))


@dataclass(frozen=True)
class ProbeRequest:
    """One probe of one node: the command line (nothing secret on it), what goes on stdin (this
    probe's nonce, the kill list with the attempts' tokens, the log position, then the script),
    and how to read its answer. Built by probe_request; called by reconcile/observe."""

    command: str
    stdin: bytes
    nonce: str
    key: bytes | None
    agent_args: dict = field(default_factory=dict, compare=False)   # the same probe as a resident-agent request

    def parse(self, node: str, output: bytes | str, *, started_at: float, duration_s: float) -> Observation:
        return parse_probe(node, output, started_at=started_at, duration_s=duration_s, nonce=self.nonce, key=self.key)


_SCRIPT_BYTES = SCRIPT.encode()        # encoded once: every sh probe sends it
_BOOT_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}\Z")


def probe_request(budget: ProbeBudget, work_dir: str, *, kill: tuple[str, ...] = (), key: bytes | None = None,
                  position: LogPosition | None = None, metadata: str | None = None) -> ProbeRequest:
    """The probe of one node. `kill`: attempt ids gridctl has ended on this node, fenced (killed
    if still alive and provably theirs) and marked reaped; `key`: the store's attempt key, which
    proves attempt dirs are ours (needed with a kill list; without it reports are not checked);
    `position`: where the last kernel-log read stood (None: read the whole current boot)."""
    bad = [a for a in kill if not ATTEMPT_ID_RE.match(a)]
    if bad:
        raise ValueError(f"invalid attempt ids {bad}")
    if kill and key is None:
        raise ValueError("a kill list needs the attempt key")
    nonce = secrets.token_hex(16)
    orders = "".join(f"{a} {attempt_token(key, a)}\n" for a in kill) if key is not None else ""
    pb, pu = "", "0"
    if position is not None and _BOOT_ID_RE.match(position.boot_id):
        pb, pu = position.boot_id, f"{float(position.uptime_s):.3f}"
    head = f"N={nonce}\nKILL={shlex.quote(orders)}\nPB={shlex.quote(pb)}\nPU={pu}\n"
    args = [str(budget.smi_s), str(budget.log_s), work_dir, metadata or ""]
    agent = {"nonce": nonce, "t": budget.smi_s, "tlog": budget.log_s, "wd": work_dir, "md": metadata or "",
             "pb": pb, "pu": float(pu), "query": query(FULL_FIELDS), "core": query(CORE_FIELDS),
             "kill": [[a, attempt_token(key, a)] for a in kill] if key is not None else []}
    return ProbeRequest("sh -s -- " + " ".join(shlex.quote(a) for a in args), head.encode() + _SCRIPT_BYTES, nonce, key,
                        agent)


# ---------------------------------------------------------------- parsing

_XID_RE = re.compile(r"NVRM: Xid \((?:PCI:)?(?P<bdf>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?)"
                     r"(?P<mig>[^)]*)\): (?P<xid>\d{1,6}),?\s*(?P<rest>.*)")
_GPU_AT_RE = re.compile(r"NVRM: (?:The NVIDIA )?GPU (?:at )?(?:PCI:)?(?P<bdf>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?)")
_ISO_RE = re.compile(r"^\[?(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:[.,]\d+)?([+-]\d{2}:?\d{2}|Z)?")


def normalise_bus_id(raw: str) -> str:
    """"00000000:8A:00.0" / "PCI:0000:8a:00" -> "0000:8a:00.0" (4-digit domain, lower case, function)."""
    raw = raw.strip().lower().removeprefix("pci:")
    parts = raw.split(":")
    if len(parts) != 3:
        return raw
    domain, bus, devfn = parts
    domain = domain[-4:].rjust(4, "0")
    if "." not in devfn:
        devfn += ".0"
    return f"{domain}:{bus}:{devfn}"


def _line_time(line: str) -> float | None:
    m = _ISO_RE.match(line)
    if not m:
        return None
    zone = m.group(2) or "+00:00"
    zone = "+00:00" if zone == "Z" else (zone if ":" in zone else zone[:3] + ":" + zone[3:])
    try:
        return datetime.fromisoformat(m.group(1) + zone).timestamp()
    except ValueError:
        return None


def parse_xids(lines: list[str], since: float = 0, until: float | None = None) -> tuple[XidEvent, ...]:
    """Kernel log lines -> Xid events, newest per (xid, GPU) last. Lines older than `since` are
    skipped, and lines stamped after `until` (written while the node's clock ran ahead: read then)."""
    found: dict[tuple[int, str], XidEvent] = {}
    last_gpu_at = ""
    for line in lines:
        when = _line_time(line)
        if when is not None and (since and when < since or until is not None and when > until):
            continue
        stamp = _ISO_RE.match(line).group(1) if when is not None else None
        m = _XID_RE.search(line)
        if m:
            mig = m.group("mig").strip() or None
            ev = XidEvent(xid=int(m.group("xid")), bus_id=normalise_bus_id(m.group("bdf")),
                          text=m.group("rest").strip()[:300], time=stamp, mig=mig)
            found.pop((ev.xid, ev.bus_id), None)
            found[(ev.xid, ev.bus_id)] = ev
            continue
        g = _GPU_AT_RE.search(line)
        if g:
            last_gpu_at = normalise_bus_id(g.group("bdf"))
        if "NVRM" in line and "fallen off the bus" in line:
            bus = last_gpu_at or "unknown"
            found.pop((79, bus), None)
            found[(79, bus)] = XidEvent(xid=79, bus_id=bus, text="GPU has fallen off the bus.", time=stamp)
    return tuple(found.values())


_NUMBER = {**{f: int for f in _INT_FIELDS}, **{f: float for f in _FLOAT_FIELDS}}


def _value(field: str, raw: str, unknown: list[str]):
    text = raw.strip()
    number = _NUMBER.get(field)
    if number is not None:
        try:
            return number(text)                 # the common case, a plain number: nothing else to look at
        except ValueError:
            pass
    low = text.lower()
    if low == UNKNOWN:
        if field in HEALTH_FIELDS:
            unknown.append(field)
        return None
    if low in ABSENT or low.startswith("[") and low.endswith("]"):
        return None
    try:
        if number is int:
            return int(float(text))
        if number is float:
            return float(text)
    except (ValueError, OverflowError):   # "inf", "1e400"
        return None
    if field in _BOOL_FIELDS:
        return low in ("yes", "active", "1", "true")
    if field == "bus_id":
        return normalise_bus_id(text)
    return text[:200]


def parse_gpu_rows(columns: list[str], lines: list[str]) -> tuple[tuple[GpuReading, ...], tuple[str, ...], set[int]]:
    """CSV rows (noheader, nounits) -> readings; lines that are not rows, returned as errors; and the
    widths of rows that look like GPU rows but not of the width asked for (read by position)."""
    fields = [_COLUMN_TO_FIELD.get(c.strip()) for c in columns]
    width = len(fields)
    gpus, errors, odd = [], [], set()
    for line in lines:
        if not line.strip():
            continue
        row = _csv_row(line)
        row_fields = fields
        if len(row) != width and _looks_like_gpu_row(row):
            row_fields = list(POSITIONAL_FIELDS[: len(row)])
            odd.add(len(row))
        elif len(row) != width or not row[0].strip().isdigit():
            errors.append(line.strip()[:300])
            continue
        values, unknown = {}, []
        for field, raw in zip(row_fields, row):
            if field:
                values[field] = _value(field, raw, unknown)
        gpus.append(GpuReading(**values, unknown_fields=tuple(unknown)))
    return tuple(gpus), tuple(errors), odd


# A tool that answers with fixed rows instead of the columns asked for (a wrapper or an old
# simulator) is read by position in DESIGN section 4's example order, and the probe says so.
POSITIONAL_FIELDS = ("index", "uuid", "name", "bus_id", "memory_total_mib", "memory_used_mib", "temperature_c",
                     "power_w", "utilization_pct", "ecc_uncorrected_volatile")


_CSV_LIMIT = 131072      # csv's field size limit: a longer field makes the row unreadable


def _csv_row(line: str) -> list[str]:
    """One row as nvidia-smi writes CSV (", " between fields). A line without quotes is split on its
    commas, which is what the csv module gives for it, at a fraction of the cost."""
    if '"' not in line and len(line) <= _CSV_LIMIT and "\r" not in line and "\n" not in line:
        return [part.lstrip(" ") for part in line.split(",")] if line else []
    try:
        return next(csv.reader([line], skipinitialspace=True))
    except (csv.Error, StopIteration):   # e.g. a field over csv's size limit
        return []


def _looks_like_gpu_row(row: list[str]) -> bool:
    return len(row) >= 2 and row[0].strip().isdigit() and row[1].strip().startswith("GPU-")


def _kv(text: str) -> dict[str, str]:
    out = {}
    for part in text.split():
        key, _, value = part.partition("=")
        out[key] = value
    return out


def _frame(text: str, nonce: str | None):
    """(section lines as (name, rest), content lines by section, unframed count) in output order.
    With a nonce, a section line starts `@<nonce> ` and a content line `|`; without one (saved
    outputs of probe version 1) any `@` line is a section and any other line content."""
    marker = f"@{nonce} " if nonce else "@"
    for line in text.splitlines():
        if line.startswith(marker):
            name, _, rest = line[len(marker):].partition(" ")
            yield "section", name, rest.strip()
        elif nonce is None:
            yield "content", line, ""
        elif line.startswith("|"):
            yield "content", line[1:], ""
        else:
            yield "unframed", line, ""


def parse_probe(node: str, output: bytes | str, *, started_at: float, duration_s: float,
                since: float = 0, nonce: str | None = None, key: bytes | None = None) -> Observation:
    """Probe output -> Observation. Pure; never raises; missing @end means incomplete output.
    `nonce`: this probe's (ProbeRequest.parse passes it; None only for saved version-1 output);
    `key`: the store's attempt key: attempt dirs without their token are not reported as attempts."""
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
    text = text[:MAX_OUTPUT_BYTES]
    sections: dict[str, tuple[str, list[str]]] = {}
    current: list[str] | None = None
    problems: list[str] = []
    unframed = 0
    repeated: dict[str, list[str]] = {"attempt": [], "fenced": [], "mismatch": [], "foreign": []}
    for kind, line, rest in _frame(text, nonce):
        if kind == "section":
            if line in repeated:
                if len(repeated[line]) < 10000:
                    repeated[line].append(rest)
                continue
            current = []
            sections[line] = (rest, current)
        elif current is None:
            if line.strip():
                problems.append("unexpected output before the probe header")
        elif kind == "unframed":
            unframed += 1
        elif len(current) < 5000:
            current.append(line)
    if unframed:
        problems.append(f"{unframed} output lines without this probe's framing ignored")
    header = sections.get("gridctl-probe")
    if header is None:
        first = text.strip().splitlines()[0][:120] if text.strip() else "(nothing)"
        problems.append(f"not probe output: {first!r}")
    complete = "end" in sections and header is not None

    def scalar(name: str) -> str | None:
        return sections[name][0] if name in sections else None

    node_time = _int(scalar("time"))
    boot = scalar("boot_id")
    smi = sections.get("nvidia-smi")
    rc, columns, gpus, smi_errors = None, [], (), ()
    if smi is not None:
        kv = _kv(smi[0])
        rc = _int(kv.get("rc"))
        columns = kv.get("query", "").split(",") if kv.get("query") else []
        gpus, smi_errors, odd = parse_gpu_rows(columns, smi[1]) if columns else ((), tuple(smi[1][:20]), set())
        if columns and odd:
            problems.append(f"nvidia-smi rows have {', '.join(map(str, sorted(odd)))} columns, "
                            f"{len(columns)} were asked for: read by position")
        if "truncated" in sections:
            problems.append("nvidia-smi printed more than 256 KiB; output truncated")
    xid_source, xids = None, ()
    if "xid" in sections:
        kv = _kv(sections["xid"][0])
        source = kv.get("source", "none")
        xid_source = None if source == "none" else source
        # the node says from when it read (its clock now, less the boot-relative time since the last read)
        node_since = _int(kv.get("since"))
        xids = parse_xids(sections["xid"][1], node_since if node_since is not None else since,
                          until=node_time + 60 if node_since and node_time else None)
    disk_free = disk_total = None
    if "disk" in sections:
        parts = sections["disk"][0].rsplit(" ", 2)
        if len(parts) == 3:
            disk_free, disk_total = _int(parts[1]), _int(parts[2])
    stuck = _int(_kv(scalar("stuck") or "").get("nvidia-smi")) or 0
    apps = tuple((r[0], pid) for r in map(_csv_row, sections["apps"][1] if "apps" in sections else [])
                 if len(r) >= 2 and r[0].startswith("GPU-") and (pid := _int(r[1])) is not None)
    reports, foreign = parse_attempts(repeated["attempt"], repeated["fenced"], repeated["mismatch"], key=key)
    foreign = tuple(sorted(set(foreign) | {f.split()[0] for f in repeated["foreign"]
                                            if f.split() and ATTEMPT_ID_RE.match(f.split()[0])}))[:100]
    return Observation(
        node=node, contact=Contact.OK, started_at=started_at, duration_s=duration_s, node_time=node_time,
        boot_id=boot if boot and boot != "unknown" else None, smi_rc=rc, smi_fields=tuple(columns),
        smi_errors=smi_errors, gpus=gpus, xids=xids, xid_source=xid_source, disk_free_bytes=disk_free,
        disk_total_bytes=disk_total, stuck_smi=stuck, parse_problems=tuple(problems), complete=complete,
        attempts=reports, compute_apps=apps, spot_notice=(scalar("spot") or None) if "spot" in sections else None,
        uptime_s=_float(_kv(scalar("xid") or "").get("uptime")) if complete else None, work_dir_unsafe=(scalar("unsafe") or "unsafe")[:400]
        if "unsafe" in sections else None, foreign_attempts=foreign,
        nvml_error=(scalar("nvml") or "error=999 unknown").removeprefix("error=")[:200] if "nvml" in sections else None,
    )


def parse_attempts(lines: list[str], fenced: list[str], mismatched: list[str] = (), *,
                   key: bytes | None = None) -> tuple[tuple[AttemptReport, ...], tuple[str, ...]]:
    """`@attempt ID pid=P alive=0|1 exit=N hb=T started=T now=T mismatch=0|1 tok=T` lines -> (reports,
    ids of dirs whose token is not the attempt's). With a key, only dirs holding their token are
    reports; bad lines are skipped. `fenced` / `mismatched`: kill-list attempts the probe killed /
    found their pid held by another process (nothing killed); both are reaped."""
    killed = {f.split()[0] for f in fenced if f.split()}
    wrong_pid = {f.split()[0] for f in mismatched if f.split()}
    out, foreign = [], []
    for line in lines:
        ident, _, rest = line.partition(" ")
        if not ATTEMPT_ID_RE.match(ident):
            continue
        kv = _kv(rest)
        if key is not None and not hmac.compare_digest(kv.get("tok", ""), attempt_token(key, ident)):
            foreign.append(ident)
            continue
        now = _int(kv.get("now"))
        out.append(AttemptReport(id=ident, pid=_int(kv.get("pid")), alive=kv.get("alive") == "1",
                                 exit_code=_int(kv.get("exit")), heartbeat_at=_int(kv.get("hb")),
                                 started_at=_int(kv.get("started")), fenced=ident in killed, node_now=now,
                                 pid_mismatch=kv.get("mismatch") == "1"))
    for ident in sorted((killed | wrong_pid) - {r.id for r in out}):
        if ATTEMPT_ID_RE.match(ident):
            out.append(AttemptReport(id=ident, pid=None, alive=False, exit_code=None, heartbeat_at=None,
                                     started_at=None, fenced=ident in killed, reaped=True,
                                     pid_mismatch=ident in wrong_pid))
    return tuple(out), tuple(foreign)


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value < 1e12 else None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
