"""Start and stop attempts on a node: the POSIX sh scripts and the parsing of their answers.

Called by reconcile/act.py (which runs them over the node's transport) and `gridctl logs`.
Every value a script uses is quoted with shlex.quote; the scripts travel on stdin to `sh -s`, so
no user-supplied text is ever part of the remote command line.

An attempt lives in `<work_dir>/attempts/<job>.<n>/`:
  cmd, env        what to run (written by the launch)
  run.sh          the detached wrapper (setsid): claims the dir, records pid, runs, records exit
  pid, started    written by the wrapper when it starts
  stdout, stderr  the process's output (growth counts as a heartbeat)
  heartbeat       the job may touch it ($GRIDCTL_HEARTBEAT)
  exit            the exit code, written when the process ends
  stopped         why gridctl stopped it; reaped: gridctl has recorded its end
Launching the same attempt twice starts one process: the wrapper's `mkdir claim` is atomic.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

ATTEMPT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\.[0-9]{1,9}\Z")

# expand a leading ~ in $WD the way a login shell would (the value itself arrives quoted)
EXPAND_WD = 'case "$WD" in "~") WD=$HOME ;; "~/"*) WD="$HOME/${WD#\\~/}" ;; esac\n'

# an attempt is alive while any process of its process group (the wrapper's pid, made a session
# leader by setsid) is alive and not a zombie; without a group, the pid alone
ALIVE_FN = ('alive() { ps -eo pgid=,stat= 2>/dev/null | awk -v g="$1" \'$1 == g && $2 !~ /^Z/ { f = 1 } '
            'END { exit !f }\' && return 0; kill -0 "$1" 2>/dev/null || return 1; '
            'case "$(ps -o stat= -p "$1" 2>/dev/null)" in Z*) return 1 ;; esac; return 0; }\n')

_WRAPPER = r"""D=$1
mkdir "$D/claim" 2>/dev/null || exit 0
echo $$ >"$D/pid.tmp" && mv "$D/pid.tmp" "$D/pid"
date +%s >"$D/started"
. "$D/env"
cd "${GRIDCTL_CWD:-$D}" 2>/dev/null || cd "$D"
sh "$D/cmd" >>"$D/stdout" 2>>"$D/stderr" </dev/null
echo $? >"$D/exit.tmp" && mv "$D/exit.tmp" "$D/exit"
"""


def attempt_dir(work_dir: str, attempt_id: str) -> str:
    if not ATTEMPT_ID_RE.match(attempt_id):
        raise ValueError(f"invalid attempt id {attempt_id!r}")
    return f"{work_dir.rstrip('/')}/attempts/{attempt_id}"


def _write_file(path_var: str, name: str, content: str) -> str:
    """Write content to "$path_var/name" with printf and a quoted argument: no here-doc escapes to get wrong."""
    return f'printf %s {shlex.quote(content)} >"${path_var}/{name}"\n'


def _append_file(path_var: str, name: str, content: str) -> str:
    return f'printf %s {shlex.quote(content)} >>"${path_var}/{name}"\n'


@dataclass(frozen=True)
class LaunchSpec:
    attempt_id: str
    command: str                      # one sh command string
    env: dict[str, str]               # user env plus gridctl's own variables (built by build_env)
    cwd: str | None = None


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


def launch_script(work_dir: str, spec: LaunchSpec, wait_s: float = 3.0) -> str:
    """Idempotent start: an attempt whose dir is claimed already is reported, not started again."""
    attempt_dir(work_dir, spec.attempt_id)   # validates the id
    env_lines = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(spec.env.items()))
    env_lines += 'export GRIDCTL_HEARTBEAT="$D/heartbeat"\n'
    if spec.cwd:
        env_lines += f"GRIDCTL_CWD={shlex.quote(spec.cwd)}\n"
    ticks = max(1, int(wait_s * 10))
    return (
        f"WD={shlex.quote(work_dir)}\n" + EXPAND_WD +
        f"D=\"$WD/attempts/\"{shlex.quote(spec.attempt_id)}\n"
        'mkdir -p "$WD/attempts" || { echo "@launch error cannot create $WD/attempts"; exit 0; }\n'
        # creating the attempt dir is the claim: atomic, so two launches of one attempt write nothing twice
        'if ! mkdir "$D" 2>/dev/null; then\n'
        f'  i=0; while [ ! -f "$D/pid" ] && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i + 1)); done\n'
        '  echo "@launch exists pid=$(cat "$D/pid" 2>/dev/null || echo -)"; exit 0\n'
        'fi\n'
        'R=$(cd "$D" && pwd) && D=$R\n'
        + _write_file("D", "cmd", spec.command + "\n")
        + _write_file("D", "env", env_lines)
        + _write_file("D", "run.sh", _WRAPPER)
        + ': >"$D/heartbeat"\n'
        'command -v setsid >/dev/null 2>&1 && S=setsid || S=\n'
        '$S sh "$D/run.sh" "$D" </dev/null >/dev/null 2>&1 &\n'
        f'i=0; while [ ! -f "$D/pid" ] && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i + 1)); done\n'
        'if [ -f "$D/pid" ]; then echo "@launch started pid=$(cat "$D/pid")"; '
        'else echo "@launch error the process did not start within the wait"; fi\n'
    )


def stop_script(work_dir: str, attempt_id: str, reason: str, grace_s: float = 5.0) -> str:
    """SIGTERM the attempt's process group, SIGKILL after grace_s; idempotent."""
    attempt_dir(work_dir, attempt_id)   # validates the id
    ticks = max(1, int(grace_s * 10))
    return (
        f"WD={shlex.quote(work_dir)}\n" + EXPAND_WD +
        f"D=\"$WD/attempts/\"{shlex.quote(attempt_id)}\n"
        '[ -d "$D" ] || { echo "@stop absent"; exit 0; }\n'
        + _write_file("D", "stopped", reason + "\n") +
        'P=$(cat "$D/pid" 2>/dev/null)\n' + ALIVE_FN +
        '[ -n "$P" ] && alive "$P" || { echo "@stop gone"; exit 0; }\n'
        'kill -s TERM -- "-$P" 2>/dev/null || kill -TERM "$P" 2>/dev/null\n'
        f'i=0; while alive "$P" && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i + 1)); done\n'
        'if alive "$P"; then kill -s KILL -- "-$P" 2>/dev/null || kill -KILL "$P" 2>/dev/null; '
        'echo "@stop killed"; else echo "@stop terminated"; fi\n'
    )


def log_command(work_dir: str, attempt_id: str, stream: str, follow: bool) -> str:
    """A remote command printing an attempt's log; with follow, until its process ends."""
    attempt_dir(work_dir, attempt_id)   # validates the id
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"unknown stream {stream!r}")
    head = f"WD={shlex.quote(work_dir)}; " + EXPAND_WD.strip() + f"; D=\"$WD/attempts/\"{shlex.quote(attempt_id)}; "
    if not follow:
        return head + f'cat "$D/{stream}"'
    return head + (f'P=$(cat "$D/pid" 2>/dev/null); if [ -n "$P" ] && [ ! -f "$D/exit" ]; '
                   f'then exec tail -c +1 --pid="$P" -f "$D/{stream}"; else cat "$D/{stream}"; fi')


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
            return LaunchResult(False, None, rest.removeprefix("error ").strip())
    return LaunchResult(False, None, "no answer from the launch script")


def parse_stop(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("@stop "):
            return line[len("@stop "):].strip()
    return "no answer from the stop script"
