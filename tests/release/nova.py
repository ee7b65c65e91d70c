"""A Nova compute API (v2.1) test double that really boots what it is rebuilt with.

Why a double: Nova needs Keystone, a message queue, placement, a database and
libvirt on a KVM host; none of that runs here. So this is a small threaded HTTP
server on a real loopback socket that speaks the part of the Nova v2.1 API the
release tooling uses through openstacksdk (version discovery at the endpoint
root, microversion headers, ``GET /servers/detail``, ``GET /servers/{id}``, the
``rebuild`` server action, server metadata), with Nova's status codes, error
bodies and status transitions (ACTIVE -> REBUILD -> ACTIVE, or ERROR with a
``fault``).

What it does on a rebuild is real: it powers the running VM off over QMP,
downloads the image from Glance over HTTP, checks the bytes against Glance's
``os_hash_value``, puts a fresh qcow2 root disk on top of it and boots that
under UEFI firmware with the project's QEMU harness. The two volumes
(``aurora-data``, ``aurora-project``) and the loopback port forwards (ssh, 80,
443) belong to the server and survive rebuilds, as Cinder volumes and addresses
do. As in Nova, ACTIVE means the domain runs, not that the guest is healthy.

Nothing reaches the guest over SMBIOS (JASMIN passes no credentials either):
the data volume carries ``aurora/credstore/`` and the image links
``/etc/credstore`` there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid as uuid_mod
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from builder.vm.disks import scratch_volumes
from builder.vm.errors import GuestPanic, MachineError, QemuExited
from builder.vm.image import BootImage
from builder.vm.machine import Machine
from builder.vm.process import free_ports
from builder.vm.serial import tail_text

log = logging.getLogger(__name__)

MIN_VERSION, MAX_VERSION = "2.1", "2.96"
VOLUMES = ("aurora-data", "aurora-project")
GUEST_PORTS = {"http": 80, "https": 443}
CREDSTORE = Path("aurora") / "credstore"  # on the data volume; /etc/credstore in the image
# Under TCG a guest occasionally dies before userspace (the kernel panic that
# builder.vm.machine.boot retries, or a silent reset that ends QEMU under -no-reboot):
# an emulator race, not an image defect. So the domain counts as started once
# systemd speaks on the console, and one such death earns a second boot. An
# image that prints nothing on ttyS0 is taken as started after ACTIVE_GRACE s.
_USERSPACE = re.compile(rb"systemd\[1\]: |Welcome to ")
ACTIVE_GRACE = 240.0
# status -> (OS-EXT-STS:vm_state, OS-EXT-STS:power_state: 1 running, 4 shutdown)
_STATES = {
    "ACTIVE": ("active", 1),
    "REBUILD": ("active", 1),
    "ERROR": ("error", 4),
    "SHUTOFF": ("stopped", 4),
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


class _Fault(Exception):
    """A rebuild failed on the 'compute host': becomes the server's ``fault``."""


class _ApiError(Exception):
    """An API answer other than success, in Nova's error body shape."""

    KINDS: ClassVar[dict[int, str]] = {
        400: "badRequest",
        404: "itemNotFound",
        406: "notAcceptable",
        409: "conflictingRequest",
        503: "serviceUnavailable",
    }

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    def body(self) -> dict[str, Any]:
        return {
            self.KINDS.get(self.code, "computeFault"): {"code": self.code, "message": self.message}
        }


@dataclass
class _Server:
    id: str
    name: str
    image_id: str
    status: str = "ACTIVE"
    task_state: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    fault: dict[str, Any] | None = None
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    launched_at: str | None = None
    volume_ids: tuple[str, ...] = ()


class _LoggedServer(ThreadingHTTPServer):
    """The API's server, saying in the log what the stdlib prints to stderr or not at
    all: each accepted connection, and any error before a handler answered. A client
    that sees a reset or a close without response can then be told apart: never
    accepted here, or dropped by the server. (The resets of CI run 12 were never
    accepted here: a stalling proxy's thread had taken this socket's fd number; see
    tests/stall.py.)"""

    def verify_request(self, request: Any, client_address: Any) -> bool:
        log.debug("nova-double: accepted %s", client_address)
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("nova-double: error serving %s", client_address)


