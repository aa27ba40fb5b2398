"""The probe: a POSIX sh script sent to a node on stdin, and its pure parser -> Observation.

Called by reconcile/observe.py (via a transport) and by tests with saved outputs. The script is
read-only and installs nothing; every slow command on the node is bounded by `timeout -k`.
The parser never raises: garbage in gives an Observation with parse problems.
"""

from __future__ import annotations

import csv
import re
import shlex
from dataclasses import dataclass
from datetime import datetime

from .launcher import ALIVE_FN, ATTEMPT_ID_RE
from .models import AttemptReport, Contact, GpuReading, Observation, XidEvent

PROBE_VERSION = 1
MAX_OUTPUT_BYTES = 4 * 1024 * 1024      # client-side cap on what one probe may return
SMI_OUTPUT_CAP = 262144                 # node-side cap on nvidia-smi output

# column name -> GpuReading field; order is the order asked of nvidia-smi
CORE_FIELDS = (
    ("index", "index"), ("uuid", "uuid"), ("name", "name"), ("pci.bus_id", "bus_id"),
    ("temperature.gpu", "temperature_c"), ("power.draw", "power_w"),
    ("memory.total", "memory_total_mib"), ("memory.used", "memory_used_mib"),
    ("utilization.gpu", "utilization_pct"),
    ("ecc.errors.uncorrected.volatile.total", "ecc_uncorrected_volatile"),
    ("ecc.errors.corrected.volatile.total", "ecc_corrected_volatile"),
    ("retired_pages.pending", "retired_pages_pending"),
    ("remapped_rows.pending", "remapped_rows_pending"), ("remapped_rows.failure", "remapped_rows_failure"),
    ("clocks_throttle_reasons.hw_slowdown", "hw_slowdown"),
    ("clocks_throttle_reasons.hw_thermal_slowdown", "thermal_slowdown"),
    ("clocks_throttle_reasons.hw_power_brake_slowdown", "power_brake_slowdown"),
)
FULL_FIELDS = CORE_FIELDS + (("gpu_recovery_action", "recovery_action"),)
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


def query(fields: tuple) -> str:
    return ",".join(col for col, _ in fields)


_SCRIPT = r"""
T=$1; TLOG=$2; SINCE=$3; WD=$4; KILL=$5; MD=$6
case "$WD" in "~") WD=$HOME ;; "~/"*) WD="$HOME/${WD#\~/}" ;; esac
echo "@gridctl-probe __VERSION__"
echo "@time $(date +%s)"
BOOT=$(cat "${GRIDCTL_BOOT_ID_FILE:-/proc/sys/kernel/random/boot_id}" 2>/dev/null)
echo "@boot_id ${BOOT:-unknown}"
# nvidia-smi in uninterruptible sleep for over a minute: the driver is wedged (a brief D is normal I/O)
STUCK=$(ps -eo stat=,etimes=,comm= 2>/dev/null | awk '$1 ~ /^D/ && $2 > 60 && $2 < 31536000 && $3 == "nvidia-smi"' | wc -l)
echo "@stuck nvidia-smi=$STUCK"
TMP=$(mktemp 2>/dev/null) || TMP=/tmp/gridctl-probe.$$
trap 'rm -f "$TMP"' EXIT
smi() { timeout -k 2 "$T" nvidia-smi --query-gpu="$1" --format=csv,noheader,nounits >"$TMP" 2>&1; }
Q=__FULL__; smi "$Q"; RC=$?
if [ "$RC" -eq 2 ]; then Q=__CORE__; smi "$Q"; RC=$?; fi
echo "@nvidia-smi rc=$RC query=$Q"
head -c __CAP__ "$TMP" | awk 'NR <= 1024 { print }'
[ "$(wc -c <"$TMP")" -gt __CAP__ ] && echo "@truncated nvidia-smi"
SRC=none
if [ "$SINCE" -gt 0 ] 2>/dev/null; then JSINCE="--since=@$SINCE"; else JSINCE=; fi
# journalctl first; when it has no entries at all (no journal in containers), try dmesg
if command -v journalctl >/dev/null 2>&1 && timeout -k 2 "$TLOG" journalctl -k --no-pager -o short-iso $JSINCE >"$TMP" 2>/dev/null; then
  SRC=journalctl
  grep -qv '^-- No entries --$' "$TMP" || SRC=journalctl-empty
fi
if [ "$SRC" != journalctl ]; then
  if timeout -k 2 "$TLOG" dmesg --time-format iso >"$TMP.d" 2>/dev/null || timeout -k 2 "$TLOG" dmesg >"$TMP.d" 2>/dev/null; then
    SRC=dmesg; mv "$TMP.d" "$TMP"
  elif [ "$SRC" = journalctl-empty ]; then SRC=journalctl
  fi
  rm -f "$TMP.d"
fi
echo "@xid source=$SRC"
[ "$SRC" != none ] && grep -a 'NVRM' "$TMP" | tail -n 400
D=$WD
while [ -n "$D" ] && [ "$D" != / ] && [ ! -d "$D" ]; do D=$(dirname "$D"); done
timeout -k 2 "$TLOG" df -Pk "${D:-/}" 2>/dev/null | awk -v d="${D:-/}" 'NR == 2 { printf "@disk %s %.0f %.0f\n", d, $4 * 1024, $2 * 1024 }'
# spot instances: an interruption notice from the instance metadata service (IMDSv2), 1 s bounds
# (GCE: "gce:" before the endpoint; its metadata says instance/preempted TRUE about 30 s ahead)
if [ -n "$MD" ] && command -v curl >/dev/null 2>&1; then
  case "$MD" in
    gce:*) R=$(curl -s -m 1 -H "Metadata-Flavor: Google" "${MD#gce:}/computeMetadata/v1/instance/preempted" 2>/dev/null)
           [ "$R" = TRUE ] && echo "@spot gce instance/preempted TRUE" ;;
    *) TOK=$(curl -s -m 1 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" "$MD/latest/api/token" 2>/dev/null)
       R=$(curl -s -m 1 -H "X-aws-ec2-metadata-token: $TOK" -w ' %{http_code}' "$MD/latest/meta-data/spot/instance-action" 2>/dev/null)
       case "$R" in *" 200") echo "@spot $(printf %s "${R% 200}" | tr -d '\n' | head -c 400)" ;; esac ;;
  esac
fi
# attempts of jobs: fence (kill) the ones gridctl has ended, then report every unreaped one
if [ -d "$WD/attempts" ]; then
  __ALIVE__
  for id in $(echo "$KILL" | tr ',' ' '); do
    A="$WD/attempts/$id"; [ -d "$A" ] || continue
    P=$(cat "$A/pid" 2>/dev/null)
    if [ -n "$P" ] && alive "$P"; then kill -s KILL -- "-$P" 2>/dev/null || kill -KILL "$P" 2>/dev/null; echo "@fenced $id pid=$P"; fi
    : >"$A/reaped"
  done
  NOW=$(date +%s)
  for A in "$WD"/attempts/*; do
    [ -d "$A" ] && [ ! -e "$A/reaped" ] || continue
    P=$(cat "$A/pid" 2>/dev/null); L=0
    [ -n "$P" ] && alive "$P" && L=1
    HB=$(stat -c %Y "$A/heartbeat" "$A/stdout" "$A/stderr" 2>/dev/null | sort -n | tail -n 1)
    echo "@attempt ${A##*/} pid=${P:--} alive=$L exit=$(cat "$A/exit" 2>/dev/null || echo -) hb=${HB:--} started=$(cat "$A/started" 2>/dev/null || echo -) now=$NOW"
  done
fi
echo "@end"
"""

