"""The host spec: a typed, validated model of one host, loaded from YAML.

Every check that can be made before an image is built is made here, so a
mistake costs a second, not a build. Errors name the file, the line, the key
path and the fix, on one line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from builder.errors import SpecError
from builder.systemd_values import parse_timespan, validate_calendar
from builder.yaml_lines import SpecSyntaxError, line_for, load_yaml_with_lines


def _absolute(value: str) -> str:
    if not PurePosixPath(value).is_absolute():
        raise ValueError(f"path {value!r} must be absolute (start with /)")
    return str(PurePosixPath(value))


def _relative(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not value:
        raise ValueError(f"{value!r} must be a relative path below its root, without '..'")
    return str(path)


def _timespan(value: str) -> str:
    parse_timespan(str(value))
    return str(value)


def _calendar(value: str) -> str:
    return validate_calendar(str(value))


_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def _unit_name_part(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{value!r} must be lower-case letters, digits and '-'")
    return value


AbsPath = Annotated[str, AfterValidator(_absolute)]
RelPath = Annotated[str, AfterValidator(_relative)]
TimeSpan = Annotated[str, AfterValidator(_timespan)]
Calendar = Annotated[str, AfterValidator(_calendar)]
Name = Annotated[str, AfterValidator(_unit_name_part)]


class Model(BaseModel):
    """Strict base: unknown keys are errors, models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _unique_by(key: str, what: str) -> Callable[[list[Any]], list[Any]]:
    """A list validator: items must differ in `key` (errors point at the list)."""

    def check(items: list[Any]) -> list[Any]:
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            value = getattr(item, key)
            if value in seen:
                raise ValueError(
                    f"duplicate {what} {value!r} at [{index}] (first at [{seen[value]}])"
                )
            seen[value] = index
        return items

    return check


class User(Model):
    name: Name
    uid: int = Field(ge=1000, lt=60000)
    home: AbsPath
    shell: AbsPath = "/bin/bash"


class Storage(Model):
    mode: Annotated[str, Field(pattern=r"^0?[0-7]{3,4}$")] = "02775"
    raw_root: AbsPath
    raw_dirs: list[RelPath]
    product_root: AbsPath
    product_dirs: list[RelPath]
    log_dir: AbsPath
    state_dir: AbsPath


class AppSource(Model):
    """Where the dashboard app comes from: a local tree or a git commit."""

    path: str | None = None
    git: str | None = None
    ref: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AppSource:
        if (self.path is None) == (self.git is None):
            raise ValueError("give exactly one of 'path' (local tree) or 'git' (URL with 'ref')")
        if self.git is not None and not self.ref:
            raise ValueError("'git' needs 'ref': the commit to build, so builds do not float")
        return self


class Dashboard(Model):
    app: AppSource
    checkout: AbsPath
    entry: str = "app.py"
    address: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    websocket_origins: list[str]
    static_dirs: dict[str, AbsPath] = {}
    keep_alive: TimeSpan
    check_unused_sessions: TimeSpan
    unused_session_lifetime: TimeSpan
    session_token_expiration: TimeSpan
    num_procs: int = Field(default=1, ge=1)
    requirements: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-\[\]]+==[\w.+!-]+$")]]

    @property
    def venv(self) -> str:
        return f"{self.checkout}/venv"


class WxcamMedia(Model):
    location: Annotated[str, Field(pattern=r"^/.*/$")]
    root: AbsPath


class Nginx(Model):
    wxcam_media: WxcamMedia
    proxy_timeout: TimeSpan = "3600s"
    # Let's Encrypt state lives on the persistent volume; /etc/letsencrypt links here.
    certificate_dir: AbsPath
    security_headers: list[str] = [
        'X-Content-Type-Options "nosniff"',
        'X-Frame-Options "SAMEORIGIN"',
        'Referrer-Policy "strict-origin-when-cross-origin"',
    ]


