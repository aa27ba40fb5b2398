"""A fake `pynvml` (nvidia-ml-py's module) for simulated nodes: the same node state files the fake
nvidia-smi of ../local_bin reads, seen through the NVML API. The node is $GRIDCTL_SIM_NODE, or
$GRIDCTL_SIM_ROOT/<server address from $SSH_CONNECTION>. It raises NVMLError with NVML's real codes:
smi.rc 9 / 18 -> nvmlInit fails with DRIVER_NOT_LOADED / LIB_RM_VERSION_MISMATCH; smi.rc 15 -> a GPU
whose gpu.NN file is gone is GPU_IS_LOST; smi.sleep -> every call hangs; a field "[Unknown Error]"
-> NVML_ERROR_UNKNOWN, "[N/A]" -> NOT_SUPPORTED. XID events: lines "INDEX XID" appended to the node's
nvml.events (providers.local.inject_xid) are what nvmlEventSetWait returns, in order.
The node agent runs unchanged against this module and the real one; only the simulated fleet puts
this directory on the agent's path (GRIDCTL_PYNVML_PATH). Python 3.8+, stdlib only.
"""
from __future__ import annotations

import os
import time

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_UNKNOWN = 999
NVML_TEMPERATURE_GPU = 0
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
nvmlEventTypeXidCriticalError = 0x8
NVML_FI_DEV_GET_GPU_RECOVERY_ACTION = 230
_WORDS = {1: "Uninitialized", 3: "Not Supported", 4: "Insufficient Permissions", 9: "Driver Not Loaded",
          10: "Timeout", 12: "NVML Shared Library Not Found", 15: "GPU is lost",
          18: "RM has detected an NVML/RM version mismatch.", 999: "Unknown Error"}
_RECOVERY = {"none": 0, "gpu reset": 1, "reset": 1, "node reboot": 2, "reboot": 2, "drain p2p": 3,
             "drain and reset": 4}
_CLOCK_BITS = (("hw_slowdown", 0x8), ("hw_thermal_slowdown", 0x40), ("hw_power_brake_slowdown", 0x80))


