"""A loopback TCP proxy in front of a real sshd that can be told to stall.

Stalling, it accepts every connection and then says nothing (a source host
whose sshd hangs, a half-dead network path); forwarding, it passes bytes both
ways to the real server. The syncs' and pushes' timeout tests point their
programs at it: one run while it stalls must fail within its timeout, the next
run (forwarding) must succeed with the same config.

Closing it ends its threads before it closes a socket. A socket closed while
another thread is blocked in accept() or recv() on it does not wake that thread,
and its fd number goes to the next socket the process opens; when the kernel
restarts the blocked call (after a stop and continue, a ptrace stop, any signal
with an SA_RESTART handler) the call runs again on that number. Left so, this
proxy's accept thread took the Nova double's listening socket in later tests
and reset the CLI's first request there (the flaky test_dry_run of CI run 12).
So: shut every socket down (which wakes the threads blocked on it), join the
threads, and only then close.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

HOST = "127.0.0.1"
JOIN_TIMEOUT = 10.0  # seconds; a shut-down socket wakes its thread at once


class StallingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.stalling = True
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        # Sockets and threads are registered under the lock and only while open, so
        # close() sees every one; only close() closes a socket (threads shut down).
        self._held: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="stall-accept", daemon=True)
        self._acceptor.start()

    def _start(self, target: Callable[..., None], *args: socket.socket) -> bool:
        """Run `target(*args)` in a thread close() joins; False once closing."""
        with self._lock:
            if self._closed:
                return False
            thread = threading.Thread(target=target, args=args, name="stall-pump", daemon=True)
            self._threads.append(thread)
            thread.start()
            return True

    def _hold(self, sock: socket.socket) -> bool:
        """Register `sock` for close(); False (and `sock` closed) once closing."""
        with self._lock:
            if not self._closed:
                self._held.append(sock)
                return True
        sock.close()  # never registered: no other thread knows it
        return False

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:  # shut down by close()
                return
            if self._hold(client) and not self.stalling:
                self._start(self._forward, client)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((HOST, self.target_port))
        except OSError:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)  # the caller sees the server gone
            return
        if not self._hold(upstream):
            return

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        if self._start(pump, upstream, client):
            pump(client, upstream)

    def close(self) -> None:
        """Wake and join every thread, then close every socket."""
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # accept() returns EINVAL
        self._acceptor.join(JOIN_TIMEOUT)
        with self._lock:
            held, threads = list(self._held), list(self._threads)
        for sock in held:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # recv() returns b""
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        alive = [t.name for t in (self._acceptor, *threads) if t.is_alive()]
        if alive:  # closing now would hand their fd numbers to the next socket
            raise RuntimeError(f"stalling proxy: threads {alive} still running after close")
        for sock in (*held, self._listener):
            sock.close()


@contextlib.contextmanager
def stalling_proxy(target_port: int) -> Iterator[StallingProxy]:
    proxy = StallingProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()