class Schedule(Model):
    """A timer's schedule: a calendar expression and/or monotonic intervals."""

    calendar: Calendar | None = None
    on_boot: TimeSpan | None = None
    on_active: TimeSpan | None = None
    every: TimeSpan | None = None
    every_after_finish: TimeSpan | None = None
    jitter: TimeSpan | None = None
    persistent: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if self.calendar is None and self.every is None and self.every_after_finish is None:
            raise ValueError("give 'calendar' (e.g. '*:02/5') or 'every' (e.g. 2min)")
        return self


class SyncDefaults(Model):
    on_boot: TimeSpan = "2min"
    every: TimeSpan = "2min"
    jitter: TimeSpan = "30s"
    persistent: bool = True
    after: list[str] = ["network-online.target"]
    # The sources are reached over the tailnet: without it, skip instead of fail.
    condition_path_exists: AbsPath | None = None

    @property
    def schedule(self) -> Schedule:
        return Schedule(
            on_boot=self.on_boot, every=self.every, jitter=self.jitter, persistent=self.persistent
        )


class Stream(Model):
    """One instrument stream pulled from its source host into the raw mirror."""

    name: Name
    label: str
    description: str
    enabled: bool = True
    host: str
    user: str | None = None
    path: AbsPath
    dest: RelPath
    mode: Literal["incremental", "mirror"] = "incremental"
    patterns: list[str] = []
    lookback_days: int | None = Field(default=None, ge=1)
    stamp_regex: str | None = None
    min_stamp: Annotated[str, Field(pattern=r"^\d+$")] | None = None
    start_fresh: bool = False
    filters: list[Annotated[str, Field(pattern=r"^[+-] \S")]] = []
    delete_excluded: bool = False
    identity: AbsPath | None = None
    port: int = 22
    timeout: TimeSpan | None = None

    @model_validator(mode="after")
    def _mode_fields(self) -> Stream:
        if self.mode == "incremental" and not self.patterns:
            raise ValueError("an incremental stream needs 'patterns' (file name globs)")
        if self.mode == "mirror" and not self.filters:
            raise ValueError("a mirror stream needs 'filters' (rsync rules like '+ HDR_*.jpg')")
        if (self.stamp_regex is None) != (self.min_stamp is None):
            raise ValueError("'stamp_regex' and 'min_stamp' go together")
        if self.stamp_regex is not None:
            try:
                if re.compile(self.stamp_regex).groups < 1:
                    raise ValueError("'stamp_regex' needs one capture group around the stamp")
            except re.error as exc:
                raise ValueError(f"'stamp_regex' is not a valid regex: {exc}") from None
        return self


class SourceSync(Model):
    defaults: SyncDefaults = SyncDefaults()
    streams: Annotated[list[Stream], AfterValidator(_unique_by("name", "stream name"))]


class Mount(Model):
    """A persistent volume: mounted by the image, never owned by it."""

    where: AbsPath
    what: str
    type: str
    options: str = "defaults,nofail,x-systemd.device-timeout=30s"

    @property
    def unit_part(self) -> str:
        """The mount path as systemd escapes it ("/data" -> "data")."""
        return self.where.strip("/").replace("-", "\\x2d").replace("/", "-")


_SCRIPT = re.compile(r"(?:^|[\s/])([\w.-]+\.py)\b")


class Job(Model):
    """A processing job: one of the dashboard app's scripts on a timer."""

    name: Name
    description: str
    timer_description: str
    enabled: bool = True
    schedule: Schedule
    command: str
    after: list[str] = ["network-online.target"]
    wants: list[str] | None = None
    exec_condition: str | None = None
    io_best_effort: bool = False
    timeout: TimeSpan | None = None

    @property
    def script(self) -> str:
        """The app script the job runs: absent in an app version, the job is skipped."""
        found = _SCRIPT.search(self.command)
        if not found:
            raise ValueError(f"job {self.name}: no .py script in its command")
        return found.group(1)

    @property
    def wanted(self) -> list[str]:
        if self.wants is not None:
            return self.wants
        return ["network-online.target"] if "network-online.target" in self.after else []

    @model_validator(mode="after")
    def _has_script(self) -> Job:
        if not _SCRIPT.search(self.command):
            raise ValueError("'command' must run one of the app's .py scripts")
        return self


