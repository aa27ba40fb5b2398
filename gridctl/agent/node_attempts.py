"""The node agent's attempt work: runs ON THE NODE (python3.8+, stdlib only), shipped beside
node_agent.py as module gridctl_node_attempts. The same rules as the sh probe's TRUST_FN
(gridctl/launcher.py), written once more in Python because the agent forks no shell: nothing is
read, killed or removed under a work dir another user could change; an attempt dir counts only
when it holds its token; a pid is killed only when it is provably the attempt's process group.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import time

ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\.[0-9]{1,9}\Z")
LOG_MAX = 100 * 1024 * 1024
RETENTION = 7 * 86400
ME = os.getuid()


def _head(path: str, n: int):
    try:
        with open(path, "rb") as f:
            return f.read(n).decode("utf-8", "replace").rstrip("\n")
    except OSError:
        return None


def owned(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == ME and st.st_mode & 0o022 == 0


def safe_above(path: str):
    """None when path and every dir above it belong to root or us and are closed (or sticky), else why."""
    p = path
    while True:
        try:
            st = os.lstat(p)
        except OSError:
            return "%s belongs to uid ?" % p
        if st.st_uid not in (0, ME):
            return "%s belongs to uid %d" % (p, st.st_uid)
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022 and not mode & 0o1000:
            return "%s is writable by others (mode %o)" % (p, mode)
        if p == "/":
            return None
        p = p.rsplit("/", 1)[0] or "/"


def safe_wd(wd: str):
    """(physical path, None) when the work dir is trusted, else (None, why)."""
    p = wd
    while p and p != "/":
        try:
            uid = os.lstat(p).st_uid
        except OSError:
            uid = None
        if uid not in (0, ME):
            return None, "%s belongs to uid %s" % (p, "?" if uid is None else uid)
        p = p.rsplit("/", 1)[0] if "/" in p else ""
    if not os.path.isdir(wd):
        return None, "%s is not a directory" % wd
    real = os.path.realpath(wd)
    if not owned(real):
        try:
            st = os.lstat(real)
            what = "uid %d mode %o" % (st.st_uid, stat.S_IMODE(st.st_mode))
        except OSError:
            what = ""
        return None, "%s is not a directory of uid %d closed to group and others (%s)" % (real, ME, what)
    why = safe_above(real.rsplit("/", 1)[0] or "/")
    return (real, None) if why is None else (None, why)


def mine(d: str, token: str) -> bool:
    return owned(d) and _head(d + "/token", 64) == token


class Procs:
    """The processes an attempt check needs: the pid it names, read when asked; every process (pid,
    comm, state, pgid, start ticks), read once per probe and only when a check needs the group."""

    def __init__(self, scan) -> None:
        self.scan = scan
        self.procs = None

    def all(self):
        if self.procs is None:
            self.procs = self.scan()
        return self.procs

    def alive(self, pid: int) -> bool:
        """The sh probe's `alive`: a process of group pid is alive and not a zombie, or else pid is."""
        st = _head("/proc/%d/stat" % pid, 4096)
        if st and not st[st.rfind(")") + 2:].startswith("Z"):
            try:
                os.kill(pid, 0)
                return True
            except OSError:
                pass
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, OverflowError):
            return False                      # no process in the group: neither half can hold
        except OSError:
            pass
        return any(g == pid and not s.startswith("Z") for _, _, s, g, _ in self.all())

    def start(self, pid: int):
        raw = _head("/proc/%d/stat" % pid, 4096)
        if not raw:
            return None
        rest = raw[raw.rfind(")") + 2:].split()
        return rest[19] if len(rest) > 19 else None

    def env_has(self, pgid: int, ident: str) -> bool:
        want = ("GRIDCTL_ATTEMPT=" + ident).encode()
        for pid, _, _, g, _ in self.all():
            if g != pgid:
                continue
            try:
                with open("/proc/%d/environ" % pid, "rb") as f:
                    if want in f.read(1 << 20).split(b"\0"):
                        return True
            except OSError:
                continue
        return False

    def ours(self, d: str, ident: str, pid_text, boot: str):
        """(ours, mismatch): the process group is this attempt's, or (False, True) when another holds it."""
        if _head(d + "/boot_id", 64) != boot or not pid_text or not pid_text.isdigit():
            return False, False
        pid = int(pid_text)
        if not self.alive(pid):
            return False, False
        started = self.start(pid)
        if started is not None:
            if started == _head(d + "/pid_start", 24):
                return True, False
        elif self.env_has(pid, ident):
            return True, False
        return False, True


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _trim(d: str) -> None:
    m = _head(d + "/log_max", 20)
    limit = int(m) if m and m.isdigit() else LOG_MAX
    for name in ("stdout", "stderr"):
        f = d + "/" + name
        try:
            st = os.lstat(f)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size <= limit:
            continue
        with open(f, "r+b") as fh:
            fh.seek(-(limit // 2), os.SEEK_END)
            tail = fh.read()
            fh.seek(0)
            fh.write(tail)
            fh.truncate()


def attempts(p, wd: str, kill, boot: str, scan) -> None:
    """Fence the kill list's attempts, report every unreaped one, trim logs, expire reaped dirs;
    the `attempt` / `fenced` / `mismatch` / `foreign` / `unsafe` lines of the sh probe; `scan` reads
    every process (called at most once, only when a check needs the process group)."""
    if not os.path.isdir(wd):
        return
    real, why = safe_wd(wd)
    if real is None:
        p.say("unsafe", why.replace("\r", " ").replace("\n", " ")[:400])
        return
    root = real + "/attempts"
    if os.path.lexists(root) and not owned(root):
        p.say("unsafe", "%s is not a directory of uid %d closed to group and others" % (root, ME))
        return
    if not os.path.isdir(root):
        return
    seen = Procs(scan)
    for order in kill:
        ident, token = str(order[0]), str(order[1])
        d = root + "/" + ident
        if not ID_RE.match(ident) or not os.path.isdir(d):
            continue
        if not mine(d, token):
            p.say("foreign", ident)
            continue
        pid = _head(d + "/pid", 20)
        ours, mismatch = seen.ours(d, ident, pid, boot)
        if ours:
            _kill_group(int(pid))
            p.say("fenced", ident, "pid=%s" % pid)
        elif mismatch:
            p.say("mismatch", ident, "pid=%s" % pid)
        open(d + "/reaped", "w").close()
    now = int(time.time())
    for ident in sorted(os.listdir(root)):
        d = root + "/" + ident
        if not owned(d):
            continue
        if os.path.exists(d + "/reaped"):
            k = _head(d + "/retention", 20)
            keep = int(k) if k and k.isdigit() else RETENTION
            try:
                if now - int(os.stat(d + "/reaped").st_mtime) > keep:
                    shutil.rmtree(d, ignore_errors=True)
            except OSError:
                pass
            continue
        pid = _head(d + "/pid", 20)
        ours, mismatch = seen.ours(d, ident, pid, boot)
        _trim(d)
        beats = []
        for name in ("heartbeat", "stdout", "stderr"):
            try:
                beats.append(int(os.lstat(d + "/" + name).st_mtime))
            except OSError:
                pass

        def field(name: str, n: int) -> str:
            v = _head(d + "/" + name, n)
            return "-" if v is None else v.replace("\n", " ")
        p.say("attempt", ident, "pid=%s" % (pid or "-"), "alive=%d" % ours, "exit=" + field("exit", 12),
              "hb=%s" % (max(beats) if beats else "-"), "started=" + field("started", 12), "now=%d" % now,
              "mismatch=%d" % mismatch, "tok=" + (_head(d + "/token", 64) or ""))
