"""fleet.yaml -> typed, validated spec (DESIGN section 9).

Called by the CLI (validate and every command taking -f) and by the reconcile pass. Every problem
is reported at once as "file:line field: words", unknown keys get a did-you-mean hint.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import (BaseModel, Field, PlainValidator, SerializeAsAny, ValidationError, ValidationInfo,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

import providers
# Re-exported: the CLI, the job spec and the reconcile pass import these from here.
from providers.schema import (NAME_RE, CloudPoolSpec, Duration, Endpoint, GpuSpec, Name, PoolSpec,  # noqa: F401
                              PositiveDuration, SshSettings, StrictModel, expand_path, parse_duration)

from .errors import ConfigError
from .wording import ours, with_input
from .statepath import default_fleet_path, default_state_path  # noqa: F401  (spec.default_fleet_path)
from .models import EVENT_KINDS, EVENT_SEVERITIES
from .yamlsrc import format_loc, line_of, load_with_lines

_Model = StrictModel   # the job spec's sections share it
# Names gridctl.spec exported when it listed the pool kinds itself; each now lives with its provider.
_MOVED = {"SshPool": "ssh", "LocalPool": "local", "AwsPool": "aws", "GcpPool": "gcp"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return providers.pool_model(_MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class HealthSettings(_Model):
    interval: PositiveDuration = 15.0
    concurrency: int = Field(64, ge=1, le=4096)
    probe_timeout: PositiveDuration = 15.0
    unhealthy_after: int = Field(2, ge=1)
    recover_after: int = Field(3, ge=1)
    stale_after: PositiveDuration = 60.0
    max_gpu_temp_c: float = 90.0
    min_disk_free_pct: float = Field(5.0, ge=0, le=100)
    lemon_after: int = Field(3, ge=1)          # failures of different jobs on one node ...
    lemon_window: PositiveDuration = 3600.0    # ... within this window make it a lemon


class RetentionSettings(_Model):
    """How long ended jobs (with their attempts and events) and events are kept; unset: forever.
    Every pass removes a batch of what is older (lifecycle.prune_store)."""

    jobs: Optional[PositiveDuration] = None
    events: Optional[PositiveDuration] = None
class AlertHook(_Model):
    """One alert hook (README "Alert hooks"): where a batch of events goes (a webhook POST or a
    command's stdin) and which events it takes. Delivered by gridctl.alerts after each pass."""

    webhook: Optional[str] = None
    command: Optional[list[str]] = None
    min_severity: str = "warning"
    kinds: Optional[list[str]] = None
    format: str = "json"
    timeout: PositiveDuration = 5.0            # one request or command run
    max_tries: int = Field(5, ge=1, le=100)    # then the delivery is `failed`
    backoff: Duration = 5.0                    # before the 2nd try; doubled per try, at most 5m

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, v: Optional[str]) -> Optional[str]:
        from urllib.parse import urlsplit
        parts = urlsplit(v or "")
        if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"[\s\x00-\x1f]", v or ""):
            scheme = f" (got scheme {parts.scheme!r})" if parts.scheme else ""
            raise ValueError(f"must be an http:// or https:// URL with a host{scheme}")
        return v

    @field_validator("command")
    @classmethod
    def _runnable(cls, v: Optional[list[str]], info: ValidationInfo) -> Optional[list[str]]:
        import shutil
        if v is None:
            return v
        if not v or not v[0]:
            raise ValueError("expected a non-empty list: [program, arg, ...]")
        if "/" not in v[0]:
            found = shutil.which(v[0])
            if found is None:
                raise ValueError(f"{v[0]!r} not found on PATH")
            return [found, *v[1:]]
        path = expand_path(v[0], info)
        if not path.is_file():
            raise ValueError(f"{v[0]}: no such file")
        if not os.access(path, os.X_OK):
            raise ValueError(f"{v[0]}: not executable")
        return [str(path), *v[1:]]

    @field_validator("min_severity")
    @classmethod
    def _severity(cls, v: str) -> str:
        if v not in EVENT_SEVERITIES:
            raise ValueError(f"must be one of {', '.join(EVENT_SEVERITIES)} (got {v!r})")
        return v

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v not in ("json", "slack"):
            raise ValueError(f"must be json or slack (got {v!r})")
        return v

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v == []:
            raise ValueError("an empty list takes no event; leave kinds out for every kind")
        for kind in v or []:
            if kind not in EVENT_KINDS:
                hint = difflib.get_close_matches(kind, EVENT_KINDS, n=1, cutoff=0.6)
                raise ValueError(f"unknown event kind {kind!r}" + (f" (did you mean {hint[0]!r}?)" if hint else
                                                                    f" (known: {', '.join(sorted(EVENT_KINDS))})"))
        return v

    @model_validator(mode="after")
    def _one_target(self):
        if (self.webhook is None) == (self.command is None):
            raise ValueError("give exactly one of webhook: URL or command: [program, ...]")
        return self


def _pool(value: Any, info: ValidationInfo) -> PoolSpec:
    """Validate one pool section with the model its `provider:` declares (providers/base.py)."""
    if not isinstance(value, dict):
        if isinstance(value, PoolSpec):
            return value
        raise PydanticCustomError("pool_not_mapping", "expected a mapping with name, provider, ...")
    name = value.get("provider")
    if name is None:
        raise PydanticCustomError("pool_provider", "missing (known: {known})", {"known": ", ".join(providers.names())})
    try:
        model = providers.pool_model(str(name))
    except providers.ProviderUnavailable as e:
        raise PydanticCustomError("pool_provider", "{why}", {"why": str(e)}) from None
    return model.model_validate(value, context=info.context)


