"""Host key trust: gridctl's own known_hosts (pinned on first sight under accept-new) plus the
user's ~/.ssh/known_hosts, read-only. Called by transport.SshTransport after key exchange.

A changed key is never accepted: it raises HostKeyChanged, which health turns into a fatal,
alerting finding.
"""

from __future__ import annotations

import binascii
import os
import re
import threading
from base64 import decodebytes
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

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
        self._keys = paramiko.HostKeys()      # hashed names only: matching one costs an HMAC per entry
        # plain names -> their lines' (key type, key blob) in file order, made into keys when first looked
        # up: paramiko's own load compares every line with every earlier one, and a sweep of N nodes
        # needs only N names of a file that may pin thousands
        self._lines: dict[str, list[tuple[str, bytes]]] = {}
        self._index: dict[str, dict[str, paramiko.PKey]] = {}
        for source in (*read_only, self.path):
            source = Path(os.path.expanduser(source))
            if source.is_file():
                try:
                    self._read(source)
                except (OSError, ValueError):
                    pass  # an unreadable file elsewhere must not stop probing

    def _read(self, source: Path) -> None:
        """Index a known_hosts file as paramiko.HostKeys.load reads it: comments, blank lines, lines of
        under 3 fields and key types paramiko does not know are skipped; bad base64 raises InvalidHostKey."""
        with open(source) as f:
            for line in f:
                line = line.strip()
                if not line or line[0] == "#":
                    continue
                fields = re.split(" |\t", line)
                if len(fields) < 3:
                    continue
                names, key_type, key = fields[:3]
                if key_type not in _KEY_TYPES:
                    continue
                try:
                    blob = decodebytes(key.encode())
                except binascii.Error as e:
                    raise InvalidHostKey(line, e) from None
                hashed = [n for n in names.split(",") if n.startswith("|1|")]
                if hashed:
                    key_obj = _key(key_type, blob)
                    if key_obj is not None:
                        self._keys._entries.append(HostKeyEntry(hashed, key_obj))
                for name in names.split(","):
                    if not name.startswith("|1|"):
                        self._lines.setdefault(name, []).append((key_type, blob))

    def _lookup(self, name: str) -> dict[str, paramiko.PKey] | None:
        found = self._index.get(name)
        if found is None and name in self._lines:
            for key_type, blob in self._lines.pop(name):
                key = _key(key_type, blob)
                if key is not None:
                    found = self._index.setdefault(name, {})
                    found.setdefault(key.get_name(), key)
        if found is None and self._keys._entries:
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


# every key type paramiko can read (what its HostKeys.load keeps)
_KEY_TYPES = frozenset(t for cls in paramiko.key_classes for t in cls.identifiers())


def _key(key_type: str, blob: bytes) -> paramiko.PKey | None:
    """A known_hosts line's key, or None where paramiko's load would skip the line (bad key data)."""
    try:
        return paramiko.PKey.from_type_string(key_type, blob)
    except (paramiko.SSHException, paramiko.UnknownKeyType, ValueError):
        return None
