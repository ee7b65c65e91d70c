"""tests/stall.py: a closed stalling proxy leaves no thread on a closed fd number.

Its accept thread, left blocked on a listening socket closed under it, was
restarted by the kernel on the next socket given that fd number (after a stop and
continue of the process) and accepted, then reset, the Nova double's connections
in a later test (test_dry_run's flake). Here a stop and continue of this process
follows the close, and the next listening socket with the proxy's old fd number
must get its own connection.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from tests.stall import HOST, StallingProxy


def _stop_and_continue() -> None:
    """SIGSTOP this process; a child sends SIGCONT (what job control or a freezer
    does to a test run, and what restarts a blocked accept())."""
    wake = f"import os, signal, time; time.sleep(0.3); os.kill({os.getpid()}, signal.SIGCONT)"
    waker = subprocess.Popen([sys.executable, "-c", wake])
    os.kill(os.getpid(), signal.SIGSTOP)
    waker.wait(timeout=10)


def _proxy_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("stall-")]


def test_close_ends_every_thread_before_the_fd_numbers_are_reused() -> None:
    with socket.create_server((HOST, 0)) as upstream:
        proxy = StallingProxy(upstream.getsockname()[1])
        upstream.settimeout(10)
        stalled = socket.create_connection((HOST, proxy.port), timeout=10)
        deadline = time.monotonic() + 10
        while not proxy._held and time.monotonic() < deadline:  # held, never answered
            time.sleep(0.01)
        proxy.stalling = False
        forwarded = socket.create_connection((HOST, proxy.port), timeout=10)
        server_side, _ = upstream.accept()
        server_side.settimeout(10)
        forwarded.sendall(b"ping")
        assert server_side.recv(4) == b"ping"
        old_fd = proxy._listener.fileno()
        assert _proxy_threads()

        proxy.close()

        assert _proxy_threads() == []
        with socket.create_server((HOST, 0)) as successor:
            assert successor.fileno() == old_fd  # the number the accept thread used
            _stop_and_continue()
            with socket.create_connection((HOST, successor.getsockname()[1])) as client:
                successor.settimeout(10)
                accepted, address = successor.accept()  # the proxy took it: timeout
                accepted.close()
                assert address == client.getsockname()
        for sock in (stalled, forwarded, server_side):
            sock.close()
