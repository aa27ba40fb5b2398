"""`provider: ssh`: nodes listed in the spec. Contract: providers/base.py. No CREATE feature."""

from __future__ import annotations

from .base import Instance, InstanceState, Provider


class StaticProvider(Provider):
    name = "ssh"

    def list_instances(self) -> dict[str, Instance]:
        """The spec's nodes, always `running`: whether they answer is the probe's business."""
        return {
            n.name: Instance(id=n.name, provider=self.name, pool=self.pool.name, state=InstanceState.RUNNING,
                             host=n.host, port=n.port, user=n.user)
            for n in self.pool.nodes
        }
