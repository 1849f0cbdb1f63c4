"""Hooks: how a lower layer announces news to the layers above it without importing them. A layer defines
the hook (`journals_posted = Hook("ledger.journals_posted")`) and calls `send(...)` inside its own
transaction; a higher layer connects a receiver in its `AppConfig.ready()`. Receivers run synchronously in
connection order (lower layers first, as INSTALLED_APPS lists them), and a receiver's error propagates to
the sender, rolling its transaction back. Unlike Django signals: no sender filtering, no weak references,
no `send_robust`."""
from __future__ import annotations

from collections.abc import Callable


class Hook:
    """One named call-out with its receivers, in connection order."""

    def __init__(self, name: str):
        self.name = name
        self._receivers: list[Callable[..., object]] = []

    def connect(self, receiver: Callable[..., object]) -> Callable[..., object]:
        """Add a receiver once (connecting again, e.g. a second `ready()` under tests, is a no-op)."""
        if receiver not in self._receivers:
            self._receivers.append(receiver)
        return receiver

    def disconnect(self, receiver: Callable[..., object]) -> None:
        self._receivers.remove(receiver)

    @property
    def receivers(self) -> tuple[Callable[..., object], ...]:
        return tuple(self._receivers)

    def send(self, **kwargs) -> None:
        """Call every receiver with the keyword arguments; the first error stops the rest and propagates."""
        for receiver in self._receivers:
            receiver(**kwargs)

    def __repr__(self) -> str:
        return f"<Hook {self.name}: {len(self._receivers)} receiver(s)>"
