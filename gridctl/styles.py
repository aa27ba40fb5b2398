"""The one colour map for states, health and event severities, shared by the watch screen
(screen.py) and every table the CLI prints (cli/render.py). Plain rich style names; no I/O."""

from __future__ import annotations

NODE_STATE = {"ready": "green", "suspect": "yellow", "quarantined": "red", "provisioning": "cyan",
              "terminating": "magenta", "terminated": "grey50", "cordoned": "grey50"}
HEALTH = {"healthy": "green", "degraded": "yellow", "unhealthy": "red", "unreachable": "red", "unknown": "grey50"}
JOB_STATE = {"running": "green", "pending": "yellow", "succeeded": "cyan", "failed": "red", "cancelled": "grey50"}
ATTEMPT_STATE = {"running": "green", "starting": "cyan", "silent": "yellow", "exited": "grey50", "lost": "red",
                 "hung": "red", "killed": "grey50", "failed_to_start": "red"}
SEVERITY = {"alert": "bold red", "warning": "yellow"}

# the GPU column of every node table (nodes, probe, watch): one meaning, named in its header
GPUS_HEADER = "GPUS SEEN/EXP"   # GPUs the last probe saw / GPUs the pool spec expects
