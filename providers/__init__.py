"""Provider registry: name -> adapter class, loaded lazily.

Called by gridctl.spec (`pool_model`, to validate each pool with its provider's schema), the
CLI and the reconcile pass (`get`). Adapters register under the entry point group
`gridctl.providers`; the built-in ones are also known by module path so a source checkout works
uninstalled. Only the providers a fleet names are imported. A provider whose SDK is missing still
validates its pools and fails only when used, with a hint naming what to install.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from importlib import metadata

from .base import Provider, ProviderUnavailable
from .schema import PoolSpec

_BUILTIN = {"ssh": "providers.static:StaticProvider", "local": "providers.local:LocalProvider",
            "aws": "providers.aws:AwsProvider", "gcp": "providers.gcp:GcpProvider"}
_PLANNED: dict[str, str] = {}   # spec-valid names whose adapter has not shipped yet -> extra


@functools.cache
def _registered() -> dict[str, str]:
    """Entry point name -> "module:Class", read once per process: installing a plugin takes a
    new gridctl process anyway."""
    found: dict[str, str] = {}
    try:
        for ep in metadata.entry_points(group="gridctl.providers"):
            found.setdefault(ep.name, ep.value)
    except Exception:  # a broken third-party distribution must not break gridctl
        pass
    return found


def names() -> list[str]:
    """Every provider name a pool may use: the built-in ones first, then plugins by name."""
    extra = (set(_PLANNED) | set(_registered())) - set(_BUILTIN)
    return list(_BUILTIN) + sorted(extra)


def _load(name: str) -> type[Provider]:
    target = _BUILTIN.get(name) or _registered().get(name)
    if target is None:
        if name in _PLANNED:
            raise ProviderUnavailable(f"provider '{name}' is not available in this version of gridctl yet "
                                      f"(install 'gridctl[{_PLANNED[name]}]' once it ships)")
        raise ProviderUnavailable(f"unknown provider '{name}' (known: {', '.join(names())})")
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ProviderUnavailable(f"provider '{name}' needs {e.name}: {_install_hint(name, e.name)}") from None
    except AttributeError:
        raise ProviderUnavailable(f"provider '{name}': {module} has no {attr}") from None
    model = getattr(cls, "pool_model", None)
    if not (isinstance(model, type) and issubclass(model, PoolSpec)):
        raise ProviderUnavailable(f"provider '{name}' ({target}) declares no pool_model (a PoolSpec subclass)")
    return cls


def pool_model(name: str) -> type[PoolSpec]:
    """The schema of a `provider: name` pool section; needs the provider's module, not its SDK.
    Raises ProviderUnavailable (unknown name, module that does not import)."""
    return _load(name).pool_model


def get(name: str) -> type[Provider]:
    """The adapter class for `name`, ready to use. Raises ProviderUnavailable with words a user can act on."""
    cls = _load(name)
    for module, distribution in cls.requires.items():
        if not _installed(module):
            raise ProviderUnavailable(f"provider '{name}' needs {distribution}: {_install_hint(name, distribution)}")
    return cls


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):   # a parent package missing, or blocked in sys.modules
        return False


def _install_hint(name: str, distribution: str | None) -> str:
    return f"pip install 'gridctl[{name}]'" if name in _BUILTIN else f"pip install {distribution}"


__all__ = ["PoolSpec", "Provider", "ProviderUnavailable", "get", "names", "pool_model"]
