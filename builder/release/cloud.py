"""The OpenStack side of a release: Glance images and one Nova server.

A thin adapter over openstacksdk so the release modules see plain dataclasses
and typed, one-line errors instead of SDK resources and keystoneauth
exceptions. The connection is the openstack CLI's: a clouds.yaml entry
(`deploy.cloud`), else `OS_CLOUD`, else the `OS_*` variables.

Real-Glance behaviours this module works around, so callers need not:
- custom properties are written by image id (`update_image` given an Image
  object rewrites them from its stale copy);
- every read fetches the image again (the object `create_image` returns is
  stale as soon as data is uploaded);
- Glance inspects uploaded data and refuses bytes that are not the declared
  disk format, and an image whose upload failed cannot be uploaded again:
  such an image is deleted and created anew by the caller.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from builder.errors import AuroraError

# Glance properties the SDK models as attributes rather than in `.properties`.
_KNOWN_PROPERTIES = (
    "hw_machine_type",
    "hw_disk_bus",
    "hw_scsi_model",
    "hw_qemu_guest_agent",
    "os_distro",
    "os_type",
)
CHUNK = 1 << 20
FIX_CONFIG = "check clouds.yaml / OS_CLOUD / the OS_* variables and the network"


class CloudError(AuroraError):
    """An OpenStack call failed; the message names the cloud, the endpoint and a fix."""


class CloudUnreachable(CloudError):
    """No answer from a service (or no usable configuration to find it)."""


class ImageNotFound(CloudError):
    """No such image in Glance."""


class ServerNotFound(CloudError):
    """No such server in Nova."""


@dataclass(frozen=True)
class GlanceImage:
    """An image as Glance reports it now (never a cached SDK object)."""

    id: str
    name: str
    status: str
    size: int | None
    hash_algo: str | None
    hash_value: str | None
    created_at: str
    updated_at: str
    tags: tuple[str, ...]
    properties: dict[str, str] = field(default_factory=dict)
    hidden: bool = False

    def prop(self, key: str) -> str | None:
        return self.properties.get(key)


@dataclass(frozen=True)
class Server:
    """A Nova server: its state, the image it runs and its addresses (floating first)."""

    id: str
    name: str
    status: str
    task_state: str | None
    image_id: str | None
    addresses: tuple[str, ...]
    fault: str | None = None


class Cloud:
    """Glance and Nova calls for one cloud; every SDK failure leaves as a CloudError."""

    #: Seconds between polls of a rebuilding server (a real one takes minutes; the
    #: unit tests' Nova double, which boots nothing, finishes in well under one).
    rebuild_poll: float = 2.0

    def __init__(self, conn: Any, name: str) -> None:
        self._conn = conn
        self.name = name

    @classmethod
    def connect(cls, cloud: str | None) -> Cloud:
        """Connect the way the openstack CLI does (nothing is contacted yet)."""
        import openstack
        from openstack import exceptions as sdk_exc

        label = cloud or "(OS_CLOUD / OS_* variables)"
        try:
            conn = openstack.connect(cloud=cloud) if cloud else openstack.connect()
        except sdk_exc.ConfigException as exc:
            where = os.environ.get("OS_CLIENT_CONFIG_FILE") or (
                "./clouds.yaml, ~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml"
            )
            raise CloudUnreachable(
                f"cloud {label}: {_first_line(exc).rstrip('.')} in {where}; add it there "
                "(an application credential), or pass --cloud / set deploy.cloud"
            ) from None
        except Exception as exc:
            raise CloudUnreachable(f"cloud {label}: {_first_line(exc)}; {FIX_CONFIG}") from None
        return cls(conn, cloud or getattr(conn.config, "name", None) or label)

    # -- error translation -------------------------------------------------

    def endpoint(self, service: str) -> str:
        """Where `service` is reached: an endpoint override, else the auth URL."""
        try:
            url = self._conn.config.get_endpoint(service)
        except Exception:
            url = None
        auth = (self._conn.config.config.get("auth") or {}).get("auth_url")
        return str(url or auth or "(no endpoint configured)")

    @contextmanager
    def _call(self, service: str, what: str, missing: type[CloudError] | None = None) -> Iterator:
        from keystoneauth1 import exceptions as ks_exc
        from openstack import exceptions as sdk_exc

        where = f"cloud {self.name}: {service} at {self.endpoint(service)}"
        try:
            yield
        except sdk_exc.NotFoundException as exc:
            cls = missing or CloudError
            raise cls(f"{where}: {what}: not found ({_first_line(exc)})") from None
        except (ks_exc.ConnectionError, ks_exc.DiscoveryFailure, ks_exc.EndpointNotFound) as exc:
            raise CloudUnreachable(
                f"{where}: {what}: unreachable ({_first_line(exc)}); {FIX_CONFIG}"
            ) from None
        except (ks_exc.auth_plugins.AuthPluginException, ks_exc.Unauthorized) as exc:
            raise CloudUnreachable(
                f"{where}: {what}: not authenticated ({_first_line(exc)}); "
                "check the application credential in clouds.yaml or OS_*"
            ) from None
        except (sdk_exc.SDKException, ks_exc.ClientException) as exc:
            raise CloudError(
                f"{where}: {what} failed ({_first_line(exc)}); retry, or see the service's log"
            ) from None

    # -- Glance ------------------------------------------------------------

    def images(self, tag: str, *, hidden: bool = False) -> list[GlanceImage]:
        """Every image carrying `tag`, newest first (`hidden`: only hidden ones)."""
        query: dict[str, Any] = {"tag": [tag]}
        if hidden:
            query["is_hidden"] = True
        with self._call("image", f"listing images tagged {tag!r}"):
            found = [_image(i) for i in self._conn.image.images(**query)]
        return sorted(found, key=lambda i: (i.created_at, i.id), reverse=True)

    def image(self, image_id: str) -> GlanceImage:
        with self._call("image", f"image {image_id}", ImageNotFound):
            return _image(self._conn.image.get_image(image_id))

    def create_image(
        self,
        name: str,
        *,
        disk_format: str,
        tags: list[str],
        properties: dict[str, str],
        hidden: bool = False,
    ) -> GlanceImage:
        """A private, queued image record (`hidden`: left out of default listings);
        the data comes with `upload`."""
        from openstack.image.v2.image import Image

        with self._call("image", f"creating image {name}"):
            created = Image.new(
                name=name,
                disk_format=disk_format,
                container_format="bare",
                visibility="private",
                is_hidden=hidden,
                tags=tags,
                **properties,
            ).create(self._conn.image)
        return self.image(created.id)

    def upload(self, image_id: str, path: Path, progress: Callable[[int], None]) -> None:
        """Stream `path` into the queued image, calling `progress` with each chunk's size."""
        from openstack.image.v2.image import Image

        size = path.stat().st_size
        with self._call("image", f"uploading {path.name} into image {image_id}", ImageNotFound):
            with path.open("rb") as handle:
                response = Image.existing(id=image_id).upload(
                    self._conn.image, data=_Counting(handle, progress), size=size
                )
            if response.status_code >= 400:
                detail = " ".join(response.text.split())[-200:]
                raise CloudError(
                    f"cloud {self.name}: image at {self.endpoint('image')}: upload of "
                    f"{path.name} refused with HTTP {response.status_code} ({detail})"
                )

    def download(self, image_id: str) -> bytes:
        """A small image's data, whole (the SDK checks it against Glance's hash)."""
        with self._call("image", f"downloading image {image_id}", ImageNotFound):
            return bytes(self._conn.image.download_image(image_id).content)

    def set_properties(self, image_id: str, **properties: str) -> GlanceImage:
        """Add or replace properties (by id: an Image object would rewrite the others)."""
        with self._call("image", f"updating properties of image {image_id}", ImageNotFound):
            self._conn.image.update_image(image_id, **properties)
        return self.image(image_id)

    def set_hidden(self, image_id: str, hidden: bool) -> None:
        """Hide an image from default image lists (`os_hidden`); it stays bootable by id."""
        with self._call("image", f"setting os_hidden of image {image_id}", ImageNotFound):
            self._conn.image.update_image(image_id, is_hidden=hidden)

    def delete_image(self, image_id: str) -> None:
        with self._call("image", f"deleting image {image_id}"):
            self._conn.image.delete_image(image_id, ignore_missing=True)

    def wait_image(self, image_id: str, timeout: float) -> GlanceImage:
        """Poll until the image leaves queued/saving/importing; return it as it then is."""
        deadline = time.monotonic() + timeout
        while True:
            image = self.image(image_id)
            if image.status not in ("queued", "saving", "importing", "uploading"):
                return image
            if time.monotonic() > deadline:
                raise CloudError(
                    f"cloud {self.name}: image {image.name} ({image_id}) still {image.status} "
                    f"after {timeout:.0f} s; retry the promote, it replaces an unfinished upload"
                )
            time.sleep(1)

    # -- Nova --------------------------------------------------------------

    def server(self, name_or_id: str) -> Server:
        from openstack import exceptions as sdk_exc

        with self._call("compute", f"server {name_or_id!r}", ServerNotFound):
            try:
                found = self._conn.compute.find_server(name_or_id, ignore_missing=False)
            except sdk_exc.NotFoundException:
                raise ServerNotFound(
                    f"cloud {self.name}: compute at {self.endpoint('compute')}: no server "
                    f"named {name_or_id!r}; check deploy.server in the spec or --server"
                ) from None
            return _server(self._conn.compute.get_server(found.id))

    def rebuild(self, server_id: str, image_id: str) -> None:
        """Ask Nova to rebuild (root disk replaced; volumes, ports and addresses kept)."""
        with self._call("compute", f"rebuilding server {server_id}", ServerNotFound):
            self._conn.compute.rebuild_server(server_id, image=image_id)

    def wait_rebuilt(self, server_id: str, image_id: str, timeout: float) -> Server:
        """Poll until the rebuild has finished (ACTIVE on the image, or ERROR/timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            server = self._server_now(server_id)
            settled = server.status != "REBUILD" and not server.task_state
            if settled and (server.status == "ERROR" or server.image_id == image_id):
                return server
            if time.monotonic() > deadline:
                return server
            time.sleep(self.rebuild_poll)

    def console_output(self, server_id: str, lines: int = 2000) -> str:
        """The server's console log (its serial console), the last `lines` lines."""
        with self._call("compute", f"console log of server {server_id}", ServerNotFound):
            found = self._conn.compute.get_server_console_output(server_id, length=lines)
        return str((found or {}).get("output") or "")

    def server_metadata(self, server_id: str) -> dict[str, str]:
        """The server's metadata as Nova holds it now (what every operator sees)."""
        with self._call("compute", f"metadata of server {server_id}", ServerNotFound):
            raw = self._conn.compute.fetch_server_metadata(server_id)
        return {str(k): str(v) for k, v in (raw.metadata or {}).items()}

    def set_server_metadata(self, server_id: str, **items: str) -> None:
        """Add or replace metadata items (Nova leaves the others as they are)."""
        with self._call("compute", f"setting metadata of server {server_id}", ServerNotFound):
            self._conn.compute.set_server_metadata(server_id, **items)

    def delete_server_metadata(self, server_id: str, keys: list[str]) -> None:
        """Remove metadata items; an item already gone is not an error."""
        present = self.server_metadata(server_id)
        gone = [k for k in keys if k in present]
        if not gone:
            return
        with self._call("compute", f"deleting metadata of server {server_id}", ServerNotFound):
            self._conn.compute.delete_server_metadata(server_id, gone)

    def _server_now(self, server_id: str) -> Server:
        with self._call("compute", f"server {server_id}", ServerNotFound):
            return _server(self._conn.compute.get_server(server_id))


