"""job.yaml / `gridctl run` flags -> a validated JobSpec (DESIGN sections 5 and 9).

Called by `gridctl run`; the reconcile pass reads the spec back from the store as a dict and
rebuilds it with JobSpec.model_validate. Errors name the file, line and field like fleet specs.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from .errors import ConfigError
from .launcher import LOG_MAX_BYTES, RETENTION_S
from .spec import Duration, Name, PositiveDuration, _describe, _Model, _line_key
from .yamlsrc import format_loc, line_of, load_with_lines

CLASSES = ("service", "batch", "training", "manual")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
RESERVED_ENV = ("CUDA_VISIBLE_DEVICES", "GRIDCTL_JOB", "GRIDCTL_ATTEMPT", "GRIDCTL_HEARTBEAT",
                "GRIDCTL_RESTART_COUNT", "GRIDCTL_REPLICA", "GRIDCTL_CHECKPOINT_DIR", "GRIDCTL_PORT", "GRIDCTL_HOST")


class Recovery(_Model):
    """Per-job recovery knobs; unset values take the class defaults (recovery.defaults)."""

    max_restarts: Optional[int] = Field(None, ge=0)       # requeues after node failures
    retries: Optional[int] = Field(None, ge=0)            # re-runs after the process failed (batch)
    backoff: Optional[Duration] = None                    # first delay; doubles per failure, capped
    max_backoff: Optional[PositiveDuration] = None
    hang_timeout: Optional[PositiveDuration] = None       # no heartbeat this long: hung (off when unset)
    unreachable_grace: Optional[Duration] = None          # silent node: wait before requeue (batch/training)
    infra_exit_codes: list[int] = []                      # exit codes that mean "the node failed"
    max_duration: Optional[PositiveDuration] = None
    pending_timeout: Optional[PositiveDuration] = None

    @field_validator("infra_exit_codes")
    @classmethod
    def _codes(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if not 1 <= c <= 255]
        if bad:
            raise ValueError(f"exit codes are 1..255; got {bad}")
        return v


class Readiness(_Model):
    """How the controller tells that a service replica serves (DESIGN section 11): an HTTP GET
    answering 2xx, or a TCP connect; checked every pass, and by routers as they route."""

    http: Optional[str] = None                            # a path, GET, 2xx = ready
    tcp: bool = False                                     # the port accepts a connection
    period: PositiveDuration = 2.0
    timeout: PositiveDuration = 1.0
    failure_threshold: int = Field(3, ge=1, le=100)       # failed checks in a row, once ready -> not ready
    ready_timeout: Optional[PositiveDuration] = None      # never ready this long after start: restarted

    @field_validator("http")
    @classmethod
    def _path(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (not v.startswith("/") or any(c.isspace() or not c.isprintable() for c in v)):
            raise ValueError("expected a path such as /health (starts with /, no spaces)")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> "Readiness":
        if bool(self.http) == bool(self.tcp):
            raise ValueError("give one of http: /path or tcp: true")
        return self


class JobSpec(_Model):
    name: Name
    class_: Literal["service", "batch", "training", "manual"] = Field("service", alias="class")
    command: Union[str, list[str]]
    replicas: int = Field(1, ge=1, le=1000)
    gpus: int = Field(1, ge=0, le=64)
    gpu_type: Optional[str] = None
    gpu_memory_gb: Optional[float] = Field(None, gt=0)
    pool: Optional[str] = None
    spread: Optional[bool] = None                         # default: true for services with replicas > 1
    env: dict[str, str] = {}
    work_dir: Optional[str] = None                        # the process's cwd on the node (default: its attempt dir)
    checkpoint_dir: Optional[str] = None                  # training: passed as GRIDCTL_CHECKPOINT_DIR
    port: Union[Literal["auto"], int, None] = None        # service: GRIDCTL_PORT on its node; auto = a free one
    readiness: Optional[Readiness] = None
    recovery: Recovery = Recovery()
    log_max_bytes: int = Field(LOG_MAX_BYTES, ge=65536)  # per stream and attempt; past it the newest half is kept
    retention: PositiveDuration = float(RETENTION_S)      # an ended attempt's dir stays this long on the node

    model_config = _Model.model_config | {"populate_by_name": True}

    @field_validator("command")
    @classmethod
    def _command(cls, v: Union[str, list[str]]) -> Union[str, list[str]]:
        if isinstance(v, str) and not v.strip() or isinstance(v, list) and not v:
            raise ValueError("command is empty")
        if "\0" in (v if isinstance(v, str) else "".join(v)):
            raise ValueError("command contains a NUL byte")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: Any) -> Any:
        if isinstance(v, dict):
            out = {}
            for key, value in v.items():
                if not isinstance(key, str) or not ENV_KEY_RE.match(key):
                    raise ValueError(f"invalid environment variable name {key!r}")
                if key in RESERVED_ENV:
                    raise ValueError(f"{key} is set by gridctl")
                if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
                    raise ValueError(f"env {key}: expected a string or number")
                value = str(value)
                if "\0" in value:
                    raise ValueError(f"env {key}: contains a NUL byte")
                out[key] = value
            return out
        return v

    @field_validator("replicas")
    @classmethod
    def _replicas_only_for_services(cls, v: int, info: ValidationInfo) -> int:
        job_class = info.data.get("class_", "service")
        if v > 1 and job_class != "service":
            raise ValueError(f"only service jobs have replicas (this is a {job_class} job)")
        return v

    @field_validator("checkpoint_dir")
    @classmethod
    def _checkpoint_only_for_training(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        if v and info.data.get("class_", "service") != "training":
            raise ValueError("only training jobs take a checkpoint dir")
        return v

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return v
        if info.data.get("class_", "service") != "service":
            raise ValueError("only service jobs have a port")
        if isinstance(v, bool) or not (v == "auto" or isinstance(v, int) or isinstance(v, str) and v.isdigit()):
            raise ValueError("expected a port number (1-65535) or auto")
        if v != "auto" and not 1 <= int(v) <= 65535:
            raise ValueError(f"port {v} is out of range: ports are 1-65535 (or auto)")
        return v if v == "auto" else int(v)

    @field_validator("readiness")
    @classmethod
    def _readiness_only_for_services(cls, v: Optional[Readiness], info: ValidationInfo) -> Optional[Readiness]:
        if v is not None and info.data.get("class_", "service") != "service":
            raise ValueError(f"only service jobs have readiness (this is a {info.data.get('class_')} job)")
        if v is not None and info.data.get("port") is None:
            raise ValueError("readiness needs a port: set port: auto or a number")
        return v

    @property
    def job_class(self) -> str:
        return self.class_

    @property
    def shell_command(self) -> str:
        """The command as one sh string: a list is quoted word by word, a string runs as written."""
        return self.command if isinstance(self.command, str) else shlex.join(self.command)

    @property
    def spreads(self) -> bool:
        return self.spread if self.spread is not None else (self.class_ == "service" and self.replicas > 1)

    def to_store(self) -> dict:
        return self.model_dump(by_alias=True, exclude_defaults=False, mode="json")


def load_job(path: str | os.PathLike) -> JobSpec:
    path = Path(path)
    data, lines = load_with_lines(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping with name, command, ... at the top level")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc, message = _describe(err, data, JobSpec)
            loc = tuple("class" if p == "class_" else p for p in loc)
            line = line_of(lines, loc)
            problems.append(f"{path}:{line} {format_loc(loc)}: {message}" if line else f"{path} {format_loc(loc)}: {message}")
        raise ConfigError(sorted(set(problems), key=_line_key)) from None


def job_from_flags(data: dict) -> JobSpec:
    """`gridctl run --name ... -- CMD`: the same validation, errors named by flag."""
    try:
        return JobSpec.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc, message = _describe(err, data, JobSpec)
            field = "--" + str(loc[0]).rstrip("_").replace("_", "-") if loc else "job"
            rest = format_loc(loc[1:]) if len(loc) > 1 else ""
            problems.append(f"{field}{' ' + rest if rest else ''}: {message}")
        raise ConfigError(sorted(set(problems))) from None


def spec_from_store(data: dict) -> JobSpec:
    return JobSpec.model_validate(data)