class NVMLError(Exception):
    """As in nvidia-ml-py: `.value` is the NVML return code, str() its words."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _WORDS.get(self.value, "Unknown Error")


def _node() -> str:
    if os.environ.get("GRIDCTL_SIM_NODE"):
        return os.environ["GRIDCTL_SIM_NODE"]
    addr = (os.environ.get("SSH_CONNECTION") or "- - -").split()[2]
    return os.path.join(os.environ.get("GRIDCTL_SIM_ROOT", "/nonexistent"), addr)


def _read(name: str):
    try:
        with open(os.path.join(_node(), name)) as f:
            return f.read().strip()
    except OSError:
        return None


def _rc() -> int:
    text = _read("smi.rc")
    return int(text) if text and text.isdigit() else 0


def _gate() -> None:
    """smi.sleep: the driver is wedged and every call hangs (as a real NVML call can)."""
    if os.path.exists(os.path.join(_node(), "smi.sleep")):
        time.sleep(float(_read("smi.sleep") or 3600))
    once = os.path.join(_node(), "smi.sleep-once")
    taken = once + ".nvml.%d" % os.getpid()
    try:
        os.rename(once, taken)
    except OSError:
        return
    with open(taken) as f:
        seconds = float(f.read().strip() or 0)
    os.unlink(taken)
    time.sleep(seconds)


_inited = False


def nvmlInit() -> None:
    global _inited
    if not os.path.isdir(_node()):
        raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
    _gate()
    if _rc() in (NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_LIB_RM_VERSION_MISMATCH):
        raise NVMLError(_rc())
    _inited = True


def nvmlShutdown() -> None:
    global _inited
    _inited = False


def _check() -> None:
    if not _inited:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    _gate()
    if _rc() in (NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_LIB_RM_VERSION_MISMATCH):
        raise NVMLError(_rc())


def _gpu_files() -> list:
    try:
        return sorted(n for n in os.listdir(_node()) if n.startswith("gpu."))
    except OSError:
        return []


def nvmlDeviceGetCount() -> int:
    _check()
    return len(_gpu_files()) + (1 if _rc() == NVML_ERROR_GPU_IS_LOST else 0)


class _Handle:
    def __init__(self, index: int, fields: dict) -> None:
        self.index = index
        self.fields = fields

    def get(self, key: str) -> str:
        raw = self.fields.get(key, "[N/A]").strip()
        low = raw.lower()
        if low == "[unknown error]":
            raise NVMLError(NVML_ERROR_UNKNOWN)
        if low.startswith("[") or low in ("n/a", ""):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return raw


def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
    _check()
    text = _read("gpu.%02d" % index)
    if text is None:
        raise NVMLError(NVML_ERROR_GPU_IS_LOST if _rc() == NVML_ERROR_GPU_IS_LOST else NVML_ERROR_INVALID_ARGUMENT)
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return _Handle(index, fields)


class _Struct:
    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)


def nvmlDeviceGetUUID(h: _Handle) -> str:
    return h.get("uuid")


def nvmlDeviceGetName(h: _Handle) -> str:
    return h.get("name")


def nvmlDeviceGetPciInfo(h: _Handle) -> _Struct:
    return _Struct(busId=h.get("pci.bus_id"))


def nvmlDeviceGetTemperature(h: _Handle, sensor: int) -> int:
    return int(float(h.get("temperature.gpu")))


def nvmlDeviceGetPowerUsage(h: _Handle) -> int:
    return int(round(float(h.get("power.draw")) * 1000))


def nvmlDeviceGetMemoryInfo(h: _Handle) -> _Struct:
    mib = 1024 * 1024
    return _Struct(total=int(h.get("memory.total")) * mib, used=int(h.get("memory.used")) * mib)


def nvmlDeviceGetUtilizationRates(h: _Handle) -> _Struct:
    return _Struct(gpu=int(h.get("utilization.gpu")), memory=0)


def nvmlDeviceGetTotalEccErrors(h: _Handle, error_type: int, counter: int) -> int:
    kind = "uncorrected" if error_type == NVML_MEMORY_ERROR_TYPE_UNCORRECTED else "corrected"
    scope = "aggregate" if counter == NVML_AGGREGATE_ECC else "volatile"
    return int(h.get("ecc.errors.%s.%s.total" % (kind, scope)))


def nvmlDeviceGetRetiredPagesPendingStatus(h: _Handle) -> int:
    return 1 if h.get("retired_pages.pending").lower() == "yes" else 0


def nvmlDeviceGetRemappedRows(h: _Handle) -> tuple:
    pending = h.get("remapped_rows.pending").lower() == "yes"
    failure = h.get("remapped_rows.failure").lower() == "yes"
    return 0, 0, int(pending), int(failure)


def nvmlDeviceGetCurrentClocksEventReasons(h: _Handle) -> int:
    bits = 0
    for name, bit in _CLOCK_BITS:
        if h.fields.get("clocks_event_reasons." + name, "").strip().lower() == "active":
            bits |= bit
    return bits


nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons


def nvmlDeviceGetFieldValues(h: _Handle, field_ids: list) -> list:
    out = []
    for fid in field_ids:
        raw = h.fields.get("gpu_recovery_action", "").strip().lower()
        if fid != NVML_FI_DEV_GET_GPU_RECOVERY_ACTION or raw not in _RECOVERY:
            out.append(_Struct(fieldId=fid, nvmlReturn=NVML_ERROR_NOT_SUPPORTED, value=_Struct(uiVal=0)))
        else:
            out.append(_Struct(fieldId=fid, nvmlReturn=NVML_SUCCESS, value=_Struct(uiVal=_RECOVERY[raw])))
    return out


def nvmlDeviceGetComputeRunningProcesses(h: _Handle) -> list:
    uuid = h.get("uuid")
    procs = []
    for line in (_read("apps") or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0] == uuid and parts[1].isdigit():
            procs.append(_Struct(pid=int(parts[1]), usedGpuMemory=None))
    return procs


class _EventSet:
    def __init__(self) -> None:
        self.handles: dict = {}
        path = os.path.join(_node(), "nvml.events")
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0   # only events from now on


def nvmlEventSetCreate() -> _EventSet:
    _check()
    return _EventSet()


def nvmlDeviceGetSupportedEventTypes(h: _Handle) -> int:
    return nvmlEventTypeXidCriticalError


def nvmlDeviceRegisterEvents(h: _Handle, types: int, event_set: _EventSet) -> None:
    event_set.handles[h.index] = h


def nvmlEventSetWait(event_set: _EventSet, timeout_ms: int) -> _Struct:
    """The next "INDEX XID" line of nvml.events, or NVML_ERROR_TIMEOUT after timeout_ms."""
    deadline = time.monotonic() + timeout_ms / 1000.0
    path = os.path.join(_node(), "nvml.events")
    while True:
        line = b""
        try:
            size = os.stat(path).st_size       # one syscall per look: 500 simulated nodes poll this
            if size < event_set.offset:         # the node's state was rewritten
                event_set.offset = 0
            if size > event_set.offset:
                with open(path, "rb") as f:
                    f.seek(event_set.offset)
                    line = f.readline()
        except OSError:
            pass
        if line.endswith(b"\n"):
            event_set.offset += len(line)
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                index = int(parts[0])
                device = event_set.handles.get(index, _Handle(index, {}))
                return _Struct(device=device, eventType=nvmlEventTypeXidCriticalError, eventData=int(parts[1]),
                               gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
            continue
        if time.monotonic() >= deadline:
            raise NVMLError(NVML_ERROR_TIMEOUT)
        time.sleep(0.2)


def nvmlEventSetFree(event_set: _EventSet) -> None:
    event_set.handles.clear()
