"""A third-party provider as a plugin author would write one: `provider: toy`.

Installed only by tests/toyprovider (its dist-info beside it declares the `gridctl.providers`
entry point), so the real importlib.metadata lookup finds it. Its pool section brings its own
fields and checks; gridctl's spec knows nothing about them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from providers.base import Instance, InstanceState, Provider
from providers.schema import PoolSpec


class ToyPool(PoolSpec):
    provider: Literal["toy"]
    flavour: Literal["vanilla", "mint"] = "vanilla"
    machines: int = Field(1, ge=1, le=8)

    def planned_nodes(self) -> int:
        return self.machines


class ToyProvider(Provider):
    name = "toy"
    pool_model = ToyPool

    def list_instances(self) -> dict[str, Instance]:
        """Contract: providers.base.Provider. Toy machines always run at toy.invalid."""
        return {f"{self.pool.name}-{i}": Instance(id=f"{self.pool.name}-{i}", provider=self.name, pool=self.pool.name,
                                                  state=InstanceState.RUNNING, host="toy.invalid")
                for i in range(self.pool.machines)}