PROBE_SCRIPT = (_SCRIPT.replace("__VERSION__", str(PROBE_VERSION)).replace("  __ALIVE__\n", "  " + ALIVE_FN).replace("__FULL__", shlex.quote(query(FULL_FIELDS)))
                .replace("__CORE__", shlex.quote(query(CORE_FIELDS))).replace("__CAP__", str(SMI_OUTPUT_CAP)))


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


def probe_command(budget: ProbeBudget, since: int, work_dir: str, kill: tuple[str, ...] = (),
                  metadata: str | None = None) -> str:
    """The remote command line; the script itself goes on stdin. Every argument is quoted.
    `kill`: attempt ids gridctl has ended on this node: killed if still alive, then marked reaped."""
    bad = [a for a in kill if not ATTEMPT_ID_RE.match(a)]
    if bad:
        raise ValueError(f"invalid attempt ids {bad}")
    args = [str(budget.smi_s), str(budget.log_s), str(int(since)), work_dir, ",".join(kill), metadata or ""]
    return "sh -s -- " + " ".join(shlex.quote(a) for a in args)


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


def parse_xids(lines: list[str], since: float = 0) -> tuple[XidEvent, ...]:
    """Kernel log lines -> Xid events, newest per (xid, GPU) last. Lines older than `since` are skipped."""
    found: dict[tuple[int, str], XidEvent] = {}
    last_gpu_at = ""
    for line in lines:
        when = _line_time(line)
        if since and when is not None and when < since:
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


def _value(field: str, raw: str, unknown: list[str]):
    text = raw.strip()
    low = text.lower()
    if low == UNKNOWN:
        if field in HEALTH_FIELDS:
            unknown.append(field)
        return None
    if low in ABSENT or low.startswith("[") and low.endswith("]"):
        return None
    try:
        if field in _INT_FIELDS:
            return int(float(text))
        if field in _FLOAT_FIELDS:
            return float(text)
    except (ValueError, OverflowError):   # "inf", "1e400"
        return None
    if field in _BOOL_FIELDS:
        return low in ("yes", "active", "1", "true")
    if field == "bus_id":
        return normalise_bus_id(text)
    return text[:200]


