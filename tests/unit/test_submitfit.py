"""Submit-time fit (`run` refuses what no pool could ever run) and `run --dry-run`'s placement,
both through gpufit's one rule.

Guards against: a job pending forever that could never run anywhere, a refusal of a job a pool
that does not declare its GPUs might run, and a dry run that disagrees with the pass.
"""

from __future__ import annotations

import pytest

from gridctl.jobspec import JobSpec
from gridctl.models import Attempt, AttemptState, NodeRecord, NodeState
from gridctl.placement import Gpu
from gridctl.spec import Fleet
from gridctl.submitfit import Where, refusal, where_now

L4 = {"type": "L4", "count": 1, "memory_gb": 24}
H100x8 = {"type": "H100", "count": 8, "memory_gb": 80}


def fleet(*gpus: dict | None, cloud_max: int = 0) -> Fleet:
    pools = []
    for i, gpu in enumerate(gpus):
        pool = {"name": f"p{i}", "provider": "ssh", "nodes": [{"name": f"n{i}", "host": f"n{i}.example"}]}
        if gpu is not None:
            pool["gpu"] = gpu
        pools.append(pool)
    if cloud_max:
        pools.append({"name": "cloud", "provider": "aws", "region": "us-east-1", "instance_type": "g6.xlarge",
                      "image": "ami-1", "gpu": L4, "min": 0, "max": cloud_max})
    return Fleet.model_validate({"fleet": "f", "pools": pools})


def job(**kw) -> JobSpec:
    return JobSpec.model_validate({"name": "train", "class": "batch", "command": "python train.py", **kw})


@pytest.mark.parametrize("pools, ask, why", [
    ((L4,), {"gpus": 2}, "job train: no pool of this fleet could ever fit 2xGPU (pool p0: 1xL4 per instance, "
                         "2 GPUs asked)"),
    ((L4, H100x8), {"gpus": 8, "gpu_type": "L4"}, "job train: no pool of this fleet could ever fit 8xL4 (pool p0: "
                                                   "1xL4 per instance, 8 GPUs asked; pool p1: 8xH100 per instance, "
                                                   "L4 asked)"),
    ((L4,), {"gpu_type": "L4", "gpu_memory_gb": 48}, "job train: no pool of this fleet could ever fit 1xL4-48GB "
                                                     "(pool p0: 1xL4 24GB per instance, 48GB asked)"),
    ((L4, H100x8), {"gpus": 8, "pool": "p0"}, "job train: no pool of this fleet could ever fit 8xGPU in pool p0 "
                                              "(pool p0: 1xL4 per instance, 8 GPUs asked)"),
    ((L4, H100x8), {"gpus": 8}, None),                                   # p1 could
    ((L4, None), {"gpus": 8, "gpu_type": "B200"}, None),                 # p1 does not say its GPUs: it might
    (({"count": 8},), {"gpus": 8, "gpu_type": "H100", "gpu_memory_gb": 80}, None),   # type, memory unsaid
    (({"type": "H100", "count": 8},), {"gpus": 8, "gpu_memory_gb": 80}, None),       # H100 comes in 80GB
    ((L4,), {"gpus": 0}, None),
])
def test_refusal(pools, ask, why):
    assert refusal(fleet(*pools), job(**ask)) == why


def ready(name: str, pool: str = "p0", **kw) -> NodeRecord:
    return NodeRecord(name=name, pool=pool, provider="ssh", host=f"{name}.example", port=22, state=NodeState.READY,
                      health="healthy", **kw)


def l4s(node: str, n: int) -> tuple[Gpu, ...]:
    return tuple(Gpu(f"GPU-{node}-{i}", i, "NVIDIA L4", 23034) for i in range(n))


def test_dry_run_places_replicas_as_the_pass_would_then_grows_a_pool_then_says_why():
    f = fleet({"type": "L4", "count": 2, "memory_gb": 24}, cloud_max=1)
    nodes = {"n0": ready("n0"), "n1": ready("n1", cordoned=True)}
    busy = Attempt(id="other.1", job="other", n=1, replica=0, node="n0", state=AttemptState.RUNNING,
                   gpus=("GPU-n0-0",), created_at=1.0)
    got = where_now(f, job(gpus=1, gpu_type="L4", replicas=3, **{"class": "service"}), nodes,
                    {"n0": l4s("n0", 2), "n1": l4s("n1", 2)}, [busy])
    assert got[0] == Where(0, node="n0", gpus=(1,))
    assert (got[1].pool, got[1].node) == ("cloud", None)
    assert got[1].why == "no node fits 1xL4: n0 has 0 free GPUs, n1 cordoned"
    assert got[2] == Where(2, why="no node fits 1xL4: n0 has 0 free GPUs, n1 cordoned")   # cloud max reached
