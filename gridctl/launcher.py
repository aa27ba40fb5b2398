"""Start and stop attempts on a node: the POSIX sh scripts and the parsing of their answers.

Called by reconcile/act.py (which runs them over the node's transport) and `gridctl logs`.
Every value a script uses is quoted with shlex.quote; the scripts travel on stdin to `sh -s`, so
no user-supplied text and no secret is ever part of the remote command line.

An attempt lives in `<work_dir>/attempts/<job>.<n>/` (the dir 0700, its files 0600, whatever
the umask):
  token           written first by the launch: a secret only the controller can derive
                  (attempt_token); no later action touches a dir whose token differs
  boot_id         the node's boot id at launch: a pid from another boot is never signalled
  cmd, env        what to run
  log_max         the attempt's log cap in bytes (the probe keeps the tail of a longer log)
  retention       seconds its dir is kept once reaped
  run.sh          the detached wrapper (setsid): claims the dir, records pid, runs, records exit
  pid_start, pid  the wrapper's start time (clock ticks after boot) and pid, written when it starts
  stdout, stderr  the process's output (growth counts as a heartbeat)
  heartbeat       the job may touch it ($GRIDCTL_HEARTBEAT)
  exit            the exit code, written when the process ends
  stopped         why gridctl stopped it; reaped: gridctl has recorded its end
Launching the same attempt twice starts one process: creating the attempt dir is atomic.
Nothing is read, started or killed under a work dir another user could change (TRUST_FN).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ATTEMPT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\.[0-9]{1,9}\Z")
TOKEN_RE = re.compile(r"^[0-9a-f]{32}\Z")
LOG_MAX_BYTES = 100 * 1024 * 1024        # default per stream and attempt
RETENTION_S = 7 * 86400                  # default: how long a reaped attempt's dir is kept

# expand a leading ~ in $WD the way a login shell would (the value itself arrives quoted)
EXPAND_WD = 'case "$WD" in "~") WD=$HOME ;; "~/"*) WD="$HOME/${WD#\\~/}" ;; esac\n'

# an attempt is alive while any process of its process group (the wrapper's pid, made a session
# leader by setsid) is alive and not a zombie; without a group, the pid alone
ALIVE_FN = ('alive() { ps -eo pgid=,stat= 2>/dev/null | awk -v g="$1" \'$1 == g && $2 !~ /^Z/ { f = 1 } '
            'END { exit !f }\' && return 0; kill -0 "$1" 2>/dev/null || return 1; '
            'case "$(ps -o stat= -p "$1" 2>/dev/null)" in Z*) return 1 ;; esac; return 0; }\n')

# What a script may trust on a node (shared by the launch, stop and probe scripts):
# - owned DIR: a real dir (no link) of ours that no group or other user may write into;
# - safe_above DIR: DIR (a physical path) and every dir above it belong to root or us and are
#   closed to others, or sticky like /tmp, so nobody else can swap what a path below leads to;
# - safe_wd DIR: every component of DIR as written belongs to root or us (a link a stranger made
#   in a sticky dir is refused), its physical path R is owned and safe_above its parent;
#   sets R, or WHY when it is not safe;
# - mine DIR TOKEN: an owned attempt dir holding the controller's token for it;
# - ours DIR ID PID: the process group PID is alive and the one this attempt's launch started:
#   same boot as recorded at launch, and the leader's start time as recorded (or, the leader
#   gone, a member whose environment names the attempt). MISMATCH=1: something else holds PID.
TRUST_FN = r"""ME=$(id -u)
BOOT=$(head -c 64 "${GRIDCTL_BOOT_ID_FILE:-/proc/sys/kernel/random/boot_id}" 2>/dev/null)
owned() {
  [ -d "$1" ] && [ ! -L "$1" ] || return 1
  set -- $(stat -c '%u %a' "$1" 2>/dev/null)
  [ "$1" = "$ME" ] && [ $(( 0${2:-777} & 022 )) -eq 0 ]
}
safe_above() {
  p=$1
  while :; do
    set -- $(stat -c '%u %a' "$p" 2>/dev/null)
    case "$1" in 0|"$ME") ;; *) WHY="$p belongs to uid ${1:-?}"; return 1 ;; esac
    m=$(( 0${2:-777} ))
    [ $(( m & 022 )) -eq 0 ] || [ $(( m & 01000 )) -ne 0 ] || { WHY="$p is writable by others (mode ${2:-?})"; return 1; }
    [ "$p" != / ] || return 0
    p=${p%/*}; [ -n "$p" ] || p=/
  done
}
safe_wd() {
  p=$1
  while [ -n "$p" ] && [ "$p" != / ]; do
    u=$(stat -c %u "$p" 2>/dev/null)
    case "$u" in 0|"$ME") ;; *) WHY="$p belongs to uid ${u:-?}"; return 1 ;; esac
    case "$p" in */*) p=${p%/*} ;; *) p= ;; esac
  done
  R=$(cd "$1" 2>/dev/null && pwd -P) || { WHY="$1 is not a directory"; return 1; }
  owned "$R" || { WHY="$R is not a directory of uid $ME closed to group and others ($(stat -c 'uid %u mode %a' "$R" 2>/dev/null))"; return 1; }
  p=${R%/*}; safe_above "${p:-/}"
}
mine() { owned "$1" && [ "$(head -c 64 "$1/token" 2>/dev/null)" = "$2" ]; }
starttime() { awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null; }
env_has() {
  for m in $(ps -eo pid=,pgid= 2>/dev/null | awk -v g="$1" '$2 == g { print $1 }'); do
    tr '\0' '\n' <"/proc/$m/environ" 2>/dev/null | grep -qx "GRIDCTL_ATTEMPT=$2" && return 0
  done
  return 1
}
ours() {
  MISMATCH=0
  [ "$(head -c 64 "$1/boot_id" 2>/dev/null)" = "$BOOT" ] || return 1
  [ -n "$3" ] && alive "$3" || return 1
  s=$(starttime "$3")
  if [ -n "$s" ]; then [ "$s" = "$(head -c 24 "$1/pid_start" 2>/dev/null)" ] && return 0
  elif env_has "$3" "$2"; then return 0
  fi
  MISMATCH=1; return 1
}
""" + ALIVE_FN

_WRAPPER = r"""D=$1
mkdir "$D/claim" 2>/dev/null || exit 0
starttime() { awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null; }
starttime $$ >"$D/pid_start"
echo $$ >"$D/pid.tmp" && mv "$D/pid.tmp" "$D/pid"
date +%s >"$D/started"
. "$D/env"
# the job itself gets the umask of the session that launched it; its files here stay 0600
( umask "$2"; cd "${GRIDCTL_CWD:-$D}" 2>/dev/null || cd "$D"; exec sh "$D/cmd" ) >>"$D/stdout" 2>>"$D/stderr" </dev/null
echo $? >"$D/exit.tmp" && mv "$D/exit.tmp" "$D/exit"
"""


def attempt_dir(work_dir: str, attempt_id: str) -> str:
    if not ATTEMPT_ID_RE.match(attempt_id):
        raise ValueError(f"invalid attempt id {attempt_id!r}")
    return f"{work_dir.rstrip('/')}/attempts/{attempt_id}"


def attempt_token(key: bytes, attempt_id: str) -> str:
    """The secret written into an attempt's dir at launch; called by reconcile for launches, stops
    and kill lists, and by the probe parser. Derived from the store's key, so it is never stored."""
    return hmac.new(key, b"gridctl-attempt\0" + attempt_id.encode(), hashlib.sha256).hexdigest()[:32]


def _token(token: str) -> str:
    if not TOKEN_RE.match(token):
        raise ValueError("invalid attempt token")
    return token


def _write_file(path_var: str, name: str, content: str) -> str:
    """Write content to "$path_var/name" with printf and a quoted argument: no here-doc escapes to get wrong."""
    return f'printf %s {shlex.quote(content)} >"${path_var}/{name}"\n'


def _append_file(path_var: str, name: str, content: str) -> str:
    return f'printf %s {shlex.quote(content)} >>"${path_var}/{name}"\n'


def _enter_work_dir(answer: str) -> str:
    """sh: $WD becomes the physical work dir, or the script answers `@<answer> unsafe WHY` and ends."""
    return (f'safe_wd "$WD" || {{ printf "@{answer} unsafe %s\\n" "$(printf %s "$WHY" | tr "\\r\\n" "  ")"; exit 0; }}\n'
            'WD=$R\n')


@dataclass(frozen=True)
class LaunchSpec:
    attempt_id: str
    command: str                      # one sh command string
    env: dict[str, str]               # user env plus gridctl's own variables (built by build_env)
    cwd: str | None = None
    log_max_bytes: int = LOG_MAX_BYTES    # per stream; the probe keeps the newest half of a longer log
    retention_s: int = RETENTION_S        # how long the dir stays once gridctl has reaped the attempt


def build_env(user_env: dict[str, str], *, job: str, attempt_id: str, replica: int, gpu_uuids: tuple[str, ...],
              restart_count: int, checkpoint_dir: str | None, port: int | None = None,
              host: str | None = None) -> dict[str, str]:
    env = dict(user_env)
    env.update({"CUDA_VISIBLE_DEVICES": ",".join(gpu_uuids), "GRIDCTL_JOB": job, "GRIDCTL_ATTEMPT": attempt_id,
                "GRIDCTL_REPLICA": str(replica), "GRIDCTL_RESTART_COUNT": str(restart_count)})
    if checkpoint_dir:
        env["GRIDCTL_CHECKPOINT_DIR"] = checkpoint_dir
    if port is not None:
        env["GRIDCTL_PORT"] = str(port)
        env["GRIDCTL_HOST"] = host or "0.0.0.0"
    return env


def launch_script(work_dir: str, spec: LaunchSpec, token: str, wait_s: float = 3.0) -> str:
    """Idempotent start: an attempt whose dir holds this token already is reported, not started
    again; a dir that exists without it was not made by this gridctl and is never adopted."""
    attempt_dir(work_dir, spec.attempt_id)   # validates the id
    _token(token)
    env_lines = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(spec.env.items()))
    env_lines += 'export GRIDCTL_HEARTBEAT="$D/heartbeat"\n'
    if spec.cwd:
        env_lines += f"GRIDCTL_CWD={shlex.quote(spec.cwd)}\n"
    ticks = max(1, int(wait_s * 10))
    wait_pid = f'i=0; while [ ! -f "$D/pid" ] && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i + 1)); done\n'
    return (
        "UM=$(umask); umask 077\n"
        f"WD={shlex.quote(work_dir)}\n" + EXPAND_WD + TRUST_FN +
        # a work dir still to be made is made only below dirs no stranger can change
        'if [ ! -d "$WD" ]; then\n'
        '  p=$WD; while [ ! -e "$p" ]; do case "$p" in */*) p=${p%/*}; [ -n "$p" ] || p=/ ;; *) p=. ;; esac; done\n'
        '  safe_above "$(cd "$p" 2>/dev/null && pwd -P)" || { echo "@launch unsafe $WHY"; exit 0; }\n'
        '  mkdir -p "$WD" 2>/dev/null\n'
        'fi\n'
        + _enter_work_dir("launch") +
        'mkdir "$WD/attempts" 2>/dev/null\n'

        'owned "$WD/attempts" || { echo "@launch unsafe $WD/attempts is not a directory of uid $ME closed to others"; exit 0; }\n'
        f"D=\"$WD/attempts/\"{shlex.quote(spec.attempt_id)}\n"
        # creating the attempt dir is the claim: atomic, so two launches of one attempt write nothing twice
        'if ! mkdir "$D" 2>/dev/null; then\n'
        f'  {wait_pid}'
        f'  mine "$D" {token} || {{ echo "@launch error $D exists and was not created by this gridctl"; exit 0; }}\n'
        '  echo "@launch exists pid=$(head -c 20 "$D/pid" 2>/dev/null || echo -)"; exit 0\n'
        'fi\n'
        + _write_file("D", "token", token)
        + 'printf "%s\\n" "$BOOT" >"$D/boot_id"\n'
        + _write_file("D", "cmd", spec.command + "\n")
        + _write_file("D", "env", env_lines)
        + _write_file("D", "log_max", f"{int(spec.log_max_bytes)}\n")
        + _write_file("D", "retention", f"{int(spec.retention_s)}\n")
        + _write_file("D", "run.sh", _WRAPPER)
        + ': >"$D/heartbeat"; : >"$D/stdout"; : >"$D/stderr"\n'
        'command -v setsid >/dev/null 2>&1 && S=setsid || S=\n'
        # the wrapper's own environment names the attempt: what a later stop checks before a kill
        f'GRIDCTL_ATTEMPT={shlex.quote(spec.attempt_id)} $S sh "$D/run.sh" "$D" "$UM" </dev/null >/dev/null 2>&1 &\n'
        + wait_pid +
        'if [ -f "$D/pid" ]; then echo "@launch started pid=$(cat "$D/pid")"; '
        'else echo "@launch error the process did not start within the wait"; fi\n'
    )


def stop_script(work_dir: str, attempt_id: str, reason: str, token: str, grace_s: float = 5.0) -> str:
    """SIGTERM the attempt's process group, SIGKILL after grace_s; idempotent. Signals only a
    process proven to be the attempt's (`pid-mismatch` otherwise), in a dir holding its token."""
    attempt_dir(work_dir, attempt_id)   # validates the id
    _token(token)
    ticks = max(1, int(grace_s * 10))
    return (
        "umask 077\n"
        f"WD={shlex.quote(work_dir)}\n" + EXPAND_WD + TRUST_FN +
        '[ -d "$WD" ] || { echo "@stop absent"; exit 0; }\n'
        + _enter_work_dir("stop") +
        'owned "$WD/attempts" || { [ -e "$WD/attempts" ] && echo "@stop unsafe $WD/attempts is open to others" '
        '|| echo "@stop absent"; exit 0; }\n'
        f"D=\"$WD/attempts/\"{shlex.quote(attempt_id)}; ID={shlex.quote(attempt_id)}\n"
        '[ -d "$D" ] || { echo "@stop absent"; exit 0; }\n'
        f'mine "$D" {token} || {{ echo "@stop not-ours"; exit 0; }}\n'
        + _write_file("D", "stopped", reason + "\n") +
        'P=$(head -c 20 "$D/pid" 2>/dev/null)\n'
        'if ! ours "$D" "$ID" "$P"; then [ "$MISMATCH" = 1 ] && echo "@stop pid-mismatch pid=$P" || echo "@stop gone"; exit 0; fi\n'
        'kill -s TERM -- "-$P" 2>/dev/null || kill -TERM "$P" 2>/dev/null\n'
        f'i=0; while alive "$P" && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i + 1)); done\n'
        # proven again: the group may have ended during the grace and its pid been reused
        'if ours "$D" "$ID" "$P"; then kill -s KILL -- "-$P" 2>/dev/null || kill -KILL "$P" 2>/dev/null; '
        'echo "@stop killed"; else echo "@stop terminated"; fi\n'
    )


STREAM_MARKERS = {"stdout": "[stdout] ", "stderr": "[stderr] "}   # `gridctl logs` with both streams


def log_command(work_dir: str, attempt_id: str, stream: str, follow: bool, tail: int | None = None) -> str:
    """A remote command printing an attempt's log; with follow, until its process ends. Exits 1
    printing nothing when the log is absent, or is not a plain file in a dir no stranger can change.

    stream: stdout | stderr (the bytes as written) | both: every line of each stream starts with its
    marker (STREAM_MARKERS), added on the node line by line, so a line of one stream can never pass
    for the other's; without follow stdout comes first. tail: only the last N lines of each stream."""
    attempt_dir(work_dir, attempt_id)   # validates the id
    streams = ("stdout", "stderr") if stream == "both" else (stream,)
    if any(s not in STREAM_MARKERS for s in streams):
        raise ValueError(f"unknown stream {stream!r}")
    start = "-c +1" if tail is None else f"-n {int(tail)}"
    head = (f"WD={shlex.quote(work_dir)}\n" + EXPAND_WD + TRUST_FN +
            'safe_wd "$WD" || { echo "gridctl: work dir unsafe: $WHY" >&2; exit 1; }\n'
            f'D="$R/attempts/"{shlex.quote(attempt_id)}\n'
            'plain() { [ -f "$D/$1" ] && [ ! -L "$D/$1" ]; }\n'
            f'owned "$D" || exit 1; found=0; for S in {" ".join(streams)}; do plain "$S" && found=1; done\n'
            '[ "$found" = 1 ] || exit 1\n'
            'P=$(head -c 20 "$D/pid" 2>/dev/null); case "$P" in *[!0-9]*) P= ;; esac\n'
            f'if [ -n "$P" ] && [ ! -f "$D/exit" ] && [ {int(follow)} = 1 ]; then F="tail {start} --pid=$P -f"; '
            f'else F="tail {start}"; fi\n')
    if len(streams) == 1:
        return head + f'exec $F "$D/{streams[0]}"'
    out, err = shlex.quote(STREAM_MARKERS["stdout"]), shlex.quote(STREAM_MARKERS["stderr"])
    # mawk reads a pipe in blocks unless told it is interactive: a followed line would wait for 4 KiB more
    return head + ('A=awk; case "$(awk -W version 2>&1)" in mawk*) A="awk -W interactive" ;; esac\n'
                   'marked() { plain "$2" || return 0; $F "$D/$2" | $A -v m="$1" \'{ print m $0; fflush() }\'; }\n'
                   f'case "$F" in *--pid*) marked {out} stdout & marked {err} stderr & wait ;; '
                   f'*) marked {out} stdout; marked {err} stderr ;; esac')


@dataclass(frozen=True)
class LaunchResult:
    ok: bool
    pid: int | None
    detail: str
    uncertain: bool = False      # no answer (transport error): the process may have started


def parse_launch(output: str) -> LaunchResult:
    for line in output.splitlines():
        if line.startswith("@launch "):
            rest = line[len("@launch "):]
            if rest.startswith(("started", "exists")):
                m = re.search(r"pid=(\d+)", rest)
                return LaunchResult(True, int(m.group(1)) if m else None, rest.split()[0])
            if rest.startswith("unsafe "):
                return LaunchResult(False, None, "work dir unsafe: " + rest[len("unsafe "):].strip()[:300])
            return LaunchResult(False, None, rest.removeprefix("error ").strip()[:300])
    return LaunchResult(False, None, "no answer from the launch script")


def parse_stop(output: str) -> str:
    """The stop script's answer: killed | terminated | gone | absent (done), `pid-mismatch pid=P`
    (the pid belongs to another process now: the attempt's own is gone; nothing was signalled),
    `not-ours` (the dir lacks the attempt's token) or `unsafe WHY` (the work dir is not trusted)."""
    for line in output.splitlines():
        if line.startswith("@stop "):
            return line[len("@stop "):].strip()[:300]
    return "no answer from the stop script"


def local_attempt_pid(attempt_dir: Path) -> int | None:
    """For an attempt dir on this machine (simulated nodes, tests, benchmarks): the wrapper's pid, which
    is also its process group, while that process runs: its start time in /proc is the one the wrapper
    wrote to pid_start. None otherwise, so a pid the kernel has since handed to another process is
    never signalled."""
    try:
        pid = int((attempt_dir / "pid").read_text().strip())
        started = (attempt_dir / "pid_start").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    return pid if len(stat) > 19 and stat[19] == started else None