def parse_gpu_rows(columns: list[str], lines: list[str]) -> tuple[tuple[GpuReading, ...], tuple[str, ...]]:
    """CSV rows (noheader, nounits) -> readings; lines that are not rows are returned as errors."""
    fields = [_COLUMN_TO_FIELD.get(c.strip()) for c in columns]
    gpus, errors = [], []
    for line in lines:
        if not line.strip():
            continue
        row = _csv_row(line)
        row_fields = fields
        if len(row) != len(fields) and _looks_like_gpu_row(row):
            row_fields = list(POSITIONAL_FIELDS[: len(row)])
        elif len(row) != len(fields) or not row[0].strip().isdigit():
            errors.append(line.strip()[:300])
            continue
        values, unknown = {}, []
        for field, raw in zip(row_fields, row):
            if field:
                values[field] = _value(field, raw, unknown)
        gpus.append(GpuReading(**values, unknown_fields=tuple(unknown)))
    return tuple(gpus), tuple(errors)


# A tool that answers with fixed rows instead of the columns asked for (a wrapper or an old
# simulator) is read by position in DESIGN section 4's example order, and the probe says so.
POSITIONAL_FIELDS = ("index", "uuid", "name", "bus_id", "memory_total_mib", "memory_used_mib", "temperature_c",
                     "power_w", "utilization_pct", "ecc_uncorrected_volatile")


def _csv_row(line: str) -> list[str]:
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


def parse_probe(node: str, output: bytes | str, *, started_at: float, duration_s: float,
                since: float = 0) -> Observation:
    """Probe output -> Observation. Pure; never raises; missing @end means incomplete output."""
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
    text = text[:MAX_OUTPUT_BYTES]
    sections: dict[str, tuple[str, list[str]]] = {}
    current: list[str] | None = None
    problems: list[str] = []
    repeated: dict[str, list[str]] = {"attempt": [], "fenced": []}
    for line in text.splitlines():
        if line.startswith("@"):
            name, _, rest = line[1:].partition(" ")
            if name in repeated:
                if len(repeated[name]) < 10000:
                    repeated[name].append(rest.strip())
                continue
            current = []
            sections[name] = (rest.strip(), current)
        elif current is not None:
            if len(current) < 5000:
                current.append(line)
        elif line.strip():
            problems.append("unexpected output before the probe header")
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
        gpus, smi_errors = parse_gpu_rows(columns, smi[1]) if columns else ((), tuple(smi[1][:20]))
        odd = {len(r) for r in map(_csv_row, smi[1]) if _looks_like_gpu_row(r)} - {len(columns)}
        if columns and odd:
            problems.append(f"nvidia-smi rows have {', '.join(map(str, sorted(odd)))} columns, "
                            f"{len(columns)} were asked for: read by position")
        if "truncated" in sections:
            problems.append("nvidia-smi printed more than 256 KiB; output truncated")
    xid_source, xids = None, ()
    if "xid" in sections:
        source = _kv(sections["xid"][0]).get("source", "none")
        xid_source = None if source == "none" else source
        xids = parse_xids(sections["xid"][1], since)
    disk_free = disk_total = None
    if "disk" in sections:
        parts = sections["disk"][0].rsplit(" ", 2)
        if len(parts) == 3:
            disk_free, disk_total = _int(parts[1]), _int(parts[2])
    stuck = _int(_kv(scalar("stuck") or "").get("nvidia-smi")) or 0
    return Observation(
        node=node, contact=Contact.OK, started_at=started_at, duration_s=duration_s, node_time=node_time,
        boot_id=boot if boot and boot != "unknown" else None, smi_rc=rc, smi_fields=tuple(columns),
        smi_errors=smi_errors, gpus=gpus, xids=xids, xid_source=xid_source, disk_free_bytes=disk_free,
        disk_total_bytes=disk_total, stuck_smi=stuck, parse_problems=tuple(problems), complete=complete,
        attempts=parse_attempts(repeated["attempt"], repeated["fenced"]),
        spot_notice=(scalar("spot") or None) if "spot" in sections else None,
    )


def parse_attempts(lines: list[str], fenced: list[str]) -> tuple[AttemptReport, ...]:
    """`@attempt ID pid=P alive=0|1 exit=N hb=T started=T now=T` lines -> reports (bad lines skipped)."""
    killed = {f.split()[0] for f in fenced if f.split()}
    out = []
    for line in lines:
        ident, _, rest = line.partition(" ")
        if not ATTEMPT_ID_RE.match(ident):
            continue
        kv = _kv(rest)
        now = _int(kv.get("now"))
        out.append(AttemptReport(id=ident, pid=_int(kv.get("pid")), alive=kv.get("alive") == "1",
                                 exit_code=_int(kv.get("exit")), heartbeat_at=_int(kv.get("hb")),
                                 started_at=_int(kv.get("started")), fenced=ident in killed, node_now=now))
    for ident in sorted(killed - {r.id for r in out}):
        if ATTEMPT_ID_RE.match(ident):
            out.append(AttemptReport(id=ident, pid=None, alive=False, exit_code=None, heartbeat_at=None,
                                     started_at=None, fenced=True, reaped=True))
    return tuple(out)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
