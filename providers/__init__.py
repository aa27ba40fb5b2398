"""Provider registry: name -> adapter class, loaded lazily.

Adapters register under the entry point group `gridctl.providers`; the built-in ones are also
known by module path so a source checkout works uninstalled. A provider whose SDK is missing
fails only when used, with a hint naming the extra to install.
"""

from __future__ import annotations

import importlib
from importlib import metadata

from .base import Provider, ProviderUnavailable

_BUILTIN = {"ssh": "providers.static:StaticProvider", "local": "providers.local:LocalProvider",
            "aws": "providers.aws:AwsProvider", "gcp": "providers.gcp:GcpProvider"}
_PLANNED: dict[str, str] = {}   # spec-valid names whose adapter has not shipped yet -> extra


def names() -> list[str]:
    found = set(_BUILTIN) | set(_PLANNED)
    try:
        found |= {ep.name for ep in metadata.entry_points(group="gridctl.providers")}
    except Exception:  # a broken third-party distribution must not break gridctl
        pass
    return sorted(found)


def get(name: str) -> type[Provider]:
    """The adapter class for `name`. Raises ProviderUnavailable with words a user can act on."""
    target = _BUILTIN.get(name)
    if target is None:
        eps = [ep for ep in metadata.entry_points(group="gridctl.providers") if ep.name == name]
        if eps:
            target = eps[0].value
    if target is None:
        if name in _PLANNED:
            raise ProviderUnavailable(f"provider '{name}' is not available in this version of gridctl yet "
                                      f"(install 'gridctl[{_PLANNED[name]}]' once it ships)")
        raise ProviderUnavailable(f"unknown provider '{name}' (known: {', '.join(names())})")
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ProviderUnavailable(f"provider '{name}' needs {e.name}: pip install 'gridctl[{name}]'") from None


__all__ = ["Provider", "ProviderUnavailable", "get", "names"]
