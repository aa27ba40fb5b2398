"""The node agent's reads of the host: runs ON THE NODE (python3.8+, stdlib only), shipped beside
node_agent.py as module gridctl_node_host. The kernel log, the work dir's disk, the cloud's spot
notice, processes, and nvidia-smi when NVML does not initialise: the sh probe's sections, with the
same caps and deadlines (gridctl/probe_script.py). Only fixed commands of ours are run.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time

SMI_CAP = 262144
LOG_CAP = 8 * 1024 * 1024


def _head(path: str, n: int):
    """What `$(head -c n path)` gives: None when unreadable, trailing newlines dropped."""
    try:
        with open(path, "rb") as f:
            return f.read(n).decode("utf-8", "replace").rstrip("\n")
    except OSError:
        return None


def smi_fallback(p, full: str, core: str, t: float) -> None:
    """NVML did not initialise: ask nvidia-smi the sh probe's questions."""
    rc, out = run_fixed(["nvidia-smi", "--query-gpu=" + full, "--format=csv,noheader,nounits"], t, SMI_CAP + 1)
    query = full
    if rc == 2 and core:
        query = core
        rc, out = run_fixed(["nvidia-smi", "--query-gpu=" + core, "--format=csv,noheader,nounits"], t, SMI_CAP + 1)
    p.say("nvidia-smi", "rc=%d" % rc, "query=" + query)
    p.show(out[:SMI_CAP].decode("utf-8", "replace").splitlines())
    if len(out) > SMI_CAP:
        p.say("truncated", "nvidia-smi")
    if rc == 0:
        rc2, apps = run_fixed(["nvidia-smi", "--query-compute-apps=gpu_uuid,pid", "--format=csv,noheader"], t, 65536)
        p.say("apps")
        p.show(apps.decode("utf-8", "replace").splitlines()[:256])


def run_fixed(argv: list[str], timeout: float, cap: int, tail: bool = False) -> tuple[int, bytes]:
    """A fixed command of ours with a deadline; stdout capped as read (its newest part when tail)."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if not tail else subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return 127, b""
    timer = threading.Timer(timeout, lambda: _kill(proc))
    timer.start()
    buf = bytearray()
    try:
        while True:
            chunk = proc.stdout.read(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > cap:
                if not tail:
                    _kill(proc)
                    break
                del buf[:-cap]
        rc = proc.wait()
    finally:
        timer.cancel()
        proc.stdout.close()
    return (124 if rc == -signal.SIGKILL else rc), bytes(buf)


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


class KernelFollower:
    """`journalctl -k -f`, started once a one-shot read found a journal: the NVRM lines as the kernel
    writes them, so later probes fork nothing. It dies with the agent (PR_SET_PDEATHSIG); where that
    cannot be set, or the follower ends, every probe reads the log once again."""

    def __init__(self) -> None:
        self.lines: list = []
        self.started: float | None = None
        self.proc = None
        self.dead = False

    def usable(self, since: int) -> bool:
        # the window asked for starts within what was followed (the read that started it covered the rest)
        return not self.dead and self.started is not None and since >= self.started - 10

    def start(self, since: float) -> None:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            die = lambda: libc.prctl(1, signal.SIGKILL)           # noqa: E731  PR_SET_PDEATHSIG
            self.proc = subprocess.Popen(["journalctl", "-k", "-f", "--no-pager", "-o", "short-iso",
                                          "--since=@%d" % max(int(since), 0)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=die)
        except Exception:           # no libc, no fork: stay on one-shot reads
            self.dead = True
            return
        self.started = time.time()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in iter(lambda: self.proc.stdout.readline(65536), b""):
            if b"NVRM" in raw:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                del self.lines[:-400]
        self.dead = True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


FOLLOWER = KernelFollower()


def kernel_log(p, req: dict, pushed: list, boot: str, tlog: float) -> None:
    up = _head("/proc/uptime", 64)
    up = up.split()[0] if up else ""
    since = 0
    pb, pu = str(req.get("pb") or ""), float(req.get("pu") or 0)
    if pb and pb == boot and up:
        since = max(int(time.time() - (float(up) - pu) - 5), 0)
    if FOLLOWER.usable(since):
        p.say("xid", "source=journalctl", "since=%d" % since, "uptime=" + (up or "-"))
        p.show(list(FOLLOWER.lines))
    else:
        _read_once(p, since, up, tlog)
    # XIDs NVML pushed since the last probe, as the kernel would word them (one parser reads both)
    p.show(["%s nvml: NVRM: Xid (PCI:%s): %d, reported by an NVML event" %
            (time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(e["at"])), e["bus_id"], e["xid"])
            for e in pushed if e["bus_id"] != "unknown"])


def _read_once(p, since: int, up: str, tlog: float) -> None:
    """The sh probe's read: journalctl since the last position, else dmesg."""
    src, out, began = "none", b"", time.time()
    if shutil.which("journalctl"):
        argv = ["journalctl", "-k", "--no-pager", "-o", "short-iso"] + (["--since=@%d" % since] if since else [])
        rc, out = run_fixed(argv, tlog, LOG_CAP, tail=True)
        if rc == 0:
            src = "journalctl" if any(ln != b"-- No entries --" for ln in out.splitlines()) else "journalctl-empty"
    if src != "journalctl":
        rc, dout = run_fixed(["dmesg", "--time-format", "iso"], tlog, LOG_CAP, tail=True)
        if rc != 0:
            rc, dout = run_fixed(["dmesg"], tlog, LOG_CAP, tail=True)
        if rc == 0:
            src, out = "dmesg", dout
        elif src == "journalctl-empty":
            src = "journalctl"
    elif FOLLOWER.started is None and not FOLLOWER.dead:
        FOLLOWER.start(began - 5)
    p.say("xid", "source=" + src, "since=%d" % since, "uptime=" + (up or "-"))
    lines = out.decode("utf-8", "replace").splitlines()
    if len(out) >= LOG_CAP:
        lines = lines[1:]
    if src != "none":
        p.show([ln for ln in lines if "NVRM" in ln][-400:])


