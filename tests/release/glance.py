"""A real Glance image API on loopback for the release tests.

Not a double: this is the PyPI ``glance`` package served by gunicorn, with a
sqlite database and the file store in a temporary directory. Its transactions
take SQLite's write lock when they begin (glance_app.py), so concurrent requests
wait for each other as on MySQL instead of failing with HTTP 500. Keystone is left
out (the ``unauthenticated-context`` paste pipeline), so the policy makes
every caller an admin; otherwise each call would be refused with 403.

``stop()`` and ``start()`` again keep the same database, store and port, so a
test can make Glance unreachable and bring it back with its images intact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

from builder.vm.process import die_with_parent, free_port
from builder.vm.serial import tail_text

VENV_BIN = Path(sys.executable).parent
# The paste pipelines ship with the package, under the venv's etc/.
PASTE_INI = Path(sys.prefix) / "etc" / "glance" / "glance-api-paste.ini"
# The repository root, so gunicorn imports tests.release.glance_app (this folder
# itself must not go on sys.path: glance.py would shadow the glance package).
REPO = Path(__file__).resolve().parents[2]
BUSY_TIMEOUT = 60  # seconds; transactions last milliseconds, a loaded machine stretches them


class GlanceError(RuntimeError):
    """Glance did not come up; the message carries the tail of its log."""


def _config(root: Path) -> str:
    return f"""\
[DEFAULT]
enabled_backends = fs:file
use_stderr = true
debug = false
image_cache_dir = {root / "cache"}
enabled_import_methods = []

[database]
# timeout: how long a transaction waits for another's write lock (glance_app.py).
connection = sqlite:///{root / "glance.sqlite"}?timeout={BUSY_TIMEOUT}

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = {root / "store"}

[os_glance_staging_store]
filesystem_store_datadir = {root / "staging"}

[os_glance_tasks_store]
filesystem_store_datadir = {root / "tasks"}

[paste_deploy]
flavor =
config_file = {PASTE_INI}

[oslo_policy]
policy_file = {root / "policy.json"}
enforce_new_defaults = false
enforce_scope = false
"""


class GlanceServer:
    """Glance API v2 served by gunicorn on ``127.0.0.1:<port>``, state under ``root``."""

    #: The database a fresh ``db_sync`` made in this process (see ``_prepare``).
    _schema: ClassVar[bytes | None] = None

    def __init__(self, root: Path, *, port: int | None = None) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.config_dir = self.root / "etc"
        self.store_dir = self.root / "store"
        self.log_file = self.root / "glance.log"
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._prepared = False

    @property
    def endpoint(self) -> str:
        """What ``image_endpoint_override`` takes: no ``/v2`` suffix."""
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "OS_GLANCE_CONFIG_DIR": str(self.config_dir)}

    def _prepare(self) -> None:
        """Write the configuration and create the schema (once per server).

        ``glance-manage db_sync`` takes ~3 s of a server's ~4 s start; its result is
        the same empty schema every time, so it runs once per process and later
        servers start from a copy of that database (made before any server used it).
        """
        for sub in ("etc", "store", "staging", "tasks", "cache"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.config_dir / "glance-api.conf").write_text(_config(self.root))
        (self.root / "policy.json").write_text(json.dumps({"context_is_admin": "@"}))
        database = self.root / "glance.sqlite"
        fresh = not database.exists()
        if GlanceServer._schema is not None and fresh:
            database.write_bytes(GlanceServer._schema)
            with self.log_file.open("a") as log:
                log.write("glance.py: schema copied from this process's first db_sync\n")
            self._prepared = True
            return
        with self.log_file.open("ab") as log:
            done = subprocess.run(
                [str(VENV_BIN / "glance-manage"),
                 "--config-file", str(self.config_dir / "glance-api.conf"), "db_sync"],
                env=self._env(), stdout=log, stderr=subprocess.STDOUT, check=False,
            )  # fmt: skip
        if done.returncode != 0:
            raise GlanceError(
                f"glance-manage db_sync exited {done.returncode}\n{tail_text(self.log_file, 30)}"
            )
        if GlanceServer._schema is None and fresh:
            GlanceServer._schema = database.read_bytes()
        self._prepared = True

    def start(self, timeout: float = 60.0) -> None:
        """Launch gunicorn and wait until ``GET /`` lists the API versions."""
        if self.running:
            return
        t0 = time.monotonic()
        if not self._prepared:
            self._prepare()
        argv = [
            str(VENV_BIN / "gunicorn"),
            "--bind", f"127.0.0.1:{self.port}",
            # Threads: the Nova double downloads while the tool polls; uploads of
            # a whole image must not hit the default 30 s worker timeout.
            "--workers", "1", "--worker-class", "gthread", "--threads", "8",
            "--timeout", "900",
            # gunicorn 27 otherwise puts a control socket in ~/.gunicorn, shared by
            # every gunicorn of the user.
            "--no-control-socket",
            # Glance's app with SQLite writers that wait instead of failing (see there).
            "--pythonpath", str(REPO),
            "tests.release.glance_app:application",
        ]  # fmt: skip
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                argv, env=self._env(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent,  # a killed test run leaves no Glance behind
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                why = (
                    f"exited {self._proc.returncode}"
                    if self._proc.poll() is not None
                    else f"not ready after {timeout:g}s"
                )
                self.stop()
                raise GlanceError(
                    f"Glance on port {self.port} {why}; log {self.log_file}:\n"
                    f"{tail_text(self.log_file, 40)}"
                )
            time.sleep(0.1)
        self.startup_seconds = time.monotonic() - t0

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/versions", timeout=2) as r:
                return r.status == 200 and b"versions" in r.read()
        except (urllib.error.URLError, OSError):
            return False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop gunicorn (its whole process group); the state on disk stays."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def log_tail(self, n: int = 40) -> str:
        return tail_text(self.log_file, n)
