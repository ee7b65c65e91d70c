"""A real SMTP server (aiosmtpd) on the host's loopback that keeps every message:
the relay msmtp delivers to, in the booted VM (reached at 10.0.2.2) and in the
container tier (which shares the host's network)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from builder.vm.process import free_port


class Mailbox:
    """Collects the messages the relay accepted."""

    def __init__(self) -> None:
        self.messages: list[Envelope] = []

    async def handle_DATA(self, server, session, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


@contextmanager
def running_mailbox() -> Iterator[tuple[Mailbox, int]]:
    """A started relay and its port on 127.0.0.1, stopped on exit."""
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()
