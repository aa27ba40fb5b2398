"""`provider: local`: simulated GPU nodes on this machine (the embedded default, the demo, tests).

Contract: providers/base.py. Each node is a directory holding its simulated GPU state; the probe
runs there as a local subprocess with the fake `nvidia-smi`, `journalctl` and `dmesg` of
local_bin/ first on PATH. The same writer serves the SSH test fleet, where the fake binaries pick
the node directory from $SSH_CONNECTION.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, ValidationInfo, field_validator

from .base import Feature, Instance, InstanceState, Provider
from .schema import PoolSpec, expand_path

BIN_DIR = Path(__file__).resolve().parent / "local_bin"
NVML_DIR = Path(__file__).resolve().parent / "local_nvml"    # the fake pynvml the node agent imports there
MODES = ("healthy", "xid79", "ecc", "driver", "hang", "missing-gpu", "hot", "row-remap", "down")
_FILES = ("smi.rc", "smi.extra", "smi.sleep", "smi.sleep-once", "smi.ignore-term", "kernel.log", "down", "nvml.events")


class LocalPool(PoolSpec):
    provider: Literal["local"]
    count: int = Field(1, ge=1, le=10000)
    dir: Optional[Path] = None   # where simulated nodes live; default beside the state file

    @field_validator("dir", mode="before")
    @classmethod
    def _dir_path(cls, v: Any, info: ValidationInfo) -> Any:
        return None if v is None else expand_path(str(v), info)

    def planned_nodes(self) -> int:
        return self.count


class LocalProvider(Provider):
    name = "local"
    pool_model = LocalPool
    features = frozenset({Feature.SIMULATED})

    def sim_root(self) -> Path:
        return Path(self.pool.dir) if getattr(self.pool, "dir", None) else self.state_dir / f"sim-{self.fleet}"

    def list_instances(self) -> dict[str, Instance]:
        """`count` nodes named <pool>-<i>. A node directory missing on disk is created healthy, so
        the pool always has what the spec asks for; existing state (faults) is left alone."""
        out = {}
        for i in range(self.pool.count):
            name = f"{self.pool.name}-{i}"
            node_dir = self.sim_root() / name
            if not (node_dir / "boot_id").exists():
                write_node(node_dir, name, gpus=self.pool.gpu.count, gpu_type=self.pool.gpu.type or "H100",
                           memory_gb=self.pool.gpu.memory_gb)
            out[name] = Instance(id=name, provider=self.name, pool=self.pool.name, state=InstanceState.RUNNING,
                                 host="local", local_dir=node_dir)
        return out


def sim_env(node_dir: Path) -> tuple[tuple[str, str], ...]:
    """Environment for running the probe against one simulated node."""
    import os
    return (("GRIDCTL_SIM_NODE", str(node_dir)), ("GRIDCTL_BOOT_ID_FILE", str(node_dir / "boot_id")),
            ("PATH", f"{BIN_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}"), ("GRIDCTL_PYNVML_PATH", str(NVML_DIR)))


def bus_id(index: int) -> str:
    return f"00000000:{0x18 + 0x10 * index:02X}:00.0"


def write_node(node_dir: Path, name: str, *, gpus: int = 4, gpu_type: str = "H100", memory_gb: float | None = 80,
               mode: str = "healthy") -> None:
    """(Re)write a simulated node's state: `gpus` healthy GPUs reporting what real cards of this type
    and size (`sim_card`) report, then the fault `mode` on top."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    node_dir.mkdir(parents=True, exist_ok=True)
    for old in node_dir.glob("gpu.*"):
        old.unlink()
    for f in _FILES:
        (node_dir / f).unlink(missing_ok=True)
    if not (node_dir / "boot_id").exists():
        reboot(node_dir)
    _boot_line(node_dir)
    for i in range(gpus):
        _write_gpu(node_dir, name, i, gpu_type, memory_gb)
    _apply_mode(node_dir, mode, gpus)


