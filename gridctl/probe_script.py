"""The probe's node side: the POSIX sh script sent on stdin to every node, with the nvidia-smi
fields it asks for. Called by probe.probe_request, which frames it with a per-probe nonce and
parses what it prints (probe.parse_probe). Everything slow is bounded by `timeout -k`, every
output capped as it is read; see the module docstring of probe.py for what it may change.
"""

from __future__ import annotations

import functools
import shlex

from .launcher import LOG_MAX_BYTES, RETENTION_S, TRUST_FN

PROBE_VERSION = 2
SMI_OUTPUT_CAP = 262144                 # node-side cap on nvidia-smi output
KERNEL_LOG_CAP = 8 * 1024 * 1024        # node-side cap on the kernel log read (its newest part is kept)

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


@functools.lru_cache(maxsize=8)        # asked for every node on every pass
def query(fields: tuple) -> str:
    return ",".join(col for col, _ in fields)


_SCRIPT = r"""
T=$1; TLOG=$2; WD=$3; MD=$4
umask 077
case "$WD" in "~") WD=$HOME ;; "~/"*) WD="$HOME/${WD#\~/}" ;; esac
# every line we print starts with this probe's nonce; every line of tool output starts with "|"
say() { printf '@%s %s\n' "$N" "$*"; }
show() { awk 'NR <= 1024 { print "|" $0 }'; }
say gridctl-probe __VERSION__
say time "$(date +%s)"
__TRUST__
say boot_id "${BOOT:-unknown}"
# nvidia-smi in uninterruptible sleep for over a minute: the driver is wedged (a brief D is normal I/O)
STUCK=$(ps -eo stat=,etimes=,comm= 2>/dev/null | awk '$1 ~ /^D/ && $2 > 60 && $2 < 31536000 && $3 == "nvidia-smi"' | wc -l)
say stuck nvidia-smi=$STUCK
TMP=$(mktemp 2>/dev/null) || TMP=/tmp/gridctl-probe.$$
trap 'rm -f "$TMP" "$TMP.rc" "$TMP.d"' EXIT
# output is capped as it is read, never written in full first: an endless tool stops at the cap
smi() { { timeout -k 2 "$T" nvidia-smi --query-gpu="$1" --format=csv,noheader,nounits 2>&1; echo $? >"$TMP.rc"; } | head -c __CAP1__ >"$TMP"; RC=$(head -c 8 "$TMP.rc" 2>/dev/null); RC=${RC:-255}; }
Q=__FULL__; smi "$Q"
if [ "$RC" -eq 2 ]; then Q=__CORE__; smi "$Q"; fi
say nvidia-smi rc=$RC query=$Q
head -c __CAP__ "$TMP" | show
[ "$(wc -c <"$TMP")" -gt __CAP__ ] && say truncated nvidia-smi
# compute processes on the GPUs: one gridctl did not start makes its GPU busy, not free
if [ "$RC" -eq 0 ]; then
  { timeout -k 2 "$T" nvidia-smi --query-compute-apps=gpu_uuid,pid --format=csv,noheader 2>/dev/null; } | head -c 65536 >"$TMP"
  say apps
  head -n 256 "$TMP" | show
fi
# the kernel log since the last read: its position is seconds since boot (PB, PU), which no clock
# change moves; turned into this node's wall time now, so a clock once ahead hides nothing
UP=$(cut -d' ' -f1 /proc/uptime 2>/dev/null)
SINCE=0
if [ -n "$PB" ] && [ "$PB" = "$BOOT" ] && [ -n "$UP" ]; then
  SINCE=$(awk -v n="$(date +%s)" -v u="$UP" -v p="$PU" 'BEGIN { s = n - (u - p) - 5; printf "%d", (s > 0 ? s : 0) }')
fi
if [ "$SINCE" -gt 0 ] 2>/dev/null; then JSINCE="--since=@$SINCE"; else JSINCE=; fi
klog() { { timeout -k 2 "$TLOG" "$@" 2>/dev/null; echo $? >"$TMP.rc"; } | tail -c __LOGCAP__; [ "$(head -c 8 "$TMP.rc" 2>/dev/null)" = 0 ]; }
SRC=none
# journalctl first; when it has no entries at all (no journal in containers), try dmesg
if command -v journalctl >/dev/null 2>&1 && klog journalctl -k --no-pager -o short-iso $JSINCE >"$TMP"; then
  SRC=journalctl
  grep -qv '^-- No entries --$' "$TMP" || SRC=journalctl-empty
fi
if [ "$SRC" != journalctl ]; then
  if klog dmesg --time-format iso >"$TMP.d" || klog dmesg >"$TMP.d"; then
    SRC=dmesg; mv "$TMP.d" "$TMP"
  elif [ "$SRC" = journalctl-empty ]; then SRC=journalctl
  fi
  rm -f "$TMP.d"
fi
say xid source=$SRC since=$SINCE uptime=${UP:--}
# a log cut at the cap starts mid-line: drop that line
[ "$SRC" != none ] && { [ "$(wc -c <"$TMP")" -lt __LOGCAP__ ] && cat "$TMP" || tail -n +2 "$TMP"; } | grep -a 'NVRM' | tail -n 400 | show
D=$WD
while [ -n "$D" ] && [ "$D" != / ] && [ ! -d "$D" ]; do D=$(dirname "$D"); done
timeout -k 2 "$TLOG" df -Pk "${D:-/}" 2>/dev/null | awk -v d="${D:-/}" 'NR == 2 { printf "%s %.0f %.0f\n", d, $4 * 1024, $2 * 1024 }' | tr -d '\r' | head -c 4096 | { read -r L && say disk "$L"; }
# spot instances: an interruption notice from the instance metadata service (IMDSv2), 1 s bounds
# (GCE: "gce:" before the endpoint; its metadata says instance/preempted TRUE about 30 s ahead)
if [ -n "$MD" ] && command -v curl >/dev/null 2>&1; then
  case "$MD" in
    gce:*) R=$(curl -s -m 1 -H "Metadata-Flavor: Google" "${MD#gce:}/computeMetadata/v1/instance/preempted" 2>/dev/null | head -c 64)
           [ "$R" = TRUE ] && say spot gce instance/preempted TRUE ;;
    *) TOK=$(curl -s -m 1 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" "$MD/latest/api/token" 2>/dev/null | head -c 256)
       R=$(curl -s -m 1 -H "X-aws-ec2-metadata-token: $TOK" -w ' %{http_code}' "$MD/latest/meta-data/spot/instance-action" 2>/dev/null | head -c 4096)
       case "$R" in *" 200") say spot "$(printf %s "${R% 200}" | tr -d '\r\n' | head -c 400)" ;; esac ;;
  esac
fi
# attempts of jobs, only under a work dir no other user can change, only in dirs holding their
# token: fence (kill) the ones gridctl has ended, then report every unreaped one, trim logs over
# their cap to the newest half, and remove reaped dirs older than their retention
trim() {
  M=$(head -c 20 "$1/log_max" 2>/dev/null); case $M in ''|*[!0-9]*) M=__LOGMAX__ ;; esac
  for f in "$1/stdout" "$1/stderr"; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    [ "$(wc -c <"$f")" -gt "$M" ] || continue
    tail -c $((M / 2)) "$f" >"$f.tail" && cat "$f.tail" >"$f"; rm -f "$f.tail"
  done
}
if [ -d "$WD" ]; then
  if ! safe_wd "$WD"; then say unsafe "$(printf %s "$WHY" | tr '\r\n' '  ' | head -c 400)"
  elif [ -e "$R/attempts" ] && ! owned "$R/attempts"; then say unsafe "$R/attempts is not a directory of uid $ME closed to group and others"
  elif [ -d "$R/attempts" ]; then
    WD=$R
    printf '%s\n' "$KILL" | while read -r id tok; do
      A="$WD/attempts/$id"; [ -n "$id" ] && [ -d "$A" ] || continue
      mine "$A" "$tok" || { say foreign "$id"; continue; }
      P=$(head -c 20 "$A/pid" 2>/dev/null)
      if ours "$A" "$id" "$P"; then
        kill -s KILL -- "-$P" 2>/dev/null || kill -KILL "$P" 2>/dev/null; say fenced "$id" "pid=$P"
      elif [ "$MISMATCH" = 1 ]; then say mismatch "$id" "pid=$P"
      fi
      : >"$A/reaped"
    done
    NOW=$(date +%s)
    for A in "$WD"/attempts/*; do
      owned "$A" || continue
      id=${A##*/}
      if [ -e "$A/reaped" ]; then
        K=$(head -c 20 "$A/retention" 2>/dev/null); case $K in ''|*[!0-9]*) K=__RETENTION__ ;; esac
        RT=$(stat -c %Y "$A/reaped" 2>/dev/null)
        [ -n "$RT" ] && [ $((NOW - RT)) -gt "$K" ] && rm -rf "$A"
        continue
      fi
      P=$(head -c 20 "$A/pid" 2>/dev/null); L=0
      ours "$A" "$id" "$P" && L=1
      trim "$A"
      HB=$(stat -c %Y "$A/heartbeat" "$A/stdout" "$A/stderr" 2>/dev/null | sort -n | tail -n 1)
      say attempt "$id" "pid=${P:--}" "alive=$L" "exit=$(head -c 12 "$A/exit" 2>/dev/null || echo -)" "hb=${HB:--}" \
        "started=$(head -c 12 "$A/started" 2>/dev/null || echo -)" "now=$NOW" "mismatch=$MISMATCH" \
        "tok=$(head -c 64 "$A/token" 2>/dev/null)"
    done
  fi
fi
say end
"""

SCRIPT = (_SCRIPT.replace("__VERSION__", str(PROBE_VERSION)).replace("__TRUST__\n", TRUST_FN)
          .replace("__FULL__", shlex.quote(query(FULL_FIELDS))).replace("__CORE__", shlex.quote(query(CORE_FIELDS)))
          .replace("__CAP1__", str(SMI_OUTPUT_CAP + 1)).replace("__CAP__", str(SMI_OUTPUT_CAP))
          .replace("__LOGCAP__", str(KERNEL_LOG_CAP)).replace("__LOGMAX__", str(LOG_MAX_BYTES))
          .replace("__RETENTION__", str(RETENTION_S)))
