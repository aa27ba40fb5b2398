"""launcher + probe scripts, run for real with local `sh -s` against a temporary work dir (no SSH).

Guards against: a retried launch starting a second copy of a job, user text (env values, commands)
being interpreted by the shell that writes the attempt (injection), a job that does not see the
variables gridctl promises (CUDA_VISIBLE_DEVICES by UUID, GRIDCTL_HEARTBEAT), exit codes lost, a
stop that leaves the job's children running, and the probe not reporting, or not fencing, the
attempts on its node. Every process a test starts is killed by process group in a finaliser.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from gridctl.launcher import (LaunchSpec, attempt_token, build_env, launch_script, log_command, parse_launch,
                              parse_stop, stop_script)
from gridctl.probe import ProbeBudget, probe_request
from providers.local import BIN_DIR, write_node

KEY = bytes(range(32))          # the store's attempt key, as reconcile would read it
NASTY = "a'b \"c\" $(echo INJECTED) `echo INJECTED` ; echo INJECTED & | > /dev/null \\ $HOME *\nline2\t\ttab"


# ---------------------------------------------------------------- helpers

def run_sh(script: str, *args: str, env: dict | None = None, timeout: float = 15) -> str:
    res = subprocess.run(["sh", "-s", "--", *args], input=script, capture_output=True, text=True, timeout=timeout,
                         env=env, start_new_session=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def alive(pid: int) -> bool:
    """Exists and is not a zombie (orphans may wait a while for their reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def wait_for(cond, timeout: float = 5.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


class Work:
    """A work dir on 'the node' and the attempts launched into it. `env`: the environment of the
    scripts (e.g. a simulated boot id file), the same for launches, stops and probes."""

    def __init__(self, root: Path, env: dict | None = None):
        self.root = root
        self.env = env
        self.pgids: set[int] = set()

    def dir(self, attempt_id: str) -> Path:
        return self.root / "attempts" / attempt_id

    def launch(self, attempt_id: str, command: str, env: dict | None = None, cwd: str | None = None, *,
               key: bytes = KEY, **spec):
        script = launch_script(str(self.root), LaunchSpec(attempt_id, command, env or {}, cwd, **spec),
                               attempt_token(key, attempt_id))
        res = parse_launch(run_sh(script, env=self.env))
        if res.pid:
            self.pgids.add(res.pid)
        return res

    def read(self, attempt_id: str, name: str, timeout: float = 5.0) -> str:
        path = self.dir(attempt_id) / name
        assert wait_for(path.exists, timeout), f"{path} never appeared"
        return path.read_text()

    def stop(self, attempt_id: str, reason: str = "test", grace_s: float = 2.0, key: bytes = KEY) -> str:
        script = stop_script(str(self.root), attempt_id, reason, attempt_token(key, attempt_id), grace_s)
        return parse_stop(run_sh(script, env=self.env))

    def kill_all(self) -> None:
        for pid_file in self.root.glob("attempts/*/pid"):
            try:
                self.pgids.add(int(pid_file.read_text()))
            except ValueError:
                pass
        for pgid in self.pgids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def work(tmp_path):
    w = Work(tmp_path / "work dir 'q'")      # a space and a quote in the path on purpose
    w.root.mkdir()
    yield w
    w.kill_all()


# ---------------------------------------------------------------- launch

def test_launch_starts_one_detached_process_and_records_it(work):
    before = time.time()
    res = work.launch("job-a.1", "echo hello; echo oops >&2; sleep 60")
    assert res.ok and res.detail == "started" and res.pid
    d = work.dir("job-a.1")
    assert int((d / "pid").read_text()) == res.pid
    assert alive(res.pid)
    assert os.getsid(res.pid) == res.pid                 # its own session: a stop can kill the whole group
    assert int(before) - 1 <= int(work.read("job-a.1", "started")) <= time.time() + 1
    assert wait_for(lambda: (d / "stdout").read_text() == "hello\n")
    assert wait_for(lambda: (d / "stderr").read_text() == "oops\n")
    assert (d / "heartbeat").exists() and (d / "claim").is_dir()
    assert not (d / "exit").exists()


def test_launching_the_same_attempt_twice_starts_one_process(work):
    runs = work.root / "runs"
    first = work.launch("job-a.1", f"echo run >> {shlex.quote(str(runs))}; sleep 60")
    second = work.launch("job-a.1", f"echo run >> {shlex.quote(str(runs))}; sleep 60")
    assert first.ok and second.ok
    assert (first.detail, second.detail) == ("started", "exists")
    assert second.pid == first.pid
    assert wait_for(runs.exists)
    time.sleep(0.2)
    assert runs.read_text() == "run\n"


def test_launching_a_finished_attempt_again_does_not_rerun_it(work):
    runs = work.root / "runs"
    first = work.launch("job-a.1", f"echo run >> {shlex.quote(str(runs))}")
    assert work.read("job-a.1", "exit") == "0\n"
    again = work.launch("job-a.1", f"echo run >> {shlex.quote(str(runs))}")
    assert again.ok and again.detail == "exists" and again.pid == first.pid
    assert runs.read_text() == "run\n"


def _concurrent_launch(work: Work, attempt_id: str, command: str, env: dict, n: int = 6):
    script = launch_script(str(work.root), LaunchSpec(attempt_id, command, env), attempt_token(KEY, attempt_id))
    procs = [subprocess.Popen(["sh", "-s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) for _ in range(n)]
    for p in procs:
        p.stdin.write(script)
        p.stdin.close()
    outs = [p.stdout.read() for p in procs]
    for p in procs:
        p.wait(timeout=15)
    results = [parse_launch(o) for o in outs]
    work.pgids.update(r.pid for r in results if r.pid)
    return results


def test_concurrent_launches_of_one_attempt_start_exactly_one_process(work):
    for k in range(3):
        runs = work.root / f"runs.{k}"
        results = _concurrent_launch(work, f"job-c.{k}", f"echo run >> {shlex.quote(str(runs))}; sleep 60", {})
        assert all(r.ok for r in results), results
        assert len({r.pid for r in results}) == 1, results
        pid = results[0].pid
        assert int(work.read(f"job-c.{k}", "pid")) == pid
        # the winner of the claim runs the command; nobody else does
        assert wait_for(runs.exists), f"round {k}: the command never ran"
        time.sleep(0.3)      # room for a second copy to show itself (its absence cannot be awaited)
        assert runs.read_text() == "run\n", f"round {k}: ran {runs.read_text().count('run')} times"


def test_concurrent_launches_run_the_command_with_its_env_intact(work):
    payload = "payload-" + "y" * 2000
    deadline = time.monotonic() + 4.0
    k = 0
    while time.monotonic() < deadline:
        runs = work.root / f"runs.{k}"
        _concurrent_launch(work, f"job-i.{k}", f'printf "%s\\n" "$X" >> {shlex.quote(str(runs))}; sleep 60',
                           {"X": payload}, n=8)
        exit_file = work.dir(f"job-i.{k}") / "exit"
        assert wait_for(runs.exists, 1.0), \
            f"round {k}: the command never ran (exit {exit_file.read_text().strip() if exit_file.exists() else '-'})"
        assert runs.read_text() == payload + "\n", f"round {k}: env truncated"
        k += 1


def test_env_values_reach_the_process_verbatim(work):
    env = {"X": NASTY, "EMPTY": "", "DOLLAR": "$", "Q": "'", "BS": "\\", "NL": "\n"}
    out = work.root / "env.out"
    cmd = "".join(f'printf "[%s]" "${k}" >> {shlex.quote(str(out))}; ' for k in env)
    work.launch("job-e.1", cmd, env)
    assert work.read("job-e.1", "exit") == "0\n"
    assert out.read_text() == "".join(f"[{v}]" for v in env.values())
    assert "INJECTED" not in (work.dir("job-e.1") / "stdout").read_text()


def test_list_commands_reach_the_process_word_for_word(work):
    words = ["printf", "[%s]", NASTY, "$(echo INJECTED)", "`echo INJECTED`", "a;b", "it's", "l1\nl2", ""]
    command = shlex.join(words)
    work.launch("job-w.1", command)
    assert work.read("job-w.1", "exit") == "0\n"
    assert (work.dir("job-w.1") / "stdout").read_text() == "".join(f"[{w}]" for w in words[2:])
    assert (work.dir("job-w.1") / "cmd").read_text() == command + "\n"


def test_a_string_command_runs_once_as_written(work):
    command = "X=$(echo sub); echo \"$X\" 'lit $(no)' `echo tick`; echo second\necho third"
    work.launch("job-s.1", command)
    assert work.read("job-s.1", "exit") == "0\n"
    assert (work.dir("job-s.1") / "stdout").read_text() == "sub lit $(no) tick\nsecond\nthird\n"


def test_gridctl_variables_are_set_for_the_job(work):
    env = build_env({"USER_VAR": "u"}, job="train", attempt_id="train.3", replica=1,
                    gpu_uuids=("GPU-aaaa", "GPU-bbbb"), restart_count=2, checkpoint_dir="/ckpt/run 1")
    names = ("CUDA_VISIBLE_DEVICES", "GRIDCTL_JOB", "GRIDCTL_ATTEMPT", "GRIDCTL_HEARTBEAT", "GRIDCTL_REPLICA",
             "GRIDCTL_RESTART_COUNT", "GRIDCTL_CHECKPOINT_DIR", "USER_VAR")
    work.launch("train.3", "".join(f'echo "{n}=${n}"; ' for n in names) + "pwd", env)
    assert work.read("train.3", "exit") == "0\n"
    lines = (work.dir("train.3") / "stdout").read_text().splitlines()
    real = os.path.realpath(work.dir("train.3"))
    assert lines == ["CUDA_VISIBLE_DEVICES=GPU-aaaa,GPU-bbbb", "GRIDCTL_JOB=train", "GRIDCTL_ATTEMPT=train.3",
                     f"GRIDCTL_HEARTBEAT={real}/heartbeat", "GRIDCTL_REPLICA=1", "GRIDCTL_RESTART_COUNT=2",
                     "GRIDCTL_CHECKPOINT_DIR=/ckpt/run 1", "USER_VAR=u", real]


def test_a_zero_gpu_attempt_sees_no_gpus(work):
    env = build_env({}, job="cpu", attempt_id="cpu.1", replica=0, gpu_uuids=(), restart_count=0, checkpoint_dir=None)
    work.launch("cpu.1", 'echo "[${CUDA_VISIBLE_DEVICES-unset}]"', env)
    assert work.read("cpu.1", "exit") == "0\n"
    assert (work.dir("cpu.1") / "stdout").read_text() == "[]\n"


def test_the_job_runs_in_its_work_dir_when_given(work, tmp_path):
    app = tmp_path / "app dir"
    app.mkdir()
    work.launch("job-d.1", "pwd", cwd=str(app))
    assert work.read("job-d.1", "exit") == "0\n"
    assert (work.dir("job-d.1") / "stdout").read_text() == f"{os.path.realpath(app)}\n"


def test_a_tilde_work_dir_is_expanded_on_the_node(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    w = Work(home / ".gridctl")
    try:
        script = launch_script("~/.gridctl", LaunchSpec("job-t.1", "echo ok", {}), attempt_token(KEY, "job-t.1"))
        res = parse_launch(run_sh(script, env={**os.environ, "HOME": str(home)}))
        assert res.ok
        w.pgids.add(res.pid)
        assert w.read("job-t.1", "exit") == "0\n"
    finally:
        w.kill_all()


@pytest.mark.parametrize("code", [0, 1, 3, 137])
def test_exit_code_is_recorded(work, code):
    work.launch("job-x.1", f"exit {code}")
    assert work.read("job-x.1", "exit") == f"{code}\n"


# ---------------------------------------------------------------- stop

def test_stop_terminates_the_whole_process_group_and_is_idempotent(work):
    kid_file = work.root / "kid"
    res = work.launch("job-k.1", f"sleep 300 & echo $! > {shlex.quote(str(kid_file))}; sleep 300")
    assert wait_for(lambda: kid_file.exists() and kid_file.read_text().strip().isdigit())
    kid = int(kid_file.read_text())
    assert alive(res.pid) and alive(kid)
    assert work.stop("job-k.1", reason="drained: maintenance") == "terminated"
    assert wait_for(lambda: not alive(res.pid) and not alive(kid), 3.0)
    assert (work.dir("job-k.1") / "stopped").read_text() == "drained: maintenance\n"
    assert work.stop("job-k.1") == "gone"
    assert work.stop("job-k.1") == "gone"


def test_stop_kills_a_process_that_ignores_sigterm(work):
    res = work.launch("job-i.1", "trap '' TERM; sleep 300")
    assert wait_for(lambda: alive(res.pid))
    time.sleep(0.1)
    assert work.stop("job-i.1", grace_s=0.3) == "killed"
    assert wait_for(lambda: not alive(res.pid), 3.0)


def test_stop_of_an_attempt_that_never_reached_the_node_is_absent(work):
    assert work.stop("job-n.1") == "absent"


def test_stop_of_a_finished_attempt_is_gone(work):
    work.launch("job-f.1", "true")
    work.read("job-f.1", "exit")
    assert work.stop("job-f.1") == "gone"


@pytest.mark.parametrize("bad", ["../x.1", "a/b.1", "job", "job.x", "Job.1", ".job.1", "job.1;rm", "job\n.1", "",
                                 "j" * 64 + ".1"])
@pytest.mark.parametrize("make", [
    lambda a: launch_script("/w", LaunchSpec(a, "true", {}), "0" * 32),
    lambda a: log_command("/w", a, "stdout", False),
    lambda a: probe_request(ProbeBudget(10), "/w", kill=(a,), key=KEY),
], ids=["launch_script", "log_command", "probe_request"])
def test_invalid_attempt_ids_are_refused(make, bad):
    with pytest.raises(ValueError, match="invalid attempt id"):
        make(bad)


def test_stop_script_refuses_an_invalid_attempt_id():
    with pytest.raises(ValueError, match="invalid attempt id"):
        stop_script("/w", "../..", "test", "0" * 32)


# ---------------------------------------------------------------- the probe's @attempt and @fenced lines

@pytest.fixture
def node(tmp_path):
    node_dir = tmp_path / "node"
    write_node(node_dir, "n0", gpus=2)
    return node_dir


def probe(work: Work, node_dir: Path, kill: tuple[str, ...] = (), *, position=None, path_first: str = ""):
    """One probe of the work dir, as reconcile runs it; `path_first`: a dir of fake tools before all others."""
    req = probe_request(ProbeBudget(10), str(work.root), kill=kill, key=KEY, position=position)
    env = {**os.environ, **(work.env or {}), "GRIDCTL_SIM_NODE": str(node_dir),
           "PATH": f"{path_first}{BIN_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    res = subprocess.run(["sh", "-c", req.command], input=req.stdin, capture_output=True, env=env,
                         timeout=20, start_new_session=True)
    text = res.stdout.decode("utf-8", "replace")
    obs = req.parse("n0", res.stdout, started_at=time.time(), duration_s=0.1)
    assert obs.complete, text + res.stderr.decode()
    return obs, text.replace(f"@{req.nonce} ", "@")


def test_probe_reports_alive_and_exited_attempts(work, node):
    live = work.launch("job-l.1", "sleep 300")
    work.launch("job-x.1", "exit 3")
    assert work.read("job-x.1", "exit") == "3\n"
    d = work.dir("job-l.1")
    old = int(time.time()) - 100
    for name in ("heartbeat", "stdout", "stderr"):
        os.utime(d / name, (old, old))
    os.utime(d / "heartbeat", (old + 60, old + 60))           # the newest of the three counts
    obs, _ = probe(work, node)
    reports = {r.id: r for r in obs.attempts}
    assert set(reports) == {"job-l.1", "job-x.1"}
    r = reports["job-l.1"]
    assert (r.pid, r.alive, r.exit_code, r.fenced) == (live.pid, True, None, False)
    assert r.heartbeat_at == old + 60
    assert r.started_at == int((d / "started").read_text())
    assert r.node_now is not None and abs(r.node_now - time.time()) < 5
    x = reports["job-x.1"]
    assert (x.alive, x.exit_code, x.fenced) == (False, 3, False)
    assert len(obs.gpus) == 2


def test_probe_fences_attempts_on_the_kill_list_then_stops_listing_them(work, node):
    kid_file = work.root / "kid"
    doomed = work.launch("job-z.1", f"sleep 300 & echo $! > {shlex.quote(str(kid_file))}; sleep 300")
    keep = work.launch("job-k.1", "sleep 300")
    assert wait_for(lambda: kid_file.exists() and kid_file.read_text().strip().isdigit())
    kid = int(kid_file.read_text())
    obs, text = probe(work, node, kill=("job-z.1",))
    assert f"@fenced job-z.1 pid={doomed.pid}" in text
    assert wait_for(lambda: not alive(doomed.pid) and not alive(kid), 3.0)
    reports = {r.id: r for r in obs.attempts}
    assert reports["job-z.1"].fenced and reports["job-z.1"].reaped and not reports["job-z.1"].alive
    assert reports["job-k.1"].alive and not reports["job-k.1"].fenced
    assert (work.dir("job-z.1") / "reaped").exists()
    obs, text = probe(work, node)
    assert "@fenced" not in text
    assert [r.id for r in obs.attempts] == ["job-k.1"]
    assert alive(keep.pid)


def test_a_dead_attempt_on_the_kill_list_is_reaped_without_a_fence(work, node):
    work.launch("job-x.1", "exit 3")
    work.read("job-x.1", "exit")
    _, text = probe(work, node, kill=("job-x.1",))
    assert "@fenced" not in text and "@attempt job-x.1" not in text
    obs, _ = probe(work, node)
    assert obs.attempts == ()


def test_probe_of_a_node_without_attempts_reports_none(work, node):
    obs, text = probe(work, node, kill=("job-never.1",))
    assert obs.attempts == () and "@attempt" not in text


def test_an_attempt_id_with_a_trailing_newline_is_refused():
    with pytest.raises(ValueError, match="invalid attempt id"):
        launch_script("/w", LaunchSpec("job.1\n", "true", {}), "0" * 32)


# ---------------------------------------------------------------- issue 11: kill only what gridctl started

@pytest.fixture
def bystander():
    """A process gridctl did not start, in its own process group: nothing may signal it."""
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        procs.append(subprocess.Popen(["sleep", "300"], start_new_session=True))
        assert wait_for(lambda: alive(procs[-1].pid))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def _end(work: Work, attempt_id: str) -> int:
    """The attempt's processes end (as a crash or a reboot would end them); returns its pid."""
    pid = int(work.read(attempt_id, "pid"))
    os.killpg(pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(pid), 3.0)
    return pid


def test_an_attempt_dir_this_gridctl_did_not_create_is_not_adopted_stopped_fenced_or_reported(work, node):
    other = work.launch("job-f.1", "sleep 300", key=b"another store's key")   # e.g. a store made afresh
    assert other.ok and alive(other.pid)
    again = work.launch("job-f.1", "sleep 300")
    assert not again.ok and "was not created by this gridctl" in again.detail
    assert work.stop("job-f.1") == "not-ours"
    obs, text = probe(work, node, kill=("job-f.1",))
    assert "@fenced" not in text and alive(other.pid)
    assert obs.attempts == () and obs.foreign_attempts == ("job-f.1",)
    assert not (work.dir("job-f.1") / "reaped").exists() and not (work.dir("job-f.1") / "stopped").exists()


def test_a_work_dir_other_users_can_write_is_not_used_read_or_fenced(work, node, bystander):
    victim = bystander()
    planted = work.dir("job-p.1")
    planted.mkdir(parents=True)
    (planted / "pid").write_text(f"{victim.pid}\n")
    (planted / "token").write_text(attempt_token(KEY, "job-p.1"))    # even a token that would match
    work.root.chmod(0o777)
    res = work.launch("job-n.1", "sleep 300")
    assert not res.ok and res.detail.startswith(f"work dir unsafe: {work.root} ")
    assert not work.dir("job-n.1").exists()
    assert work.stop("job-p.1").startswith(f"unsafe {work.root} ")
    obs, text = probe(work, node, kill=("job-p.1",))
    assert obs.work_dir_unsafe is not None and obs.work_dir_unsafe.startswith(str(work.root))
    assert obs.attempts == () and "@fenced" not in text and alive(victim.pid)
    assert sorted(p.name for p in planted.iterdir()) == ["pid", "token"]


def test_a_parent_others_can_write_without_the_sticky_bit_makes_the_work_dir_unsafe(tmp_path, node):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)                 # anyone could rename the work dir away and put another there
    w = Work(shared / "work")
    try:
        res = w.launch("job-s.1", "true")
        assert not res.ok and res.detail.startswith(f"work dir unsafe: {shared} is writable by others")
        shared.chmod(0o1777)            # sticky, like /tmp: only the owner may rename its entries
        assert w.launch("job-s.1", "true").ok
    finally:
        w.kill_all()


def test_after_a_reboot_nothing_holding_the_old_pid_is_stopped_or_fenced(tmp_path, node, bystander):
    boot = tmp_path / "boot_id"
    boot.write_text("11111111-1111-1111-1111-111111111111\n")
    w = Work(tmp_path / "work", env={**os.environ, "GRIDCTL_BOOT_ID_FILE": str(boot)})
    w.root.mkdir()
    try:
        w.launch("job-b.1", "sleep 300")
        _end(w, "job-b.1")
        boot.write_text("22222222-2222-2222-2222-222222222222\n")
        # after the reboot an unrelated process holds the old pid number, even with the same start tick
        other = bystander()
        (w.dir("job-b.1") / "pid").write_text(f"{other.pid}\n")
        (w.dir("job-b.1") / "pid_start").write_text(_start_time(other.pid) + "\n")
        obs, _ = probe(w, node)
        (r,) = obs.attempts
        assert (r.id, r.alive, r.pid_mismatch) == ("job-b.1", False, False)
        assert w.stop("job-b.1") == "gone"
        obs, text = probe(w, node, kill=("job-b.1",))
        assert "@fenced" not in text and alive(other.pid)
        assert (w.dir("job-b.1") / "reaped").exists()
    finally:
        w.kill_all()


def test_a_pid_that_now_names_another_process_is_reported_and_never_signalled(work, node, bystander):
    work.launch("job-m.1", "sleep 300")
    _end(work, "job-m.1")
    other = bystander()
    (work.dir("job-m.1") / "pid").write_text(f"{other.pid}\n")
    obs, _ = probe(work, node)
    (r,) = obs.attempts
    assert (r.alive, r.pid_mismatch, r.pid) == (False, True, other.pid)
    assert work.stop("job-m.1") == f"pid-mismatch pid={other.pid}"
    obs, text = probe(work, node, kill=("job-m.1",))
    assert f"@mismatch job-m.1 pid={other.pid}" in text and "@fenced" not in text
    assert alive(other.pid)
    (r,) = obs.attempts
    assert (r.id, r.pid_mismatch, r.reaped, r.fenced) == ("job-m.1", True, True, False)


def test_an_attempt_whose_wrapper_died_is_still_known_by_its_group_and_stopped(work, node):
    kid_file = work.root / "kid"
    res = work.launch("job-w.1", f"sleep 300 & echo $! > {shlex.quote(str(kid_file))}; sleep 300")
    assert wait_for(lambda: kid_file.exists() and kid_file.read_text().strip().isdigit())
    kid = int(kid_file.read_text())
    os.kill(res.pid, signal.SIGKILL)            # the wrapper (group leader) only
    assert wait_for(lambda: not alive(res.pid), 3.0) and alive(kid)
    obs, _ = probe(work, node)
    (r,) = obs.attempts
    assert (r.alive, r.pid_mismatch) == (True, False)
    assert work.stop("job-w.1", grace_s=1.0) in ("terminated", "killed")
    assert wait_for(lambda: not alive(kid), 3.0)


def test_job_files_are_private_whatever_the_umask_and_the_job_keeps_its_own(work):
    script = launch_script(str(work.root), LaunchSpec("job-u.1", "umask; : > made-by-job", {}),
                           attempt_token(KEY, "job-u.1"))
    res = parse_launch(run_sh("umask 000\n" + script))
    work.pgids.add(res.pid)
    assert work.read("job-u.1", "exit") == "0\n"
    d = work.dir("job-u.1")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((work.root / "attempts").stat().st_mode) == 0o700
    for f in ("token", "boot_id", "cmd", "env", "run.sh", "log_max", "retention", "pid", "pid_start", "started",
              "heartbeat", "stdout", "stderr", "exit"):
        assert stat.S_IMODE((d / f).stat().st_mode) == 0o600, f
    assert (d / "stdout").read_text() == "0000\n"
    assert stat.S_IMODE((d / "made-by-job").stat().st_mode) == 0o666


def test_probe_caps_endless_tool_output_on_the_node(work, node, tmp_path):
    fake = tmp_path / "endless"
    fake.mkdir()
    for tool, line in (("nvidia-smi", "0, GPU-endless"), ("journalctl", "2026-01-01T00:00:00+0000 h kernel: NVRM: x")):
        (fake / tool).write_text(f"#!/bin/sh\nexec yes {shlex.quote(line)}\n")
        (fake / tool).chmod(0o755)
    tmp = tmp_path / "node-tmp"
    tmp.mkdir()
    work.env = {**os.environ, "TMPDIR": str(tmp)}
    peak = [0]
    done = [False]

    def watch() -> None:
        """The most the probe ever held in its temp files: never the tools' whole output."""
        while not done[0]:
            try:
                peak[0] = max(peak[0], sum(p.stat().st_size for p in tmp.iterdir() if p.is_file()))
            except OSError:
                pass
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        obs, _ = probe(work, node, path_first=f"{fake}:")
    finally:
        done[0] = True
        watcher.join()
    assert "nvidia-smi printed more than 256 KiB; output truncated" in obs.parse_problems
    assert obs.xid_source == "dmesg"            # a journalctl that never finishes is not read
    assert 0 < peak[0] <= 256 * 1024 + 1 + 8 * 1024 * 1024, peak[0]


def test_logs_over_their_cap_keep_their_newest_half(work, node):
    cap = 65536
    work.launch("job-l.1", 'i=0; while [ $i -lt 20000 ]; do echo "line-$i"; i=$((i + 1)); done; echo last; '
                           "echo err >&2; sleep 300", log_max_bytes=cap)
    out = work.dir("job-l.1") / "stdout"
    assert wait_for(lambda: out.read_text().endswith("last\n"), 10.0)
    assert out.stat().st_size > cap
    probe(work, node)
    text = out.read_text()
    assert cap // 2 - 16 <= len(text) <= cap // 2 and text.endswith("line-19999\nlast\n")
    assert (work.dir("job-l.1") / "stderr").read_text() == "err\n"


def test_reaped_attempt_dirs_go_after_their_retention_and_no_other_dir_does(work, node):
    for a in ("job-r.1", "job-y.1", "job-u.1"):
        work.launch(a, "true", retention_s=3600)
        work.read(a, "exit")
    probe(work, node, kill=("job-r.1", "job-y.1"))
    old = time.time() - 7200
    os.utime(work.dir("job-r.1") / "reaped", (old, old))
    for f in work.dir("job-u.1").iterdir():         # ended long ago, but gridctl has not reaped it
        os.utime(f, (old, old))
    obs, _ = probe(work, node)
    assert not work.dir("job-r.1").exists()
    assert work.dir("job-y.1").is_dir() and work.dir("job-u.1").is_dir()
    assert [r.id for r in obs.attempts] == ["job-u.1"]


def test_nothing_secret_travels_on_the_probe_command_line_and_each_probe_has_its_own_nonce():
    a = probe_request(ProbeBudget(10), "/w", kill=("job.1",), key=KEY)
    b = probe_request(ProbeBudget(10), "/w", kill=("job.1",), key=KEY)
    assert a.nonce != b.nonce and len(a.nonce) == 32
    token = attempt_token(KEY, "job.1")
    assert token not in a.command and a.nonce not in a.command and "job.1" not in a.command
    assert token.encode() in a.stdin and a.nonce.encode() in a.stdin
    with pytest.raises(ValueError, match="needs the attempt key"):
        probe_request(ProbeBudget(10), "/w", kill=("job.1",))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="acts as the user nobody: needs root")
def test_a_work_dir_path_through_a_link_another_user_made_is_unsafe(tmp_path):
    scratch = Path(tempfile.mkdtemp(prefix="gridctl-scratch-", dir="/tmp"))
    try:
        scratch.chmod(0o1777)
        target = tmp_path / "root-owned"
        target.mkdir(mode=0o700)
        subprocess.run(["runuser", "-u", "nobody", "--", "ln", "-s", str(target), str(scratch / "n1")], check=True)
        w = Work(scratch / "n1")
        res = w.launch("job-l.1", "true")
        assert not res.ok and res.detail == f"work dir unsafe: {scratch / 'n1'} belongs to uid 65534"
        assert not (target / "attempts").exists()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize("follow", [False, True])
def test_logs_are_read_only_from_a_trusted_attempt_dir(work, follow):
    work.launch("job-o.1", "echo out-line")
    assert work.read("job-o.1", "exit") == "0\n"
    read = subprocess.run(["sh", "-c", log_command(str(work.root), "job-o.1", "stdout", follow)],
                          capture_output=True, text=True, timeout=15)
    assert (read.returncode, read.stdout) == (0, "out-line\n")
    work.root.chmod(0o777)
    read = subprocess.run(["sh", "-c", log_command(str(work.root), "job-o.1", "stdout", follow)],
                          capture_output=True, text=True, timeout=15)
    assert (read.returncode, read.stdout) == (1, "")
    assert read.stderr.startswith(f"gridctl: work dir unsafe: {work.root} ")


def _logs(work, attempt_id: str, stream: str, follow: bool = False, tail: int | None = None):
    return subprocess.run(["sh", "-c", log_command(str(work.root), attempt_id, stream, follow, tail)],
                          capture_output=True, text=True, timeout=15)


@pytest.mark.parametrize("follow", [False, True])
def test_logs_of_both_streams_mark_every_line_so_one_stream_cannot_pass_for_the_other(work, follow):
    work.launch("job-m.1", "printf 'a\\n[stderr] forged\\n'; echo e1 >&2; printf 'no-newline'")
    assert work.read("job-m.1", "exit") == "0\n"
    read = _logs(work, "job-m.1", "both", follow)
    assert read.returncode == 0, read.stderr
    assert read.stdout == "[stdout] a\n[stdout] [stderr] forged\n[stdout] no-newline\n[stderr] e1\n"
    assert _logs(work, "job-m.1", "stderr", follow).stdout == "e1\n"     # one stream: as written


def test_logs_tail_keeps_the_last_lines_of_each_stream(work):
    work.launch("job-t.1", "seq 1 50; seq 100 105 >&2")
    assert work.read("job-t.1", "exit") == "0\n"
    assert _logs(work, "job-t.1", "both", tail=2).stdout == \
        "[stdout] 49\n[stdout] 50\n[stderr] 104\n[stderr] 105\n"
    assert _logs(work, "job-t.1", "stdout", tail=3).stdout == "48\n49\n50\n"


def test_logs_of_an_attempt_with_no_log_files_exit_1_printing_nothing(work):
    (work.root / "attempts").mkdir(mode=0o700)
    assert (_logs(work, "job-x.1", "both").returncode, _logs(work, "job-x.1", "both").stdout) == (1, "")
