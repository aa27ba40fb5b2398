"""`provider: ssh`: nodes listed in the spec. Contract: providers/base.py. No CREATE feature."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator

from .base import Instance, InstanceState, Provider
from .schema import Name, PoolSpec, StrictModel, check_jump, check_user, existing_key_file

HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:_-]{0,252}\Z")


class StaticNode(StrictModel):
    name: Name
    host: str
    port: Optional[int] = Field(None, ge=1, le=65535)
    user: Optional[str] = None
    key: Optional[Path] = None
    proxy_jump: Optional[str] = None

    @field_validator("host")
    @classmethod
    def _host_ok(cls, v: str) -> str:
        if not HOST_RE.match(v):
            raise ValueError(f"invalid host {v!r}")
        return v

    _key_exists = field_validator("key", mode="before")(existing_key_file)
    _user_ok = field_validator("user")(check_user)
    _jump_ok = field_validator("proxy_jump")(check_jump)


class SshPool(PoolSpec):
    provider: Literal["ssh"]
    nodes: list[StaticNode] = Field(min_length=1)

    def planned_nodes(self) -> int:
        return len(self.nodes)


class StaticProvider(Provider):
    name = "ssh"
    pool_model = SshPool

    def list_instances(self) -> dict[str, Instance]:
        """The spec's nodes, always `running`: whether they answer is the probe's business."""
        return {
            n.name: Instance(id=n.name, provider=self.name, pool=self.pool.name, state=InstanceState.RUNNING,
                             host=n.host, port=n.port, user=n.user)
            for n in self.pool.nodes
        }
