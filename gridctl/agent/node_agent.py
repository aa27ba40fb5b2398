"""gridctl's resident node agent: runs ON THE NODE under python3.8+, stdlib only, imports nothing
from gridctl. Shipped by gridctl/agent/session.py over one SSH exec (`python3 -c LOADER`, its source,
its modules node_attempts.py / node_host.py and the NVML binding's source on stdin: nothing is
written to the node's disk).

Protocol (line-delimited JSON, PROTOCOL version below): after the sources, stdin carries requests
{"id": N, "op": "probe", ...} and {"op": "bye"}; stdout carries {"t": "hello", "v", "caps", "pid"},
{"t": "hb"} after HEARTBEAT_S without any other line, {"t": "xid", ...} the moment NVML reports a critical XID, and one
{"t": "result", "id": N, "out": TEXT} per request, TEXT being the same framed sections the sh probe
prints (gridctl/probe_script.py), so the controller's one parser (probe.parse_probe) reads both.
Only the ops below exist: the agent never runs a command or code the request names.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import sys
import threading
import time

PROTOCOL = 1
HEARTBEAT_S = 10.0     # the controller's session.HEARTBEAT_S: its kernel watches the connection each second
MAX_REQUEST = 1 << 20
SHOW_LINES = 1024
_out_lock = threading.Lock()
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\.[0-9]{1,9}\Z")
_TOK_RE = re.compile(r"^[0-9a-f]{32}\Z")
_CLOCK_BITS = {"clocks_throttle_reasons.hw_slowdown": 0x8, "clocks_event_reasons.hw_slowdown": 0x8,
               "clocks_throttle_reasons.hw_thermal_slowdown": 0x40, "clocks_event_reasons.hw_thermal_slowdown": 0x40,
               "clocks_throttle_reasons.hw_power_brake_slowdown": 0x80,
               "clocks_event_reasons.hw_power_brake_slowdown": 0x80}
_RECOVERY = {0: "None", 1: "GPU Reset", 2: "Node Reboot", 3: "Drain P2P", 4: "Drain and Reset"}
_SMI_WORDS = {3: "[Not Supported]", 4: "[Insufficient Permissions]"}
ATTEMPTS = None       # modules gridctl_node_attempts and gridctl_node_host, shipped beside this one
HOST = None           # (main installs them)


_last_sent = [0.0]


def send(msg: dict) -> None:
    line = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
    with _out_lock:
        try:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
        except (BrokenPipeError, OSError):
            os._exit(0)
        _last_sent[0] = time.monotonic()


def _head(path: str, n: int) -> str | None:
    """What `$(head -c n path)` gives: None when unreadable, trailing newlines dropped."""
    try:
        with open(path, "rb") as f:
            return f.read(n).decode("utf-8", "replace").rstrip("\n")
    except OSError:
        return None


# ------------------------------------------------------------------ NVML

class Nvml:
    """The binding (module pynvml) and what this session learnt: bus ids by index, a wedged call."""

    def __init__(self, binding) -> None:
        self.nv = binding
        self.error: tuple[int, str] | None = None
        self.ready = False
        self.bus: dict = {}
        self.busy = threading.Lock()        # held by a read in flight; a wedged read keeps it
        self.pending: list = []             # XIDs pushed since the last probe
        if binding is None:
            self.error = (12, "NVML binding not available")

    def init(self) -> bool:
        if self.ready or self.nv is None:
            return self.ready
        try:
            self.nv.nvmlInit()
            self.ready, self.error = True, None
        except Exception as e:
            self.error = (_code(e), _words(e))
        return self.ready

    def rows(self, columns: list[str]) -> tuple[int, list[str], list[str], list[tuple[str, int]]]:
        """(rc as nvidia-smi would exit, CSV rows, error lines, compute apps) from NVML."""
        nv, rows, errors, apps, rc = self.nv, [], [], [], 0
        for i in range(nv.nvmlDeviceGetCount()):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
            except Exception as e:
                rc = _code(e) or 999
                where = self.bus.get(i, f"index {i}")
                errors.append(f"Unable to determine the device handle for GPU {where}: {_words(e)}")
                continue
            rows.append(", ".join(self._field(h, i, c) for c in columns))
            try:
                uuid = _text(nv.nvmlDeviceGetUUID(h))
                apps += [(uuid, p.pid) for p in nv.nvmlDeviceGetComputeRunningProcesses(h)][:256]
            except Exception:
                pass
        return rc, rows, errors, apps

    def _field(self, h, i: int, col: str) -> str:
        try:
            value = self._read(h, i, col)
        except Exception as e:
            return _SMI_WORDS.get(_code(e), "[Unknown Error]")
        return "[N/A]" if value is None else str(value)

    def _read(self, h, i: int, col: str):
        nv = self.nv
        if col == "index":
            return i
        if col == "uuid":
            return _text(nv.nvmlDeviceGetUUID(h))
        if col == "name":
            return _text(nv.nvmlDeviceGetName(h)).replace(",", " ")
        if col == "pci.bus_id":
            self.bus[i] = _text(nv.nvmlDeviceGetPciInfo(h).busId)
            return self.bus[i]
        if col == "temperature.gpu":
            return nv.nvmlDeviceGetTemperature(h, 0)
        if col == "power.draw":
            return "%.2f" % (nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
        if col in ("memory.total", "memory.used"):
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            return (mem.total if col == "memory.total" else mem.used) // (1024 * 1024)
        if col == "utilization.gpu":
            return nv.nvmlDeviceGetUtilizationRates(h).gpu
        if col.startswith("ecc.errors."):
            kind = 1 if ".uncorrected." in col else 0           # NVML_MEMORY_ERROR_TYPE_*
            return nv.nvmlDeviceGetTotalEccErrors(h, kind, 1 if col.endswith(".aggregate.total") else 0)
        if col == "retired_pages.pending":
            return "Yes" if nv.nvmlDeviceGetRetiredPagesPendingStatus(h) else "No"
        if col.startswith("remapped_rows."):
            remap = nv.nvmlDeviceGetRemappedRows(h)
            return "Yes" if remap[2 if col.endswith("pending") else 3] else "No"
        if col in _CLOCK_BITS:
            get = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or nv.nvmlDeviceGetCurrentClocksThrottleReasons
            return "Active" if get(h) & _CLOCK_BITS[col] else "Not Active"
        if col == "gpu_recovery_action":
            val = nv.nvmlDeviceGetFieldValues(h, [230])[0]     # NVML_FI_DEV_GET_GPU_RECOVERY_ACTION
            if val.nvmlReturn != 0:
                return "[N/A]"
            return _RECOVERY.get(val.value.uiVal, "Action %d" % val.value.uiVal)
        if col == "pcie.replay_counter":
            return nv.nvmlDeviceGetPcieReplayCounter(h)
        return None

    def watch_xids(self) -> None:
        """Thread: wait on NVML's critical-XID event set and push each event at once."""
        nv = self.nv
        try:
            events = nv.nvmlEventSetCreate()
            keys = {}
            for i in range(nv.nvmlDeviceGetCount()):
                try:
                    h = nv.nvmlDeviceGetHandleByIndex(i)
                    nv.nvmlDeviceRegisterEvents(h, 0x8, events)       # nvmlEventTypeXidCriticalError
                    keys[_handle_key(h)] = (i, _text(nv.nvmlDeviceGetPciInfo(h).busId))
                except Exception:
                    continue
        except Exception as e:
            send({"t": "note", "what": "xid events unavailable: " + _words(e)})
            return
        while True:
            try:
                data = nv.nvmlEventSetWait(events, 1000)
            except Exception as e:
                if _code(e) == 10:               # NVML_ERROR_TIMEOUT: nothing happened
                    continue
                send({"t": "note", "what": "xid events stopped: " + _words(e)})
                return
            index, bus = keys.get(_handle_key(data.device), (None, "unknown"))
            event = {"t": "xid", "xid": int(data.eventData), "gpu": index, "bus_id": bus, "at": time.time()}
            self.pending.append(event)
            del self.pending[:-100]
            send(event)


