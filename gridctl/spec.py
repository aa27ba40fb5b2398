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
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag,
                      ValidationError, ValidationInfo, field_validator, model_validator)

from .errors import ConfigError
from .yamlsrc import format_loc, line_of, load_with_lines

KNOWN_PROVIDERS = ("ssh", "local", "aws", "gcp")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\Z")
HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:_-]{0,252}\Z")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float:
    """"15s", "2m", "1h", "500ms" or a bare number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 15s, 2m, 1h; got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION_RE.match(str(value))
        if not m:
            raise ValueError(f"expected a duration like 15s, 2m, 1h; got {value!r}")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds < 0:
        raise ValueError("duration must not be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


def _check_name(value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"invalid name {value!r}: use lower-case letters, digits, '.', '_' and '-' "
                         "(start with a letter or digit, at most 63 characters)")
    return value


Name = Annotated[str, BeforeValidator(_check_name)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _expand(path: str, info: ValidationInfo) -> Path:
    p = Path(os.path.expanduser(os.path.expandvars(path)))
    base = (info.context or {}).get("base")
    return p if p.is_absolute() or base is None else Path(base) / p


class SshSettings(_Model):
    """SSH options; unset fields fall back to the level above, then ~/.ssh/config, then defaults."""

    user: Optional[str] = None
    port: Optional[int] = Field(None, ge=1, le=65535)
    key: Optional[Path] = None
    host_key_policy: Optional[Literal["accept-new", "strict"]] = None
    known_hosts: Optional[Path] = None
    work_dir: Optional[str] = None
    proxy_jump: Optional[str] = None
    connect_timeout: Optional[PositiveDuration] = None

    @field_validator("key", mode="before")
    @classmethod
    def _key_exists(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return v
        p = _expand(str(v), info)
        if not p.is_file():
            raise ValueError(f"key file not found: {v}")
        return p

    @field_validator("known_hosts", mode="before")
    @classmethod
    def _known_hosts_path(cls, v: Any, info: ValidationInfo) -> Any:
        return None if v is None else _expand(str(v), info)

    @field_validator("user")
    @classmethod
    def _user_ok(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.match(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}$", v):
            raise ValueError(f"invalid user name {v!r}")
        return v


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


class GpuSpec(_Model):
    type: Optional[str] = None
    count: int = Field(1, ge=0, le=64)
    memory_gb: Optional[float] = Field(None, gt=0)


class StaticNode(_Model):
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

    _key_exists = field_validator("key", mode="before")(SshSettings._key_exists.__func__)


class _PoolBase(_Model):
    name: Name
    gpu: GpuSpec = GpuSpec()
    ssh: SshSettings = SshSettings()


class SshPool(_PoolBase):
    provider: Literal["ssh"]
    nodes: list[StaticNode] = Field(min_length=1)


class LocalPool(_PoolBase):
    provider: Literal["local"]
    count: int = Field(1, ge=1, le=10000)
    dir: Optional[Path] = None   # where simulated nodes live; default beside the state file

    @field_validator("dir", mode="before")
    @classmethod
    def _dir_path(cls, v: Any, info: ValidationInfo) -> Any:
        return None if v is None else _expand(str(v), info)


def _check_endpoint(value: Optional[str]) -> Optional[str]:
    if value is not None and not re.match(r"^https?://[^\s/]+(/\S*)?\Z", value):
        raise ValueError(f"expected a URL like https://host:port, got {value!r}")
    return value


Endpoint = Annotated[Optional[str], BeforeValidator(_check_endpoint)]


class _CloudPool(_PoolBase):
    min: int = Field(0, ge=0)
    max: int = Field(1, ge=0)
    spot: bool = False
    address: Literal["public", "private"] = "public"   # public IP when the instance has one, else private
    launch_timeout: PositiveDuration = 600.0   # launch until the node answers a probe; then replaced
    idle_timeout: Optional[PositiveDuration] = None   # instances above `min` idle this long go; None: never
    replace: bool = True                # replace preempted / quarantined instances with new ones
    keep_for_triage: bool = False       # stop a quarantined instance (tag gridctl-triage=true), not delete it
    fallback: list[Name] = []           # pools to ask, in order, when this one has no capacity

    @field_validator("fallback", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else ([] if v is None else v)
    launch_rate: int = Field(10, ge=1)  # most instances launched per minute in this pool

    @model_validator(mode="after")
    def _min_le_max(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class AwsPool(_CloudPool):
    provider: Literal["aws"]
    region: str
    instance_type: str
    image: str
    subnet: Optional[str] = None
    security_groups: list[str] = []
    key_name: Optional[str] = None
    root_volume_gb: Optional[int] = Field(None, ge=8)
    tags: dict[str, str] = {}
    endpoint_url: Endpoint = None       # EC2 endpoint; else $AWS_ENDPOINT_URL, else AWS's own
    metadata_endpoint: Endpoint = "http://169.254.169.254"   # IMDS as the nodes see it (spot notices)


class GcpPool(_CloudPool):
    provider: Literal["gcp"]
    project: str
    zone: str
    machine_type: str
    image: str
    accelerators: dict[str, int] = {}
    network: Optional[str] = None
    labels: dict[str, str] = {}
    boot_disk_gb: Optional[int] = Field(None, ge=10)
    api_endpoint: Endpoint = None       # Compute API endpoint; else $GRIDCTL_GCE_ENDPOINT, else Google's own
    metadata_endpoint: Endpoint = "http://metadata.google.internal"   # as the nodes see it (preemption notices)


def _pool_tag(v: Any) -> Optional[str]:
    provider = v.get("provider") if isinstance(v, dict) else getattr(v, "provider", None)
    return provider if provider in KNOWN_PROVIDERS else None


Pool = Annotated[
    Union[Annotated[SshPool, Tag("ssh")], Annotated[LocalPool, Tag("local")],
          Annotated[AwsPool, Tag("aws")], Annotated[GcpPool, Tag("gcp")]],
    Discriminator(_pool_tag),
]
_POOL_MODELS = {"ssh": SshPool, "local": LocalPool, "aws": AwsPool, "gcp": GcpPool}


class Fleet(_Model):
    fleet: Name
    state: Optional[Path] = None
    ssh: SshSettings = SshSettings()
    health: HealthSettings = HealthSettings()
    pools: list[Pool] = Field(min_length=1)

    @field_validator("state", mode="before")
    @classmethod
    def _state_path(cls, v: Any, info: ValidationInfo) -> Any:
        return None if v is None else _expand(str(v), info)

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
        """Nodes the spec names or asks for (static nodes, local count, cloud min)."""
        total = 0
        for pool in self.pools:
            total += len(pool.nodes) if isinstance(pool, SshPool) else getattr(pool, "count", None) or pool.min
        return total

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
    loc = tuple(p for i, p in enumerate(err["loc"]) if not (i == 2 and err["loc"][0] == "pools" and p in _POOL_MODELS))
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _allowed_keys(loc[:-1], data, root or Fleet)
        hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        return loc, f"unknown key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(sorted(allowed))})")
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        got = _dig(data, loc + ("provider",))
        if got is None:
            return loc + ("provider",), f"missing (known: {', '.join(KNOWN_PROVIDERS)})"
        return loc + ("provider",), f"unknown provider '{got}' (known: {', '.join(KNOWN_PROVIDERS)})"
    if kind == "missing":
        return loc, "required field is missing"
    message = err["msg"]
    message = re.sub(r"^(Value error|Assertion failed), ", "", message)
    return loc, message


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
    if annotation is Pool or typing.get_origin(annotation) is Annotated and annotation.__metadata__ and \
            isinstance(annotation.__metadata__[-1], Discriminator):
        return _POOL_MODELS.get(_pool_tag(item) or "", _PoolBase)
    for arg in typing.get_args(annotation) or ():
        found = _inner_model(arg, item)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def default_fleet_path() -> Path:
    """-f/--fleet, else $GRIDCTL_FLEET, else ./fleet.yaml (DESIGN section 8)."""
    return Path(os.environ.get("GRIDCTL_FLEET") or "fleet.yaml")


def state_path(fleet: Fleet) -> Path:
    """`state:` in the spec, else $XDG_STATE_HOME/gridctl/<fleet>.db."""
    if fleet.state is not None:
        return fleet.state
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "gridctl" / f"{fleet.fleet}.db"