class _Counting:
    """A read-only file wrapper that reports bytes read (for the upload's progress bar)."""

    def __init__(self, handle: BinaryIO, progress: Callable[[int], None]) -> None:
        self._handle = handle
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(CHUNK if size is None or size < 0 else size)
        self._progress(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK):
            yield chunk

    def fileno(self) -> int:
        return self._handle.fileno()

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def _image(raw: Any) -> GlanceImage:
    properties = {k: str(v) for k, v in (raw.properties or {}).items() if v is not None}
    for key in _KNOWN_PROPERTIES:
        value = getattr(raw, key, None)
        if value is not None:
            properties[key] = str(value)
    return GlanceImage(
        id=raw.id,
        name=raw.name or "",
        status=raw.status or "",
        size=raw.size,
        hash_algo=raw.hash_algo,
        hash_value=raw.hash_value,
        created_at=raw.created_at or "",
        updated_at=raw.updated_at or "",
        tags=tuple(sorted(raw.tags or ())),
        properties=properties,
        hidden=bool(getattr(raw, "is_hidden", False)),
    )


def _server(raw: Any) -> Server:
    image = raw.image or {}
    image_id = image.get("id") if isinstance(image, dict) else getattr(image, "id", None)
    floating: list[str] = []
    fixed: list[str] = []
    for entries in (raw.addresses or {}).values():
        for entry in entries:
            kind = entry.get("OS-EXT-IPS:type")
            if entry.get("version", 4) == 4 and entry.get("addr"):
                (floating if kind == "floating" else fixed).append(entry["addr"])
    fault = raw.fault if isinstance(raw.fault, dict) else {}
    return Server(
        id=raw.id,
        name=raw.name or "",
        status=raw.status or "",
        task_state=getattr(raw, "task_state", None),
        image_id=image_id or None,
        addresses=tuple(floating + fixed),
        fault=str(fault["message"]) if fault.get("message") else None,
    )