def _handle_key(h):
    try:
        return ctypes.cast(h, ctypes.c_void_p).value
    except Exception:
        return id(h)


def _code(e: BaseException) -> int:
    value = getattr(e, "value", None)
    return value if isinstance(value, int) else 999


def _words(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def load_binding(source: bytes):
    """The node's own binding when GRIDCTL_PYNVML_PATH names one (the simulated fleet's fake NVML),
    else the source gridctl shipped, loaded as module pynvml without touching the disk."""
    path = os.environ.get("GRIDCTL_PYNVML_PATH")
    try:
        if path:
            sys.path.insert(0, path)
            import pynvml                                          # noqa: PLC0415
            return pynvml
        if not source:
            return None
        import types
        module = types.ModuleType("pynvml")
        module.__file__ = "<gridctl-shipped pynvml>"
        sys.modules["pynvml"] = module
        exec(compile(source, "pynvml.py", "exec"), module.__dict__)
        return module
    except Exception as e:
        send({"t": "note", "what": "NVML binding did not load: " + _words(e)})
        return None


# ------------------------------------------------------------------ the probe

class Probe:
    """One probe's output, framed like the sh probe's: `@<nonce> name rest`, tool lines `|...`."""

    def __init__(self, nonce: str) -> None:
        self.nonce = nonce
        self.lines: list[str] = []

    def say(self, *words) -> None:
        self.lines.append("@%s %s" % (self.nonce, " ".join(str(w).replace("\n", " ") for w in words)))

    def show(self, lines) -> None:
        for n, line in enumerate(lines):
            if n >= SHOW_LINES:
                break
            self.lines.append("|" + line)


def run_probe(req: dict, nvml: Nvml, boot: str) -> str:
    p = Probe(str(req["nonce"]))
    t, tlog = float(req.get("t", 5)), float(req.get("tlog", 2))
    p.say("gridctl-probe", 2)
    p.say("time", int(time.time()))
    p.say("boot_id", boot or "unknown")
    p.say("stuck", "nvidia-smi=%d" % HOST.stuck_smi(HOST.TABLE.scan(time.monotonic())))
    _gpus(p, req, nvml, t)
    pushed, nvml.pending[:] = list(nvml.pending), []
    HOST.kernel_log(p, req, pushed, boot, tlog)
    wd = HOST.expand(str(req.get("wd", "~/.gridctl")))
    HOST.disk(p, wd)
    HOST.spot(p, str(req.get("md") or ""))
    ATTEMPTS.attempts(p, wd, req.get("kill") or [], boot, HOST.procs)
    p.say("end")
    return "\n".join(p.lines) + "\n"


def _gpus(p: Probe, req: dict, nvml: Nvml, t: float) -> None:
    full, core = str(req.get("query", "")), str(req.get("core", ""))
    result: list = []
    if nvml.nv is not None and nvml.busy.acquire(blocking=False):
        def read() -> None:
            try:
                if nvml.init():
                    result.append(nvml.rows(full.split(",")))
            except Exception as e:
                result.append((_code(e), [], ["NVML: " + _words(e)], []))
            finally:
                nvml.busy.release()
        worker = threading.Thread(target=read, daemon=True)
        worker.start()
        worker.join(t)
        if worker.is_alive():
            p.say("nvidia-smi", "rc=124", "query=" + full)          # what `timeout` gives the sh probe
            return
    elif nvml.nv is not None:
        p.say("nvidia-smi", "rc=124", "query=" + full)              # an earlier read is still wedged
        return
    if result:
        rc, rows, errors, apps = result[0]
        p.say("nvidia-smi", "rc=%d" % rc, "query=" + full)
        p.show(errors + rows)
        if rc == 0:
            p.say("apps")
            p.show(["%s, %d" % a for a in apps])
        return
    code, words = nvml.error or (999, "NVML unavailable")
    p.say("nvml", "error=%d" % code, words)
    HOST.smi_fallback(p, full, core, t)


# ------------------------------------------------------------------ main

def _boot_id() -> str:
    return _head(os.environ.get("GRIDCTL_BOOT_ID_FILE") or "/proc/sys/kernel/random/boot_id", 64) or ""


def _heartbeat() -> None:
    """A line at least every HEARTBEAT_S: any line is a sign of life, so a heartbeat goes out only after
    that long without one (during a pass the result counts)."""
    while True:
        quiet = time.monotonic() - _last_sent[0]
        if quiet >= HEARTBEAT_S - 0.05:
            send({"t": "hb", "at": time.time()})
            quiet = 0.0
        time.sleep(max(0.05, HEARTBEAT_S - quiet))


def main(stdin) -> None:
    """Called by the bootstrap loader (session.LOADER) with stdin positioned after this source:
    `COUNT\n`, then COUNT times `NAME LENGTH\n` + source (gridctl_node_attempts, and pynvml unless
    the controller has no binding to ship), then requests."""
    import types
    global ATTEMPTS, HOST
    sources = {}
    for _ in range(int(stdin.readline(16))):
        name, size = stdin.readline(128).split()
        sources[name.decode()] = stdin.read(int(size))
    loaded = {}
    for name in ("gridctl_node_attempts", "gridctl_node_host"):
        loaded[name] = types.ModuleType(name)
        exec(compile(sources[name], name + ".py", "exec"), loaded[name].__dict__)
    ATTEMPTS, HOST = loaded["gridctl_node_attempts"], loaded["gridctl_node_host"]
    serve(stdin, sources.get("pynvml", b""))


def serve(stdin, binding_source: bytes) -> None:
    os.umask(0o077)
    nvml = Nvml(load_binding(binding_source))
    caps = ["probe", "heartbeat"] + (["nvml", "xid-events"] if nvml.nv is not None else [])
    send({"t": "hello", "v": PROTOCOL, "caps": caps, "pid": os.getpid(), "python": sys.version.split()[0]})
    threading.Thread(target=_heartbeat, daemon=True).start()
    if nvml.nv is not None:
        # a wedged driver can hang nvmlInit: never in the thread that reads requests
        threading.Thread(target=lambda: nvml.init() and nvml.watch_xids(), daemon=True).start()
    while True:
        line = stdin.readline(MAX_REQUEST)
        if not line or not line.endswith(b"\n"):
            break                          # the controller went away, or sent an unbounded line
        try:
            req = json.loads(line)
            op = req.get("op")
        except (ValueError, AttributeError):
            send({"t": "error", "id": None, "what": "not a request"})
            continue
        if op == "bye":
            break
        if op != "probe" or not isinstance(req.get("id"), int) or not re.match(r"^[0-9a-f]{8,64}\Z", str(req.get("nonce", ""))):
            send({"t": "error", "id": req.get("id") if isinstance(req.get("id"), int) else None, "what": "unknown op"})
            continue
        try:
            send({"t": "result", "id": req["id"], "out": run_probe(req, nvml, _boot_id())})
        except Exception as e:     # the agent's own fault: say so, keep serving
            send({"t": "error", "id": req["id"], "what": "probe failed: %s: %s" % (type(e).__name__, _words(e))})
    HOST.FOLLOWER.stop()
    os._exit(0)