def slow_smi_once(node_dir: Path, seconds: float, ignore_term: bool = False) -> None:
    """The node's next nvidia-smi call takes `seconds` before it answers; later calls are quick again
    (a driver without persistence mode, a busy node). `ignore_term`: that call also ignores SIGTERM,
    so only the probe's `timeout -k` KILL ends it and the whole probe overruns its deadline.
    Called by tests; `write_node` (any mode, `healthy` too) clears it."""
    if ignore_term:
        (node_dir / "smi.ignore-term").write_text("1\n")
    (node_dir / "smi.sleep-once").write_text(f"{seconds:g}\n")


def reboot(node_dir: Path) -> None:
    """A new boot id, and the kernel log of the old boot is gone."""
    (node_dir / "boot_id").write_text(str(uuid.uuid4()) + "\n")
    (node_dir / "kernel.log").unlink(missing_ok=True)
    _boot_line(node_dir)


def _boot_line(node_dir: Path) -> None:
    """A kernel log is never empty on a real node (the boot wrote to it), so journalctl finds one."""
    if not (node_dir / "kernel.log").exists():
        (node_dir / "kernel.log").write_text(_kernel_line("Linux version 6.8.0-sim (simulated node boot)"))


def set_field(node_dir: Path, index: int, field: str, value: str) -> None:
    path = node_dir / f"gpu.{index:02d}"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(field + "=")]
    path.write_text("\n".join(lines + [f"{field}={value}"]) + "\n")


# (type, GB as sold) -> what that card's nvidia-smi prints as name and memory.total MiB, so simulated
# nodes test the same marketed-GB-vs-MiB reading real ones need (an L4 sold as 24 GB reports 23034 MiB).
# gridctl/gpufit.py keeps the same facts for reading real cards; a unit test holds the two equal.
_REAL_CARDS = {
    ("T4", 16): ("Tesla T4", 15360),
    ("L4", 24): ("NVIDIA L4", 23034),
    ("A10G", 24): ("NVIDIA A10G", 23028),
    ("L40S", 48): ("NVIDIA L40S", 46068),
    ("A100", 40): ("NVIDIA A100-SXM4-40GB", 40960),
    ("A100", 80): ("NVIDIA A100-SXM4-80GB", 81920),
    ("H100", 80): ("NVIDIA H100 80GB HBM3", 81559),
    ("H100 NVL", 94): ("NVIDIA H100 NVL", 95830),
    ("H200", 141): ("NVIDIA H200", 143771),
    ("B200", 180): ("NVIDIA B200", 183359),
}
# an unknown card keeps back what an H100 does (81559 of 80 GiB)
_UNKNOWN_CARD_USABLE = 0.9956


def sim_card(gpu_type: str, memory_gb: float | None) -> tuple[str, int]:
    """(nvidia-smi name, memory.total MiB) a simulated GPU of this type and size reports. With no
    size, the type's only (or smallest) known size; an unknown card gets a plausible pair."""
    key = gpu_type.strip().upper()
    if memory_gb is None:
        known = sorted(gb for t, gb in _REAL_CARDS if t == key)
        memory_gb = known[0] if known else 80
    card = _REAL_CARDS.get((key, memory_gb))
    if card is not None:
        return card
    return f"NVIDIA {gpu_type}", int(memory_gb * 1024 * _UNKNOWN_CARD_USABLE)