class GwsJob(Model):
    """One push of a local tree to the GWS, with failover across transfer hosts."""

    name: Name
    source: AbsPath
    dest: RelPath
    calendar: Calendar
    excludes: list[str] = []
    timeout: TimeSpan | None = None
    enabled: bool = True


class GwsMount(Model):
    enabled: bool = False
    where: AbsPath
    host: str
    options: list[str] = []


class Gws(Model):
    user: str
    hosts: list[str] = Field(min_length=1)
    root: AbsPath
    identity: AbsPath
    log_dir: AbsPath
    timeout: TimeSpan = "6h"
    jitter: TimeSpan = "60s"
    jobs: Annotated[list[GwsJob], AfterValidator(_unique_by("name", "GWS job name"))]
    mount: GwsMount


class Settle(Model):
    local: TimeSpan
    gws: TimeSpan
    products: TimeSpan


class Checksum(Model):
    mode: Literal["none", "spot", "full"] = "spot"
    spot_modulus: int = Field(default=10, ge=1)


class MirrorVerify(Model):
    """Manifests of source, local and GWS copies, so pruning is decided on evidence."""

    enabled: bool = True
    calendar: Calendar
    jitter: TimeSpan = "60s"
    manifest_root: AbsPath
    keep: int = Field(default=48, ge=1)
    settle: Settle
    checksum: Checksum = Checksum()


_UFW_PORT = r"^\d{1,5}(:\d{1,5})?(/(tcp|udp))?$"


class Firewall(Model):
    """ufw policy, applied when the image is built (the root is read-only at run time)."""

    default_incoming: Literal["deny", "reject", "allow"] = "deny"
    allow: list[Annotated[str, Field(pattern=_UFW_PORT)]]
    deny: list[Annotated[str, Field(pattern=_UFW_PORT)]] = []

    def rules(self) -> list[str]:
        return [f"allow {p}" for p in self.allow] + [f"deny {p}" for p in self.deny]


class Debian(Model):
    """Where Debian packages come from. A snapshot pins the whole archive in time,
    so the same lock builds the same image; without one the build warns when
    the archive has moved on from locks/debian-packages.txt."""

    mirror: Annotated[str, Field(pattern=r"^https?://\S+[^/]$")] = "http://deb.debian.org/debian"
    security_mirror: Annotated[str, Field(pattern=r"^https?://\S+[^/]$")] = (
        "http://deb.debian.org/debian-security"
    )
    snapshot: Annotated[str, Field(pattern=r"^\d{8}T\d{6}Z$")] | None = None

    def urls(self) -> tuple[str, str]:
        if self.snapshot is None:
            return self.mirror, self.security_mirror
        base = "http://snapshot.debian.org/archive"
        return f"{base}/debian/{self.snapshot}", f"{base}/debian-security/{self.snapshot}"


class AptRepository(Model):
    """An extra Debian repository (e.g. Tailscale's) the image installs packages from."""

    name: Name
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    suite: str
    components: list[str] = ["main"]
    # The repository's signing key, relative to the spec file; its bytes are a build input.
    key: str


class Tailscale(Model):
    """Joining the instrument tailnet; the client comes from an extra repository."""

    enabled: bool = False
    auth_credential: str = "tailscale.authkey"
    ssh: bool = True


