"""QMP on its own: a blocking facade over qemu.qmp's asyncio client.

The machine (builder.vm.machine) uses it to power the guest off and to read
``SHUTDOWN`` events; tests use it for ad-hoc commands (``query-status``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import EventListener, QMPClient, QMPError

from builder.vm.errors import MachineError

log = logging.getLogger(__name__)

T = TypeVar("T")


class QMP:
    """Blocking QMP calls for synchronous test code.

    qemu.qmp is asyncio-only; running its loop in a private daemon thread keeps
    the event reader alive between calls (so no event is missed) without
    imposing asyncio on the harness or on pytest.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"qmp-{name}", daemon=True
        )
        self._thread.start()
        self._client: QMPClient | None = None
        self._events: EventListener | None = None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def connect(self, path: Path, timeout: float = 5.0) -> None:
        """One connection attempt (callers retry while QEMU creates the socket)."""

        async def go() -> tuple[QMPClient, EventListener]:
            client = QMPClient(self._name)
            listener = EventListener()
            client.register_listener(listener)
            await client.connect(str(path))
            return client, listener

        self._client, self._events = self._call(go(), timeout)

    def execute(
        self, cmd: str, arguments: Mapping[str, object] | None = None, timeout: float = 30.0
    ) -> object:
        """Run a QMP command and return its result (raises ``QMPError`` subclasses)."""
        if self._client is None:
            raise MachineError("QMP is not connected")
        return self._call(self._client.execute(cmd, arguments), timeout)

    def events(self) -> list[dict[str, Any]]:
        """Every event received since connecting, oldest first."""
        listener = self._events
        if listener is None:
            return []

        async def history() -> list[dict[str, Any]]:
            return [dict(e) for e in listener.history]

        return self._call(history(), 5.0)

    def has_event(self, name: str) -> bool:
        """Whether an event called ``name`` (e.g. ``SHUTDOWN``) has been seen."""
        return any(e.get("event") == name for e in self.events())

    def close(self) -> None:
        """Disconnect (tolerating a QEMU that already hung up) and stop the loop."""
        if self._client is not None:
            try:
                self._call(self._client.disconnect(), 5.0)
            except (QMPError, OSError, EOFError, TimeoutError) as exc:
                log.debug("QMP disconnect: %r", exc)
            self._client = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()
