"""Registries that plugins fill with named factories (device kinds, limiter kinds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


class RegistryError(LookupError):
    pass


@dataclass(frozen=True)
class Registration:
    kind: str
    factory: Callable[..., Any]
    plugin: str


class _Registry:
    what = "kind"

    def __init__(self) -> None:
        self._items: dict[str, Registration] = {}
        self.current_plugin = "?"  # set by the manager while a plugin's hook runs

    def add(self, kind: str, factory: Callable[..., Any]) -> None:
        if not kind or not isinstance(kind, str):
            raise RegistryError(f"{self.what} name must be a non-empty string")
        if kind in self._items:
            prev = self._items[kind].plugin
            raise RegistryError(f"{self.what} {kind!r} registered twice "
                                f"(by {prev!r} and {self.current_plugin!r})")
        self._items[kind] = Registration(kind, factory, self.current_plugin)

    def get(self, kind: str) -> Callable[..., Any]:
        try:
            return self._items[kind].factory
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise RegistryError(f"no loaded plugin provides {self.what} {kind!r} "
                                f"(known: {known})") from None

    def __contains__(self, kind: str) -> bool:
        return kind in self._items

    def kinds(self) -> list[str]:
        return sorted(self._items)

    def registrations(self) -> list[Registration]:
        return [self._items[k] for k in self.kinds()]


class DeviceRegistry(_Registry):
    """Device kinds: a `DeviceKind` subclass (nodesvc.vmm.device), or a bare
    `factory(ctx, config)` with an optional `factory.validate`."""
    what = "device kind"

    def kind(self, kind: str):
        """The registered kind as a DeviceKind (validate, device_id, arrange, attach)."""
        from nodesvc.vmm.device import as_device_kind
        return as_device_kind(kind, self.get(kind))


class RateLimiterRegistry(_Registry):
    what = "rate-limiter kind"
