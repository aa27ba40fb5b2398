"""Host key trust: gridctl's own known_hosts (pinned on first sight under accept-new) plus the
user's ~/.ssh/known_hosts, read-only. Called by transport.SshTransport after key exchange.

A changed key is never accepted: it raises HostKeyChanged, which health turns into a fatal,
alerting finding.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import paramiko

from .errors import HostKeyChanged, HostKeyUnknown

USER_KNOWN_HOSTS = Path("~/.ssh/known_hosts")


def pin_name(host: str, port: int) -> str:
    """OpenSSH's known_hosts name: host, or [host]:port off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


class HostKeyStore:
    """One known_hosts file we may append to, and read-only trust sources beside it. Thread-safe."""

    def __init__(self, path: Path, read_only: tuple[Path, ...] = (USER_KNOWN_HOSTS,)):
        self.path = Path(os.path.expanduser(path))
        self._lock = threading.Lock()
        self._keys = paramiko.HostKeys()
        for source in (*read_only, self.path):
            source = Path(os.path.expanduser(source))
            if source.is_file():
                try:
                    self._keys.load(str(source))
                except (OSError, paramiko.SSHException, ValueError):
                    pass  # an unreadable or odd line elsewhere must not stop probing
        # paramiko's lookup scans every entry; index plain names so a 500-node sweep stays linear
        self._index: dict[str, dict[str, paramiko.PKey]] = {}
        self._hashed = False
        for entry in self._keys._entries:
            for hostname in entry.hostnames:
                if hostname.startswith("|1|"):
                    self._hashed = True
                else:
                    self._index.setdefault(hostname, {}).setdefault(entry.key.get_name(), entry.key)

    def _lookup(self, name: str) -> dict[str, paramiko.PKey] | None:
        found = self._index.get(name)
        if found is None and self._hashed:
            entry = self._keys.lookup(name)
            found = dict(entry) if entry else None
        return found

    def key_types(self, host: str, port: int) -> list[str]:
        """Key types we already trust for this host, so the server is asked for one of those."""
        with self._lock:
            entry = self._lookup(pin_name(host, port))
            return list(entry) if entry else []

    def check(self, host: str, port: int, key: paramiko.PKey, policy: str) -> None:
        """Accept a known matching key; pin an unknown one under accept-new; raise otherwise."""
        name = pin_name(host, port)
        with self._lock:
            entry = self._lookup(name)
            known = entry.get(key.get_name()) if entry else None
            if known is not None:
                if known == key:
                    return
                raise HostKeyChanged(f"{name} presented {key.get_name()} {key.fingerprint}, "
                                     f"pinned {known.fingerprint} in {self.path}")
            if entry:
                raise HostKeyChanged(f"{name} presented a {key.get_name()} key, pinned type(s) "
                                     f"{', '.join(entry.keys())} in {self.path}")
            if policy != "accept-new":
                raise HostKeyUnknown(f"{name} host key unknown ({key.get_name()} {key.fingerprint}); "
                                     f"policy strict: add it to {self.path}")
            self._index.setdefault(name, {})[key.get_name()] = key
            self._append(f"{name} {key.get_name()} {key.get_base64()}\n")

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(line)