class Secret(Model):
    """A secret's name and where it is installed at boot; never its value."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    purpose: str
    path: AbsPath | None = None
    mode: Annotated[str, Field(pattern=r"^0[0-7]{3}$")] = "0600"
    owner: str = "root"
    format: Literal["raw", "msmtprc"] = "raw"


class Deploy(Model):
    """Where releases of this image go on JASMIN Cloud, and how the probe reaches it.

    Not part of the image's behaviour: the release tooling reads it, and every
    field can be overridden on the command line.
    """

    # clouds.yaml entry; None uses OS_CLOUD / the OS_* variables like the openstack CLI.
    cloud: str | None = None
    server: str = "aurora"
    # Address the probe uses; None takes the server's address from Nova.
    address: str | None = None
    ssh_user: str = "root"
    ssh_port: Annotated[int, Field(ge=1, le=65535)] = 22
    http_port: Annotated[int, Field(ge=1, le=65535)] = 80
    https_port: Annotated[int, Field(ge=1, le=65535)] = 443
    probe_timeout: TimeSpan = "10min"
    # Images kept in Glance by `glance-prune` (the live one and its predecessor always are).
    keep_images: Annotated[int, Field(ge=2)] = 3


_SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|AUTHKEY|PRIVATE", re.IGNORECASE)


def _env_name(key: str) -> str:
    if _SECRET_KEY.search(key):
        raise ValueError(
            f"{key!r} looks like a secret: secrets are credentials given at boot, "
            "declare its name under 'secrets' instead"
        )
    if not re.match(r"^[A-Z_][A-Z0-9_]*$", key):
        raise ValueError(f"{key!r} is not a valid environment variable name")
    return key


EnvName = Annotated[str, AfterValidator(_env_name)]


class HostSpec(Model):
    release: Annotated[str, Field(pattern=r"^[0-9][0-9A-Za-z.]*$")]
    hostname: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")]
    user: User
    packages: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]+$")]]
    debian: Debian = Debian()
    apt_repositories: list[AptRepository] = []
    tailscale: Tailscale = Tailscale()
    storage: Storage
    firewall: Firewall
    mounts: Annotated[list[Mount], AfterValidator(_unique_by("where", "mount point"))] = []
    dashboard: Dashboard
    environment: dict[EnvName, str] = {}
    nginx: Nginx
    source_sync: SourceSync
    jobs: Annotated[list[Job], AfterValidator(_unique_by("name", "job"))] = []
    gws: Gws
    mirror_verify: MirrorVerify
    secrets: Annotated[list[Secret], AfterValidator(_unique_by("name", "secret"))] = []
    # Where the host finds its credentials when none came with the boot (JASMIN):
    # /etc/credstore points here, on the persistent /data volume, root-only.
    credential_store: AbsPath = "/data/aurora/credstore"
    deploy: Deploy = Deploy()


def _format_loc(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _model_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Drop pydantic's internal location parts (union branches, validator names)."""
    return tuple(p for p in loc if isinstance(p, int) or not ("[" in p or p.startswith("function")))


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Overlay wins; mappings merge key by key, lists and scalars are replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[Any, int]]:
    """Read a spec file, applying it over its `base:` spec if it names one."""
    try:
        data, lines = load_yaml_with_lines(path)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such host spec (give an existing YAML file)") from None
    except SpecSyntaxError as exc:
        raise SpecError(str(exc)) from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}:1: a host spec is a YAML mapping of keys")
    base = data.pop("base", None)
    if base is None:
        return data, lines
    base_path = (path.parent / str(base)).resolve()
    if base_path in seen:
        raise SpecError(f"{path}:{lines.get(('base',), 1)}: base: {base} includes itself")
    base_data, _ = _read(base_path, (*seen, path.resolve()))
    return _merge(base_data, data), lines


def load_spec(path: Path) -> HostSpec:
    """Load and validate a host spec; raise SpecError with a one-line message."""
    data, lines = _read(path)
    try:
        return HostSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _model_loc(tuple(err["loc"]))
        line = line_for(lines, loc) or 1
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check its spelling against docs/spec.md)"
        elif err["type"] == "missing":
            message = "required key is missing"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise SpecError(f"{path}:{line}: {_format_loc(loc)}: {message}{more}") from None


def app_source_dir(spec: HostSpec, spec_path: Path) -> Path | None:
    """The local app tree, resolved relative to the spec file (None for git apps)."""
    if spec.dashboard.app.path is None:
        return None
    return (spec_path.parent / spec.dashboard.app.path).resolve()
