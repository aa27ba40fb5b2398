"""The error tree and exit codes. Raised by every layer; mapped to messages once, in the CLI."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class GridctlError(Exception):
    """Base of every error a user may see. The message is one line, meant for a person."""

    exit_code = EXIT_FAILED


class ConfigError(GridctlError):
    """A fleet or job spec, a flag or a path is wrong. Carries every problem found, not just the first."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class StoreError(GridctlError):
    """The state database cannot be opened, is newer than this code, or is damaged."""


class NotFoundError(GridctlError):
    """A node, job or other named object does not exist."""


class TransportError(GridctlError):
    """Running a command on a node failed. Subclasses say how, so health can classify it."""


class Unreachable(TransportError):
    """The node could not be reached (refused, timed out, no banner, DNS). Silence, not evidence."""


class AuthFailed(TransportError):
    """The node answered but refused our credentials: a configuration problem, alerted, no node action."""


class HostKeyChanged(TransportError):
    """The node presented a host key that differs from the pinned one. Never accepted; may be an attack."""


class HostKeyUnknown(TransportError):
    """Strict host key policy and the node's key is not in known_hosts."""


class ProbeTimeout(TransportError):
    """Connected, but the command did not finish before the client-side deadline (wedged driver symptom)."""