class NovaDouble:
    """One server, ``name``, behind a Nova v2.1 endpoint at :attr:`endpoint`."""

    def __init__(
        self,
        root: Path,
        *,
        glance_endpoint: str,
        name: str = "aurora-test",
        credentials: Mapping[str, str | bytes] | None = None,
        ssh_key: Path | None = None,
        memory_mb: int = 2048,
        boot: bool = True,
    ) -> None:
        """``credentials`` go into the data volume's credential store at server
        creation; ``ssh_key`` (a private key, ``.pub`` beside it) is what the
        harness's Machine uses (never passed over SMBIOS). ``boot=False``: a rebuild
        fetches and checks the image and makes the root disk, but starts no VM (unit
        tests of the release logic; the console then says so)."""
        self.root = Path(root)
        self.glance = glance_endpoint.rstrip("/")
        self.ssh_key = ssh_key
        self.memory_mb = memory_mb
        self.boot = boot
        # The API port is the one the first bind gets (port 0), never a port picked
        # free and bound later: another server could take it in between. It is bound
        # before the forwarded ports are picked, so none of them can be the API's
        # (free_ports closes its probes, and the kernel may hand a port out again).
        self.port = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._serving = False
        self._bind()
        self.ssh_port, self.http_port, self.https_port = free_ports(3)
        #: Every request seen, as (method, path with query), for assertions.
        self.requests: list[tuple[str, str]] = []
        #: Image ids of accepted rebuilds, in order.
        self.rebuilds: list[str] = []
        #: Seconds per phase of the last rebuild (power_off, fetch, spawn).
        self.timings: dict[str, float] = {}
        self.machine: Machine | None = None
        self._last_serial: Path | None = None
        self._lock = threading.RLock()
        self._fail_next: str | None = None
        # One long-lived "compute host" thread runs every rebuild, so QEMU's parent
        # thread outlives the VM: builder.vm.process arms PR_SET_PDEATHSIG, which fires when
        # the *thread* that started QEMU exits, not the process.
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nova-compute")
        self._pending: Future[None] | None = None
        self._closing = threading.Event()
        self._boots = 0

        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "_base").mkdir(exist_ok=True)
        seed = self._credstore_seed(self.root / "data-seed", credentials or {})
        self.volumes = scratch_volumes(VOLUMES, self.root, contents={"aurora-data": seed})
        shutil.rmtree(seed)
        self.server = _Server(
            id=str(uuid_mod.uuid4()),
            name=name,
            image_id=str(uuid_mod.uuid4()),  # an image Glance never had
            volume_ids=tuple(str(uuid_mod.uuid4()) for _ in VOLUMES),
        )
        self.up()

    # -- test controls ----------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """What ``compute_endpoint_override`` takes (the unversioned root)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def serial_log(self) -> Path | None:
        """Console of the current (or last) domain; None before the first boot."""
        return self.machine.serial_log if self.machine is not None else self._last_serial

    def _bind(self) -> ThreadingHTTPServer:
        """The API's listening socket (served from :meth:`up`)."""
        httpd = _LoggedServer(("127.0.0.1", self.port), self._handler_class())
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]  # again after down(): the same port
        self._httpd = httpd
        return httpd

    def up(self) -> None:
        """Listen (again) on the same port."""
        if self._serving:
            return
        httpd = self._httpd or self._bind()
        self._serving = True
        threading.Thread(target=httpd.serve_forever, name="nova-double", daemon=True).start()

    def down(self) -> None:
        """Close the socket: clients get 'connection refused'; the VM keeps running."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            if self._serving:
                httpd.shutdown()
            httpd.server_close()
        self._serving = False

    def fail_next_rebuild(self, reason: str) -> None:
        """The next accepted rebuild powers the VM off, then ends in ERROR with ``reason``."""
        self._fail_next = reason

    def wait_idle(self, timeout: float = 900.0) -> str:
        """Wait for a rebuild in progress to end; return the server status."""
        if self._pending is not None:
            try:
                self._pending.result(timeout)
            except FutureTimeout:
                raise TimeoutError(f"rebuild still running after {timeout:g}s") from None
        return self.server.status

    def probe_argv(self, identity: Path) -> list[str]:
        """The CLI's options that point its probe at this double's forwarded ports
        (the release suite and bench/downtime.py drive the real CLI with them)."""
        return [
            "--address", "127.0.0.1",
            "--ssh-port", str(self.ssh_port),
            "--http-port", str(self.http_port),
            "--https-port", str(self.https_port),
            "--identity", str(identity),
            "--probe-timeout", "15min",
        ]  # fmt: skip

    def close(self) -> None:
        """Stop serving, abandon any rebuild and stop the VM at once (its disks are
        thrown away with the double: an orderly power-off would prove nothing)."""
        self._closing.set()
        self.down()
        with contextlib.suppress(FutureTimeout, TimeoutError):
            self.wait_idle(120)
        self._compute.submit(self._power_off, False).result(120)
        self._compute.shutdown()

    # -- HTTP -------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "nova-double"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("nova-double: " + format, *args)

            def do_GET(self) -> None:
                double._serve(self, "GET")

            def do_POST(self) -> None:
                double._serve(self, "POST")

            def do_PUT(self) -> None:
                double._serve(self, "PUT")

            def do_DELETE(self) -> None:
                double._serve(self, "DELETE")

        return Handler

    def _serve(self, req: BaseHTTPRequestHandler, method: str) -> None:
        self.requests.append((method, req.path))
        status, body, version = 500, None, MAX_VERSION
        try:
            version = self._microversion(req)
            length = int(req.headers.get("Content-Length") or 0)
            raw = req.rfile.read(length) if length else b""
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                raise _ApiError(400, "Malformed request body") from None
            status, body = self._route(method, req.path, payload)
        except _ApiError as exc:
            status, body = exc.code, exc.body()
        except Exception as exc:
            log.exception("nova-double: %s %s", method, req.path)
            status, body = 500, _ApiError(500, f"Unexpected API Error: {exc!r}").body()
        data = b"" if body is None else json.dumps(body).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.send_header("OpenStack-API-Version", f"compute {version}")
        req.send_header("X-OpenStack-Nova-API-Version", version)
        req.send_header("Vary", "OpenStack-API-Version, X-OpenStack-Nova-API-Version")
        req.send_header("x-openstack-request-id", f"req-{uuid_mod.uuid4()}")
        req.end_headers()
        req.wfile.write(data)

    @staticmethod
    def _microversion(req: BaseHTTPRequestHandler) -> str:
        asked = None
        header = req.headers.get("OpenStack-API-Version", "")
        if header.lower().startswith("compute "):
            asked = header.split(None, 1)[1].strip()
        asked = asked or req.headers.get("X-OpenStack-Nova-API-Version")
        if not asked:
            return MIN_VERSION
        if asked == "latest":
            return MAX_VERSION
        try:
            wanted = _version(asked)
        except ValueError:
            raise _ApiError(400, f"Invalid API version request string {asked}") from None
        if not _version(MIN_VERSION) <= wanted <= _version(MAX_VERSION):
            raise _ApiError(
                406, f"Version {asked} is not supported by the API. "
                f"Minimum is {MIN_VERSION} and maximum is {MAX_VERSION}."
            )  # fmt: skip
        return asked

    def _route(self, method: str, target: str, payload: Any) -> tuple[int, Any]:
        url = urlsplit(target)
        path = url.path.rstrip("/")
        if path in ("", "/v2.1") and method == "GET":
            return (300, {"versions": [self._version_doc()]}) if not path else (
                200, {"version": self._version_doc()})  # fmt: skip
        path = path.removeprefix("/v2.1")
        query = parse_qs(url.query)
        parts = path.strip("/").split("/")
        if parts[0] != "servers":
            raise _ApiError(404, "The resource could not be found.")
        if len(parts) == 1 and method == "GET":
            return 200, {"servers": [self._brief(s) for s in self._matching(query)]}
        if parts[1:] == ["detail"] and method == "GET":
            return 200, {"servers": [self._view(s) for s in self._matching(query)]}
        server = self._get(parts[1])
        rest = parts[2:]
        if not rest and method == "GET":
            return 200, {"server": self._view(server)}
        if rest == ["action"] and method == "POST":
            return self._action(server, payload)
        if rest and rest[0] == "metadata":
            return self._metadata(server, method, rest[1:], payload)
        raise _ApiError(404, "The resource could not be found.")

    def _version_doc(self) -> dict[str, Any]:
        return {
            "id": "v2.1",
            "status": "CURRENT",
            "version": MAX_VERSION,
            "min_version": MIN_VERSION,
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{self.endpoint}/v2.1/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.compute+json;version=2.1"}],
        }  # fmt: skip

    def _matching(self, query: dict[str, list[str]]) -> list[_Server]:
        # Nova treats the name filter as a regular expression.
        names = query.get("name")
        if names and not re.search(names[0], self.server.name):
            return []
        return [self.server]

    def _get(self, server_id: str) -> _Server:
        if server_id != self.server.id:
            raise _ApiError(404, f"Instance {server_id} could not be found.")
        return self.server

    def _link(self, kind: str, ident: str) -> list[dict[str, str]]:
        return [
            {"rel": "self", "href": f"{self.endpoint}/v2.1/{kind}/{ident}"},
            {"rel": "bookmark", "href": f"{self.endpoint}/{kind}/{ident}"},
        ]

    def _brief(self, s: _Server) -> dict[str, Any]:
        return {"id": s.id, "name": s.name, "links": self._link("servers", s.id)}

    def _view(self, s: _Server) -> dict[str, Any]:
        with self._lock:
            status = s.status
            machine = self.machine
            died = self.boot and (machine is None or not machine.running)
            if status == "ACTIVE" and s.launched_at and died:
                status = "SHUTOFF"  # the domain died: Nova's power-state sync says so
            vm_state, power = _STATES[status]
            view: dict[str, Any] = {
                "id": s.id,
                "name": s.name,
                "status": status,
                "tenant_id": "aurora-project",
                "user_id": "aurora-operator",
                "metadata": dict(s.metadata),
                "hostId": hashlib.sha224(b"aurora-project" + b"host").hexdigest(),
                "image": {"id": s.image_id, "links": self._link("images", s.image_id)[1:]},
                "flavor": {"vcpus": 2, "ram": self.memory_mb, "disk": 20, "ephemeral": 0,
                           "swap": 0, "original_name": "l3.small", "extra_specs": {}},
                "created": s.created,
                "updated": s.updated,
                "addresses": {"private": [{"version": 4, "addr": "127.0.0.1",
                                           "OS-EXT-IPS:type": "fixed",
                                           "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"}]},
                "accessIPv4": "",
                "accessIPv6": "",
                "links": self._link("servers", s.id),
                "OS-DCF:diskConfig": "MANUAL",
                "OS-EXT-AZ:availability_zone": "nova",
                "config_drive": "",
                "key_name": None,
                "OS-SRV-USG:launched_at": s.launched_at,
                "OS-SRV-USG:terminated_at": None,
                "OS-EXT-STS:task_state": s.task_state,
                "OS-EXT-STS:vm_state": vm_state,
                "OS-EXT-STS:power_state": power,
                "os-extended-volumes:volumes_attached": [
                    {"id": v, "delete_on_termination": False} for v in s.volume_ids
                ],
                "security_groups": [{"name": "default"}],
                "locked": False,
                "locked_reason": None,
                "description": None,
                "tags": [],
                "trusted_image_certificates": None,
                "server_groups": [],
                "pinned_availability_zone": None,
            }  # fmt: skip
            if s.status == "REBUILD":
                view["progress"] = 0
            if s.fault is not None:
                view["fault"] = dict(s.fault)
            return view

    def _metadata(self, s: _Server, method: str, rest: list[str], payload: Any) -> tuple[int, Any]:
        with self._lock:
            if not rest and method == "GET":
                return 200, {"metadata": dict(s.metadata)}
            if not rest and method in ("POST", "PUT"):
                items = (payload or {}).get("metadata")
                if not isinstance(items, dict):
                    raise _ApiError(400, "Invalid input for field/attribute metadata.")
                if method == "PUT":
                    s.metadata.clear()
                s.metadata.update({str(k): str(v) for k, v in items.items()})
                s.updated = _now()
                return 200, {"metadata": dict(s.metadata)}
            if len(rest) == 1 and method == "DELETE":
                if s.metadata.pop(rest[0], None) is None:
                    raise _ApiError(404, "Metadata item was not found")
                return 204, None
            if len(rest) == 1 and method == "GET":
                if rest[0] not in s.metadata:
                    raise _ApiError(404, "Metadata item was not found")
                return 200, {"meta": {rest[0]: s.metadata[rest[0]]}}
        raise _ApiError(404, "The resource could not be found.")

    # -- the rebuild action -------------------------------------------------------

    def _action(self, s: _Server, payload: Any) -> tuple[int, Any]:
        if not isinstance(payload, dict) or len(payload) != 1:
            raise _ApiError(400, "Malformed request body")
        ((name, args),) = payload.items()
        if name == "os-getConsoleOutput":
            return 200, {"output": self._console(args)}
        if name != "rebuild":
            raise _ApiError(400, f"There is no such action: {name}")
        if not isinstance(args, dict) or not isinstance(args.get("imageRef"), str):
            raise _ApiError(400, "Invalid input for field/attribute rebuild. 'imageRef' is a "
                            "required property")  # fmt: skip
        image_id = args["imageRef"].rstrip("/").rsplit("/", 1)[-1]
        with self._lock:
            if s.task_state is not None or s.status not in ("ACTIVE", "ERROR"):
                state = f"task_state {s.task_state}" if s.task_state else f"vm_state {s.status}"
                # (SHUTOFF is reported only in views; a stopped server may be rebuilt too.)
                raise _ApiError(409, f"Cannot 'rebuild' instance {s.id} while it is in {state}")
        image = self._glance_image(image_id)  # the API checks the image before casting
        with self._lock:
            s.image_id = image_id
            if isinstance(args.get("metadata"), dict):
                s.metadata = {str(k): str(v) for k, v in args["metadata"].items()}
            if isinstance(args.get("name"), str):
                s.name = args["name"]
            s.status, s.task_state, s.fault, s.updated = "REBUILD", "rebuilding", None, _now()
            self.rebuilds.append(image_id)
            self._pending = self._compute.submit(self._rebuild, image)
            return 202, {"server": self._view(s)}

    def _console(self, args: Any) -> str:
        """The domain's serial console, the last ``length`` lines (Nova's console log)."""
        path = self.serial_log
        text = path.read_text(errors="replace") if path is not None and path.exists() else ""
        length = args.get("length") if isinstance(args, dict) else None
        lines = text.splitlines(keepends=True)
        if isinstance(length, int | str) and str(length).lstrip("-").isdigit():
            lines = lines[-int(length) :] if int(length) > 0 else lines
        return "".join(lines)

    def _glance_image(self, image_id: str) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"{self.glance}/v2/images/{image_id}", timeout=30) as r:
                image: dict[str, Any] = json.load(r)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise _ApiError(400, f"Image {image_id} could not be found.") from None
            raise _ApiError(503, f"Glance answered {exc.code} for image {image_id}") from None
        except OSError as exc:
            raise _ApiError(503, f"Connection to glance host {self.glance} failed: {exc}") from None
        if image.get("status") != "active":
            raise _ApiError(400, f"Image {image_id} is not active.")
        return image

    def _rebuild(self, image: dict[str, Any]) -> None:
        """The compute host's part: power off, fetch, new root disk, spawn."""
        self.timings = {}
        try:
            t0 = time.monotonic()
            self._power_off()
            self.timings["power_off"] = time.monotonic() - t0
            if self._fail_next is not None:
                reason, self._fail_next = self._fail_next, None
                raise _Fault(reason)
            t0 = time.monotonic()
            base = self._fetch(image)
            self.timings["fetch"] = time.monotonic() - t0
            with self._lock:
                self.server.task_state = "rebuild_spawning"
            t0 = time.monotonic()
            self._spawn(base, image)
            self.timings["spawn"] = time.monotonic() - t0
        except _Fault as exc:
            self._set_error(str(exc))
        except Exception as exc:
            log.exception("nova-double: rebuild failed")
            self._set_error(f"{type(exc).__name__}: {exc}")
        else:
            with self._lock:
                s = self.server
                s.status, s.task_state, s.updated = "ACTIVE", None, _now()
                s.launched_at = s.updated

    def _set_error(self, message: str) -> None:
        with self._lock:
            s = self.server
            s.status, s.task_state, s.updated = "ERROR", None, _now()
            s.fault = {"code": 500, "created": s.updated, "message": message.splitlines()[0],
                       "details": message}  # fmt: skip

    def _power_off(self, powerdown: bool = True) -> None:
        machine = self.machine
        if machine is not None:
            machine.shutdown(timeout=60, powerdown=powerdown)
            self._last_serial = machine.serial_log
            self.machine = None

    def _fetch(self, image: dict[str, Any]) -> Path:
        """Download into the base-image cache and verify Glance's multihash."""
        image_id = image["id"]
        cached = self.root / "_base" / image_id
        if cached.exists():
            return cached
        algo, expected = image.get("os_hash_algo") or "sha512", image.get("os_hash_value")
        digest = hashlib.new(algo)
        partial = cached.with_suffix(".part")
        try:
            url = f"{self.glance}/v2/images/{image_id}/file"
            with urllib.request.urlopen(url, timeout=60) as r, partial.open("wb") as out:
                while chunk := r.read(1 << 20):
                    if self._closing.is_set():
                        raise _Fault("rebuild abandoned: the double is closing")
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise _Fault(f"Image {image_id} could not be downloaded from Glance: {exc}") from None
        if digest.hexdigest() != expected:
            partial.unlink(missing_ok=True)
            raise _Fault(
                f"Image {image_id} failed verification: {algo} of the downloaded data "
                f"does not match Glance's os_hash_value"
            )
        partial.rename(cached)
        return cached

    def _spawn(self, base: Path, image: dict[str, Any]) -> None:
        fmt = image.get("disk_format")
        if fmt not in ("qcow2", "raw"):
            raise _Fault(f"Image {image['id']}: disk_format {fmt!r} is not bootable here")
        disk = self.root / "disk"
        disk.unlink(missing_ok=True)  # the root disk is replaced; the base stays cached
        made = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", fmt, str(disk)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if made.returncode != 0:
            raise _Fault(f"Image {image['id']} is not a usable {fmt} disk: {made.stderr.strip()}")
        self._boots += 1
        workdir = self.root / f"boot-{self._boots}"
        if not self.boot:
            workdir.mkdir(parents=True, exist_ok=True)
            self._last_serial = workdir / "serial.log"
            self._last_serial.write_text(
                f"nova-double: no-boot mode: root disk of image {image['id']} made, no VM\n"
            )
            return
        for attempt in (1, 2):
            machine = Machine(
                BootImage.uefi(base, fmt),
                workdir,
                overlay=disk,
                extra_drives=self.volumes,
                host_forwards=GUEST_PORTS,
                host_ports={"ssh": self.ssh_port, "http": self.http_port,
                            "https": self.https_port},
                uuid=self.server.id,  # machine_id=firmware: stable across rebuilds
                ssh_key=self.ssh_key,
                ssh_key_via_smbios=False,
                memory_mb=self.memory_mb,
            )  # fmt: skip
            try:
                machine.start()
                self.machine = machine
                self._wait_started(machine)
                return
            except (GuestPanic, QemuExited) as exc:
                machine.shutdown(timeout=5)
                self.machine = None
                self._last_serial = machine.serial_log
                if attempt == 2:
                    raise _Fault(f"the domain died twice before userspace: {exc}") from None
                machine.serial_log.replace(workdir / f"serial.died-{attempt}.log")
                log.warning(
                    "nova-double: domain died early (%s), booting again", type(exc).__name__
                )
            except MachineError as exc:
                machine.shutdown(timeout=5)
                self.machine = None
                self._last_serial = machine.serial_log
                raise _Fault(f"QEMU did not start the domain: {exc}") from None

    def _wait_started(self, machine: Machine) -> None:
        deadline = time.monotonic() + ACTIVE_GRACE
        while time.monotonic() < deadline and not self._closing.is_set():
            machine.check_alive()
            if machine.serial_log.exists() and _USERSPACE.search(machine.serial_log.read_bytes()):
                return
            time.sleep(1)

    @staticmethod
    def _credstore_seed(seed: Path, credentials: Mapping[str, str | bytes]) -> Path:
        """A directory tree for the data volume: ``aurora/credstore`` 0700, files 0600."""
        shutil.rmtree(seed, ignore_errors=True)
        store = seed / CREDSTORE
        store.mkdir(parents=True)
        store.chmod(0o700)
        for name, value in credentials.items():
            if not re.fullmatch(r"[A-Za-z0-9_.@-]+", name):
                raise ValueError(f"invalid credential name {name!r}")
            path = store / name
            path.write_bytes(value.encode() if isinstance(value, str) else value)
            path.chmod(0o600)
        return seed


def serial_tail(double: NovaDouble, n: int = 40) -> str:
    """The console tail of the double's current or last domain, for failure reports."""
    path = double.serial_log
    return tail_text(path, n) if path is not None else "<no domain booted yet>"
