"""Pure: the one rule for whether a GPU offers what a job asks (type and memory), DESIGN section 6.

Called by placement (a GPU a node reported), reconcile/pools (a pool's `gpu:` spec, before growing
it for a pending job) and, when a job is submitted (ops.record_job), `submit_shortfall`. No I/O.

Jobs and pool specs say memory as it is sold (`gpu_memory_gb: 24` for an L4); nodes report usable
MiB (an L4 prints 23034 MiB: less than 24*1000 and less than 24*1024, because the driver and ECC
keep some). Both sides are therefore compared in marketed GB: a reported GPU is first read as the
size it is sold as (`marketed_gb`), then `request_gb <= offered_gb`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Card:
    model: str            # what a fleet or job spec writes as the type
    smi_name: str         # nvidia-smi --query-gpu=name
    marketed_gb: int      # the size on the datasheet
    reported_mib: int     # nvidia-smi --query-gpu=memory.total on a current driver


# memory.total as real nvidia-smi output prints it (public issue and log captures: T4 15360 MiB on
# Colab, L4 23034, A10G 23028 on AWS g5, L40S 46068, A100 40960 / 81920, H100 SXM 81559, H100 NVL
# 95830, H200 143771, B200 183359 in NVIDIA/TensorRT-LLM#10278). Older drivers print a little less
# (T4 15109, A100 40536 / 81251); `_SAME_CARD` covers them. B200 is sold as 180 GB per GPU (DGX
# B200: 1,440 GB for 8); 192 GB is the raw HBM, which no job can have.
CARDS = (
    Card("T4", "Tesla T4", 16, 15360),
    Card("L4", "NVIDIA L4", 24, 23034),
    Card("A10G", "NVIDIA A10G", 24, 23028),
    Card("L40S", "NVIDIA L40S", 48, 46068),
    Card("A100", "NVIDIA A100-SXM4-40GB", 40, 40960),
    Card("A100", "NVIDIA A100-SXM4-80GB", 80, 81920),
    Card("H100", "NVIDIA H100 80GB HBM3", 80, 81559),
    Card("H100 NVL", "NVIDIA H100 NVL", 94, 95830),
    Card("H200", "NVIDIA H200", 141, 143771),
    Card("B200", "NVIDIA B200", 180, 183359),
)
_BY_NAME = {c.smi_name.lower(): c for c in CARDS}
# a named card reporting less than this share of its row is not the whole card (a vGPU profile or
# a partition carrying the full name), so its size comes from its MiB instead
_SAME_CARD = 0.97
# sizes GPUs are sold in; an unknown card is read as the nearest one at or above its GiB when it
# reports at least _USABLE of it (every card above reports 92% or more of its marketed GiB, the
# T4 on an older driver, 15109 MiB, being the lowest)
_SIZES_GB = (1, 2, 3, 4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 128, 141, 144, 180, 192, 288)
_USABLE = 0.92
_VENDOR_WORDS = frozenset({"nvidia", "tesla"})


def marketed_gb(memory_mib: int | None, name: str = "") -> int | None:
    """The size this GPU is sold as, from what nvidia-smi reported; None when memory is unknown."""
    if memory_mib is None or memory_mib <= 0:
        return None
    card = _BY_NAME.get(name.strip().lower())
    if card is not None and memory_mib >= card.reported_mib * _SAME_CARD:
        return card.marketed_gb
    gib = memory_mib / 1024
    size = next((s for s in _SIZES_GB if s >= gib), None)
    if size is not None and gib >= size * _USABLE:
        return size
    return math.floor(gib)


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def type_matches(wanted: str | None, name: str) -> bool:
    """Every word of `wanted` (H100, "A100 80GB") is a whole word of the GPU or pool type name, so
    L4 never matches an L40S nor A10 an A100. Vendor words in `wanted` are ignored."""
    want = [w for w in _words(wanted or "") if w not in _VENDOR_WORDS]
    have = set(_words(name))
    return all(w in have for w in want)


def fits_gb(request_gb: float | None, offered_gb: float | None) -> bool:
    """The memory comparison itself, both sides in marketed GB; no request fits anything."""
    if not request_gb:
        return True
    return offered_gb is not None and request_gb <= offered_gb


def gpu_fits(gpu_type: str | None, request_gb: float | None, name: str, memory_mib: int | None) -> bool:
    """Placement: one GPU a node reported (name, memory.total MiB) against a job's per-GPU ask."""
    return type_matches(gpu_type, name) and fits_gb(request_gb, marketed_gb(memory_mib, name))


def pool_gpu_gb(pool_type: str | None, memory_gb: float | None) -> float | None:
    """What one GPU of a pool offers, in marketed GB. A known card type caps the spec's memory_gb at
    the largest size that card comes in (its instances report what the card has, whatever the spec
    says) and supplies it when the spec leaves it out and the card comes in one size only."""
    sizes = {c.marketed_gb for c in CARDS if pool_type and type_matches(pool_type, c.smi_name)}
    if not sizes:
        return memory_gb
    if memory_gb is None:
        return sizes.pop() if len(sizes) == 1 else None
    return min(memory_gb, max(sizes))


def pool_shortfall(gpus: int, gpu_type: str | None, memory_gb: float | None, pool_gpu) -> str | None:
    """Pool growth (and a submit-time check): why no instance of a pool with this `gpu:` spec (type,
    count, memory_gb) could run a job asking `gpus` x `gpu_type` with `memory_gb` each; None if one could."""
    if gpus == 0:
        return None
    kind = f"{pool_gpu.count}x{pool_gpu.type or 'GPU'}"
    if gpus > pool_gpu.count:
        return f"{kind} per instance, {gpus} GPUs asked"
    if not type_matches(gpu_type, pool_gpu.type or ""):
        return f"{kind} per instance, {gpu_type} asked"
    offered = pool_gpu_gb(pool_gpu.type, pool_gpu.memory_gb)
    if not fits_gb(memory_gb, offered):
        have = f"{offered:g}GB" if offered is not None else "(memory unknown)"
        return f"{kind} {have} per instance, {memory_gb:g}GB asked"
    return None


def submit_shortfall(gpus: int, gpu_type: str | None, memory_gb: float | None, pool_gpu) -> str | None:
    """At submit time: `pool_shortfall`, with what the pool's `gpu:` spec leaves out (its type, its
    memory) read as "could be anything", so a job is refused only when the declared shape rules it out."""
    offered = pool_gpu_gb(pool_gpu.type, pool_gpu.memory_gb)
    return pool_shortfall(gpus, gpu_type if pool_gpu.type else None, memory_gb if offered is not None else None,
                          pool_gpu)
