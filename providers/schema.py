"""The parts of a pool's fleet.yaml section every provider shares. Imports nothing from gridctl.

Each provider declares its own pool model (`Provider.pool_model`, providers/base.py), a subclass
of `PoolSpec`, or of `CloudPoolSpec` when it creates machines; gridctl.spec picks the model by the
pool's `provider:` and reports its errors as file:line field. The value types here (durations,
names, URLs, SSH settings) are gridctl.spec's too, so a plugin's pool reads like the rest.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\Z")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}


MAX_DURATION_S = 365 * 86400.0     # the longest duration any setting takes


def parse_duration(value: Any) -> float:
    """"15s", "2m", "1h", "500ms" or a bare number of seconds -> seconds (float), at most 365 days."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 15s, 2m, 1h; got {value!r}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"duration {value!r} is longer than the 365d any setting takes") from None
    else:
        m = _DURATION_RE.match(str(value))
        if not m:
            raise ValueError(f"expected a duration like 15s, 2m, 1h; got {value!r}")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite duration like 15s, 2m, 1h; got {value!r}")
    if seconds < 0:
        raise ValueError("duration must not be negative")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"duration {value!r} is longer than the 365d any setting takes")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


def _check_name(value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"invalid name {value!r}: use lower-case letters, digits, '.', '_' and '-' "
                         "(start with a letter or digit, at most 63 characters)")
    return value


Name = Annotated[str, BeforeValidator(_check_name)]


def _check_endpoint(value: Optional[str]) -> Optional[str]:
    if value is not None and not re.match(r"^https?://[^\s/]+(/\S*)?\Z", value):
        raise ValueError(f"expected a URL like https://host:port, got {value!r}")
    return value


Endpoint = Annotated[Optional[str], BeforeValidator(_check_endpoint)]


class StrictModel(BaseModel):
    """A spec section: unknown keys are errors (with a did-you-mean), values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def expand_path(path: str, info: ValidationInfo) -> Path:
    """~ and $VARS expanded; a relative path is relative to the spec file (context "base")."""
    p = Path(os.path.expanduser(os.path.expandvars(path)))
    base = (info.context or {}).get("base")
    return p if p.is_absolute() or base is None else Path(base) / p


def existing_key_file(value: Any, info: ValidationInfo) -> Any:
    """Validator for an SSH key path: it must name a file."""
    if value is None:
        return value
    p = expand_path(str(value), info)
    if not p.is_file():
        raise ValueError(f"key file not found: {value}")
    return p


class SshSettings(StrictModel):
    """SSH options; unset fields fall back to the level above, then ~/.ssh/config, then defaults."""

    user: Optional[str] = None
    port: Optional[int] = Field(None, ge=1, le=65535)
    key: Optional[Path] = None
    host_key_policy: Optional[Literal["accept-new", "strict"]] = None
    known_hosts: Optional[Path] = None
    work_dir: Optional[str] = None
    proxy_jump: Optional[str] = None
    connect_timeout: Optional[PositiveDuration] = None

    _key_exists = field_validator("key", mode="before")(existing_key_file)

    @field_validator("known_hosts", mode="before")
    @classmethod
    def _known_hosts_path(cls, v: Any, info: ValidationInfo) -> Any:
        return None if v is None else expand_path(str(v), info)

    @field_validator("user")
    @classmethod
    def _user_ok(cls, v: Optional[str]) -> Optional[str]:
        return check_user(v)

    @field_validator("proxy_jump")
    @classmethod
    def _jump_ok(cls, v: Optional[str]) -> Optional[str]:
        return check_jump(v)


USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}\Z")
JUMP_RE = re.compile(r"^[A-Za-z0-9_.@:\[\]-]+(,[A-Za-z0-9_.@:\[\]-]+)*\Z")


def check_user(v: Optional[str]) -> Optional[str]:
    """A login name: letters, digits, . _ - (no spaces or newlines: it reaches messages and ssh)."""
    if v is not None and not USER_RE.match(v):
        raise ValueError(f"invalid user name {v[:40]!r}: use letters, digits, '.', '_' and '-' (at most 32)")
    return v


def check_jump(v: Optional[str]) -> Optional[str]:
    """A ProxyJump chain: [user@]host[:port] hops separated by commas."""
    if v is not None and v.lower() != "none" and not JUMP_RE.match(v):
        raise ValueError(f"invalid proxy_jump {v[:60]!r}: expected [user@]host[:port] hops separated by commas")
    return v


class GpuSpec(StrictModel):
    """The GPUs each node of a pool should have: what probes are checked against."""

    type: Optional[str] = None
    count: int = Field(1, ge=0, le=64)
    memory_gb: Optional[float] = Field(None, gt=0)


class PoolSpec(StrictModel):
    """What every pool section has. A provider's model narrows `provider` to its own name
    (`provider: Literal["toy"]`) and adds its fields."""

    name: Name
    provider: str
    gpu: GpuSpec = GpuSpec()
    ssh: SshSettings = SshSettings()

    def planned_nodes(self) -> int:
        """Nodes this pool names or asks for (shown by `gridctl validate`)."""
        return 0


class CloudPoolSpec(PoolSpec):
    """A pool whose provider creates machines (Feature.CREATE): the pool planner reads these."""

    min: int = Field(0, ge=0)
    max: int = Field(1, ge=0)
    spot: bool = False
    address: Literal["public", "private"] = "public"   # public IP when the instance has one, else private
    launch_timeout: PositiveDuration = 600.0   # launch until the node answers a probe; then replaced
    idle_timeout: Optional[PositiveDuration] = None   # instances above `min` idle this long go; None: never
    replace: bool = True                # replace preempted / quarantined instances with new ones
    keep_for_triage: bool = False       # stop a quarantined instance (tag gridctl-triage=true), not delete it
    fallback: list[Name] = []           # pools to ask, in order, when this one has no capacity
    launch_rate: int = Field(10, ge=1)  # most instances launched per minute in this pool

    @field_validator("fallback", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else ([] if v is None else v)

    @model_validator(mode="after")
    def _min_le_max(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self

    def planned_nodes(self) -> int:
        return self.min