def disk(p, wd: str) -> None:
    d = wd
    while d and d != "/" and not os.path.isdir(d):
        d = os.path.dirname(d)
    d = d or "/"
    try:
        st = os.statvfs(d)
    except OSError:
        return
    kib = lambda blocks: -(-blocks * st.f_frsize // 1024) * 1024     # df -Pk rounds up to KiB
    p.say("disk", d, kib(st.f_bavail), kib(st.f_blocks))


def spot(p, md: str) -> None:
    if not md:
        return
    import urllib.request
    try:
        if md.startswith("gce:"):
            r = urllib.request.Request(md[4:] + "/computeMetadata/v1/instance/preempted",
                                       headers={"Metadata-Flavor": "Google"})
            with urllib.request.urlopen(r, timeout=1) as resp:
                if resp.read(64).decode("utf-8", "replace") == "TRUE":
                    p.say("spot", "gce instance/preempted TRUE")
            return
        r = urllib.request.Request(md + "/latest/api/token", method="PUT",
                                   headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        with urllib.request.urlopen(r, timeout=1) as resp:
            tok = resp.read(256).decode("utf-8", "replace")
        r = urllib.request.Request(md + "/latest/meta-data/spot/instance-action",
                                   headers={"X-aws-ec2-metadata-token": tok})
        with urllib.request.urlopen(r, timeout=1) as resp:
            if resp.status == 200:
                p.say("spot", resp.read(4096).decode("utf-8", "replace").replace("\r", "").replace("\n", "")[:400])
    except Exception:           # no notice, no endpoint, 404: nothing to say
        return


def expand(wd: str) -> str:
    home = os.environ.get("HOME", "/")
    if wd == "~":
        return home
    return home.rstrip("/") + "/" + wd[2:] if wd.startswith("~/") else wd


# ------------------------------------------------------------------ processes

def _stat(name: str):
    """(pid, comm, state, pgid, start ticks) from /proc/<name>/stat, None when gone (os.open/os.read: no
    file object per process)."""
    try:
        fd = os.open("/proc/%s/stat" % name, os.O_RDONLY)
        try:
            raw = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return None
    cut = raw.rfind(b")")
    rest = raw[cut + 2:].split()
    if len(rest) <= 19:
        return None
    comm = raw[raw.find(b"(") + 1:cut].decode("utf-8", "replace")
    return int(name), comm, rest[0].decode("ascii", "replace"), int(rest[2]), int(rest[19])


def procs() -> list[tuple[int, str, str, int, int]]:
    """(pid, comm, state, pgid, start ticks) of every process, read now."""
    return [e for e in map(_stat, filter(str.isdigit, os.listdir("/proc"))) if e is not None]


class ProcTable:
    """The node's processes as the `stuck` line needs them, for a resident agent. Reading every
    process's stat is most of a probe's CPU on a busy node (27 us a process: 55 ms with 2,000), and
    even listing /proc costs about 2 us a process; a stuck nvidia-smi counts only after 60 s in D, so:
    the nvidia-smi processes known are read again on every probe (their state is what counts); /proc
    is listed every LIST_S, and a pid is read when it first appears; everything is read afresh every
    FULL_S (a process that exec'd nvidia-smi after its read, or a pid reused since, counts from then).
    So a stuck nvidia-smi is counted at worst FULL_S after its 60 s. Attempts never use this table:
    their checks read the processes they name (node_attempts.Procs)."""

    LIST_S = 10.0
    FULL_S = 30.0

    def __init__(self) -> None:
        self.known: dict = {}
        self.full_at = self.listed_at = float("-inf")

    def scan(self, now: float) -> list[tuple[int, str, str, int, int]]:
        if now - self.full_at >= self.FULL_S:
            self.known, self.full_at, self.listed_at = {}, now, float("-inf")
        if now - self.listed_at >= self.LIST_S:
            self.listed_at, old, self.known = now, self.known, {}
            for name in os.listdir("/proc"):
                e = old.get(name)
                if e is None or e[1] == "nvidia-smi":
                    e = _stat(name) if name.isdigit() else None
                if e is not None:
                    self.known[name] = e
        else:
            for name, e in list(self.known.items()):
                if e[1] == "nvidia-smi":
                    e = _stat(name)
                    if e is None:
                        del self.known[name]
                    else:
                        self.known[name] = e
        return list(self.known.values())


TABLE = ProcTable()


def stuck_smi(procs) -> int:
    up = _head("/proc/uptime", 64)
    if not up:
        return 0
    hz = os.sysconf("SC_CLK_TCK")
    uptime = float(up.split()[0])
    return sum(1 for _, comm, st, _, start in procs
               if comm == "nvidia-smi" and st.startswith("D") and 60 < uptime - start / hz < 31536000)