Pool = Annotated[SerializeAsAny[PoolSpec], PlainValidator(_pool)]


class Fleet(_Model):
    fleet: Name
    state: Optional[Path] = None
    ssh: SshSettings = SshSettings()
    health: HealthSettings = HealthSettings()
    retention: RetentionSettings = RetentionSettings()
    pools: list[Pool] = Field(min_length=1)
    alerts: list[AlertHook] = []

    @field_validator("state", mode="before")
    @classmethod
    def _state_path(cls, v: Any, info: ValidationInfo) -> Any:
        return None if v is None else expand_path(str(v), info)

    @model_validator(mode="after")
    def _fallbacks_exist(self):
        names = {p.name for p in self.pools}
        for pool in self.pools:
            missing = [f for f in getattr(pool, "fallback", []) if f not in names or f == pool.name]
            if missing:
                raise ValueError(f"pool {pool.name}: fallback {', '.join(missing)} is not another pool of this fleet "
                                 f"(pools: {', '.join(sorted(names))})")
        return self

    @model_validator(mode="after")
    def _unique_names(self):
        pools, nodes = set(), set()
        for pool in self.pools:
            if pool.name in pools:
                raise ValueError(f"pool name {pool.name!r} is used twice")
            pools.add(pool.name)
            for node in getattr(pool, "nodes", []):
                if node.name in nodes:
                    raise ValueError(f"node name {node.name!r} is used twice")
                nodes.add(node.name)
        return self

    def node_count(self) -> int:
        """Nodes the spec names or asks for (static nodes, local count, cloud min, ...)."""
        return sum(pool.planned_nodes() for pool in self.pools)

    def pool(self, name: str):
        return next(p for p in self.pools if p.name == name)


def load_fleet(path: str | os.PathLike) -> Fleet:
    """Read and validate a fleet file. Raises ConfigError listing every problem with file:line."""
    path = Path(path)
    data, lines = load_with_lines(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping with fleet, pools, ... at the top level")
    duplicates = _duplicate_names(data)
    if duplicates:
        raise ConfigError([f"{path}:{line_of(lines, loc)} {format_loc(loc)}: {what}" for loc, what in duplicates])
    try:
        return Fleet.model_validate(data, context={"base": path.parent.resolve()})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc, message = _describe(err, data)
            line = line_of(lines, loc)
            problems.append(f"{path}:{line} {format_loc(loc)}: {message}" if line else f"{path} {format_loc(loc)}: {message}")
        raise ConfigError(sorted(set(problems), key=_line_key)) from None


def _duplicate_names(data: dict) -> list[tuple[tuple, str]]:
    """Pool names, and node names across the fleet, must be unique: point at the second use."""
    out: list[tuple[tuple, str]] = []
    pools = data.get("pools") if isinstance(data.get("pools"), list) else []
    seen_pools: dict[str, int] = {}
    seen_nodes: dict[str, tuple] = {}
    for i, pool in enumerate(pools):
        if not isinstance(pool, dict):
            continue
        name = pool.get("name")
        if isinstance(name, str):
            if name in seen_pools:
                out.append((("pools", i, "name"), f"pool name {name!r} is already used by pools[{seen_pools[name]}]"))
            seen_pools.setdefault(name, i)
        for j, node in enumerate(pool.get("nodes") if isinstance(pool.get("nodes"), list) else []):
            node_name = node.get("name") if isinstance(node, dict) else None
            if isinstance(node_name, str):
                if node_name in seen_nodes:
                    out.append((("pools", i, "nodes", j, "name"),
                                f"node name {node_name!r} is already used by {format_loc(seen_nodes[node_name])}"))
                seen_nodes.setdefault(node_name, ("pools", i, "nodes", j))
    return out


def _line_key(problem: str) -> tuple:
    m = re.search(r":(\d+) ", problem)
    return (int(m.group(1)) if m else 0, problem)


def _describe(err: dict, data: Any, root: Any = None) -> tuple[tuple, str]:
    """pydantic error -> (location in the user's file, one human sentence)."""
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _allowed_keys(loc[:-1], data, root or Fleet)
        hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        return loc, f"unknown key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(sorted(allowed))})")
    if kind == "pool_provider":
        return loc + ("provider",), err["msg"]
    if kind == "missing":
        return loc, "required field is missing"
    return loc, with_input(kind, ours(err["msg"]), err.get("input"))


def _dig(data: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _allowed_keys(loc: tuple, data: Any, root: Any = None) -> list[str]:
    model: Any = root or Fleet
    for i, part in enumerate(loc):
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = _inner_model(field.annotation, _dig(data, loc[: i + 2]))
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _inner_model(annotation: Any, item: Any) -> Any:
    """Unwrap Optional/list/Annotated to the model class; pick a pool model by its provider."""
    if annotation is Pool:
        try:
            return providers.pool_model(item.get("provider"))
        except (AttributeError, TypeError, providers.ProviderUnavailable):
            return PoolSpec
    for arg in typing.get_args(annotation) or ():
        found = _inner_model(arg, item)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def state_path(fleet: Fleet) -> Path:
    """`state:` in the spec, else $XDG_STATE_HOME/gridctl/<fleet>.db."""
    return fleet.state if fleet.state is not None else default_state_path(fleet.fleet)