def _write_gpu(node_dir: Path, name: str, i: int, gpu_type: str, memory_gb: float | None) -> None:
    gpu_uuid = "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.{i}.gridctl.example"))
    smi_name, memory_mib = sim_card(gpu_type, memory_gb)
    fields = {
        "index": i, "uuid": gpu_uuid, "name": smi_name, "pci.bus_id": bus_id(i),
        "temperature.gpu": 38 + i, "power.draw": "71.23", "power.limit": "700.00",
        "memory.total": memory_mib, "memory.used": 1, "utilization.gpu": 0,
        "persistence_mode": "Enabled", "pstate": "P0",
        "ecc.errors.uncorrected.volatile.total": 0, "ecc.errors.corrected.volatile.total": 0,
        "retired_pages.pending": "[N/A]", "remapped_rows.pending": "No", "remapped_rows.failure": "No",
        "gpu_recovery_action": "None",
    }
    for reason in ("hw_slowdown", "hw_thermal_slowdown", "sw_thermal_slowdown", "hw_power_brake_slowdown"):
        fields[f"clocks_throttle_reasons.{reason}"] = "Not Active"
        fields[f"clocks_event_reasons.{reason}"] = "Not Active"
    (node_dir / f"gpu.{i:02d}").write_text("".join(f"{k}={v}\n" for k, v in fields.items()))


def _kernel_line(text: str) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime())
    return f"{stamp} sim kernel: {text}\n"


def _apply_mode(node_dir: Path, mode: str, gpus: int) -> None:
    last = max(gpus - 1, 0)
    bdf = bus_id(last)
    if mode == "xid79" and gpus:
        short = bdf[4:].lower().rsplit(".", 1)[0]
        with open(node_dir / "kernel.log", "a") as f:
            f.write(_kernel_line(f"NVRM: Xid (PCI:{short}): 79, pid=0, GPU has fallen off the bus."))
        (node_dir / f"gpu.{last:02d}").unlink()
        (node_dir / "smi.extra").write_text(f"Unable to determine the device handle for GPU {bdf[4:]}: Unknown Error\n")
        (node_dir / "smi.rc").write_text("15\n")
    elif mode == "ecc" and gpus:
        set_field(node_dir, 0, "ecc.errors.uncorrected.volatile.total", "2")
    elif mode == "driver":
        for f in node_dir.glob("gpu.*"):
            f.unlink()
        (node_dir / "smi.extra").write_text(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            "Make sure that the latest NVIDIA driver is installed and running.\n")
        (node_dir / "smi.rc").write_text("9\n")
    elif mode == "hang":
        (node_dir / "smi.sleep").write_text("3600\n")
    elif mode == "missing-gpu" and gpus:
        (node_dir / f"gpu.{last:02d}").unlink()
    elif mode == "hot" and gpus:
        set_field(node_dir, 0, "temperature.gpu", "95")
        set_field(node_dir, 0, "clocks_throttle_reasons.hw_thermal_slowdown", "Active")
        set_field(node_dir, 0, "clocks_event_reasons.hw_thermal_slowdown", "Active")
    elif mode == "row-remap" and gpus:
        set_field(node_dir, 0, "remapped_rows.pending", "Yes")
    elif mode == "down":
        (node_dir / "down").write_text("simulated: node does not answer\n")


def inject_xid(node_dir: Path, index: int, xid: int) -> None:
    """An XID on GPU `index` as the driver reports it: a kernel log line and an NVML critical-XID
    event (the fake pynvml delivers it to a waiting agent). XID 79 also takes the GPU off the bus."""
    short = bus_id(index)[4:].lower().rsplit(".", 1)[0]
    words = "GPU has fallen off the bus." if xid == 79 else "simulated error"
    with open(node_dir / "kernel.log", "a") as f:
        f.write(_kernel_line(f"NVRM: Xid (PCI:{short}): {xid}, pid=0, {words}"))
    if xid == 79:
        (node_dir / f"gpu.{index:02d}").unlink(missing_ok=True)
        (node_dir / "smi.extra").write_text(f"Unable to determine the device handle for GPU {bus_id(index)[4:]}: Unknown Error\n")
        (node_dir / "smi.rc").write_text("15\n")
    with open(node_dir / "nvml.events", "a") as f:
        f.write(f"{index} {xid}\n")


def remove(node_dir: Path) -> None:
    shutil.rmtree(node_dir, ignore_errors=True)
