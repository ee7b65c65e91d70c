"""The host spec: a typed, validated model of one host, loaded from YAML.

Every check that can be made before an image is built is made here, so a
mistake costs a second, not a build. Errors name the file, the line, the key
path and the fix, on one line.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from builder.errors import SpecError, SpecProblem
from builder.spec import credcheck
from builder.spec.errors import spec_error
from builder.spec.systemd_values import parse_timespan, validate_calendar
from builder.spec.yaml_lines import load_yaml_with_lines

# Character sets, one per value class. Values land in unit files, tmpfiles,
# fstab, nginx and JSON; each class admits only what its value needs, so no
# value can end a line, open a section, add a directive or field, or reach a
# shell. `%` and `$` in free text are escaped where systemd would expand them
# (builder.spec.systemd_values.escape_*). Control characters are refused in every
# string by Model.
_PATH_CHARS = r"[A-Za-z0-9._+@/-]"
_CHARSETS: dict[str, tuple[str, str]] = {
    "path": (rf"{_PATH_CHARS}+", "a path of letters, digits and . _ + @ / -"),
    "host": (
        r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*",
        "a host name or an IP address",
    ),
    "origin": (
        r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:\d{1,5})?",
        "a host name, optionally with :port",
    ),
    "user": (r"[a-z_][a-z0-9_.-]{0,31}", "a user name: lower-case letters, digits, _ . -"),
    "unit": (
        r"[A-Za-z0-9:_.\\@-]+\.(service|socket|target|timer|mount|automount|path|slice|scope"
        r"|device|swap)",
        "a unit name such as network-online.target",
    ),
    "glob": (
        r"[A-Za-z0-9._*?!^\[\]{},/+@=:~-]+",
        "a glob of letters, digits and . _ * ? [ ] { } , / + @ = : ~ -",
    ),
    "filter": (r"[+-] [A-Za-z0-9._*?!^\[\]{},/+@=:~-]+", "an rsync rule '+ GLOB' or '- GLOB'"),
    "text": (r"[^\\]*", "text without backslashes"),
    "command": (r".*[^\\]", "a command that does not end in a backslash"),
    "env": (r"[^'\"\\`$]*", "text without quotes, backslashes, backticks or $"),
    "url": (r"(https?|ssh|git)://[A-Za-z0-9._~:/?#@!&()*+,;=%-]+", "an http(s)/ssh/git URL"),
    "git": (
        r"(https?|ssh|git|file)://[A-Za-z0-9._~:/?#@!&()*+,;=%-]+|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._/-]+",
        "a git URL (https://, ssh://, file:// or user@host:path)",
    ),
    "ref": (r"[A-Za-z0-9._][A-Za-z0-9._/-]*", "a commit, tag or branch name"),
    "word": (r"[A-Za-z0-9][A-Za-z0-9._-]*", "a name of letters, digits and . _ -"),
    "apt_suite": (r"[A-Za-z0-9][A-Za-z0-9._/-]*", "an apt suite such as trixie"),
    "mount_what": (r"[A-Za-z0-9._:/,=@+-]+", "LABEL=..., UUID=... or a device or network source"),
    "fstype": (r"[a-z0-9][a-z0-9._]*", "a file system type such as ext4"),
    "mount_options": (r"[A-Za-z0-9._,=/:@+-]+", "comma-separated options without spaces"),
    "mount_option": (r"[A-Za-z0-9._=/:@+-]+", "one option without commas or spaces"),
    "location": (r"/([A-Za-z0-9._~-]+/)*", "a URL prefix like /wxcam-media/"),
    "public_key": (
        r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
        r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [A-Za-z0-9@._+-]+)?",
        "an OpenSSH public key line: TYPE BASE64 [COMMENT], without options",
    ),
    "header": (
        r"[A-Za-z0-9-]+ \"[^\"\\$]*\"",
        'Name "value" (the value without double quotes, backslashes or $)',
    ),
}


def _charset(kind: str) -> Callable[[str], str]:
    pattern, what = _CHARSETS[kind]
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            credcheck.check_value(value)  # a secret is named, never repeated
            raise ValueError(f"{value!r} must be {what}")
        return value

    return check


def _text_of(kind: str) -> Any:
    return Annotated[str, AfterValidator(_charset(kind))]


# Unicode categories refused in every string: control characters (newline,
# tab, ESC ...), format characters (bidi overrides), line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a field's value (itself, list items, mapping keys and values),
    with where it sits in the field (`[0]`, `.KEY`) for the refusal."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key, where)
            yield from _strings(item, f"{where}.{key}")


def _no_control(value: Any) -> None:
    for where, text in _strings(value):
        prefix = f"{where.lstrip('.')}: " if where else ""
        try:
            credcheck.check_value(text)  # first: the refusal must not repeat a secret
        except ValueError as exc:
            raise ValueError(f"{prefix}{exc}") from None
        bad = next((c for c in text if unicodedata.category(c) in _REFUSED_CATEGORIES), None)
        if bad is not None:
            raise ValueError(
                f"{prefix}{text!r} contains the control character U+{ord(bad):04X}: "
                "write it on one line without control characters"
            )


def _absolute(value: str) -> str:
    if not PurePosixPath(value).is_absolute():
        raise ValueError(f"path {value!r} must be absolute (start with /)")
    _charset("path")(value)
    if ".." in PurePosixPath(value).parts:
        raise ValueError(f"path {value!r} must not contain '..'")
    return str(PurePosixPath(value))


def _relative(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not value:
        raise ValueError(f"{value!r} must be a relative path below its root, without '..'")
    _charset("path")(value)
    if any(part.startswith("-") for part in path.parts):
        raise ValueError(f"{value!r}: a path part must not start with '-'")
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
LocalPath = _text_of("path")
Host = _text_of("host")
Origin = _text_of("origin")
UserName = _text_of("user")
UnitName = _text_of("unit")
Glob = _text_of("glob")
Text = _text_of("text")
Command = _text_of("command")
EnvValue = _text_of("env")
Url = _text_of("url")
Word = _text_of("word")
MountOption = _text_of("mount_option")
RelPath = Annotated[str, AfterValidator(_relative)]
TimeSpan = Annotated[str, AfterValidator(_timespan)]
Calendar = Annotated[str, AfterValidator(_calendar)]
Name = Annotated[str, AfterValidator(_unit_name_part)]


class Model(BaseModel):
    """Strict base: unknown keys are errors, models are immutable.

    Each field's docstring is its description in the spec reference
    (docs/reference/spec.md, written by builder.spec.reference).
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=False, use_attribute_docstrings=True
    )

    @field_validator("*", mode="after")
    @classmethod
    def _one_line(cls, value: Any) -> Any:
        """No string of the spec may carry a secret or a control character (a newline
        adds a line)."""
        _no_control(value)
        return value


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
    """Login name of the service user that runs the syncs, the jobs and the dashboard."""
    uid: int = Field(ge=1000, lt=60000)
    """Fixed uid and gid, so files on the persistent volumes keep their owner across images."""
    home: AbsPath
    """Home directory (bound from `/var`); SSH keys and `.msmtprc` are installed below it."""
    shell: AbsPath = "/bin/bash"
    """Login shell."""


class Storage(Model):
    mode: Annotated[str, Field(pattern=r"^0?[0-7]{3,4}$")] = "02775"
    """Mode of every directory made below the two roots (setgid, group-writable)."""
    raw_root: AbsPath
    """Root of the raw mirror on `/project`; each stream's `dest` is below it."""
    raw_dirs: list[RelPath]
    """Directories made below `raw_root` (owner: the user) once its volume is mounted."""
    product_root: AbsPath
    """Root of the derived products (Zarrs, quicklooks, catalogs, videos) on `/data`."""
    product_dirs: list[RelPath]
    """Directories made below `product_root` once its volume is mounted."""
    log_dir: AbsPath
    """Log directory of the Aurora services, made at boot."""
    state_dir: AbsPath
    """Sync and push state (`<stream>.last`, lock files), the path the programs use."""
    state_on_volume: AbsPath | None = None
    """Where `state_dir` really lives, on a persistent volume: `state_dir` becomes a link
    to it, so a rebuild (which replaces `/var`) does not reset the syncs' progress.
    Unset: `state_dir` is a plain directory on `/var`."""


class AppSource(Model):
    """Where the dashboard app comes from: a local tree or a git commit."""

    path: LocalPath | None = None
    """A local app tree, relative to the spec file (the sample app in `app/`)."""
    git: _text_of("git") | None = None
    """The app's git URL; needs `ref`. Cloned at build time, baked into the image."""
    ref: _text_of("ref") | None = None
    """The commit to build from `git`, so two builds of one spec get the same app."""

    @model_validator(mode="after")
    def _one_source(self) -> AppSource:
        if (self.path is None) == (self.git is None):
            raise ValueError("give exactly one of 'path' (local tree) or 'git' (URL with 'ref')")
        if self.git is not None and not self.ref:
            raise ValueError("'git' needs 'ref': the commit to build, so builds do not float")
        return self


class Dashboard(Model):
    app: AppSource
    """Where the Panel app comes from: a local `path`, or `git` with a pinned `ref`."""
    checkout: AbsPath
    """Where the app is installed in the image; its venv is `<checkout>/venv`."""
    user: Name = "aurora-panel"
    """The user Panel runs as: its own, holding no key (not the service user, which owns
    the SSH keys and `.msmtprc`); it reads the products and writes only its cache."""
    entry: RelPath = "app.py"
    """The app file `panel serve` runs, relative to `checkout`."""
    address: Host = "127.0.0.1"
    """Address Panel listens on; loopback, so only nginx reaches it."""
    port: int = Field(ge=1, le=65535)
    """Port Panel listens on (nginx proxies to it; the firewall denies it from outside)."""
    websocket_origins: list[Origin]
    """Origins allowed to open Panel's websocket (`--allow-websocket-origin`)."""
    static_dirs: dict[Word, AbsPath] = {}
    """URL name → directory Panel serves as static files (`--static-dirs`)."""
    keep_alive: TimeSpan
    """Websocket keep-alive ping interval (`--keep-alive`)."""
    check_unused_sessions: TimeSpan
    """How often Panel looks for unused sessions (`--check-unused-sessions`)."""
    unused_session_lifetime: TimeSpan
    """How long an unused session is kept (`--unused-session-lifetime`)."""
    session_token_expiration: TimeSpan
    """How long a session token is accepted (`--session-token-expiration`)."""
    num_procs: int = Field(default=1, ge=1)
    """Panel server processes (`--num-procs`)."""
    requirements: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-\[\]]+==[\w.+!-]+$")]]
    """The app's Python pins, `name==version`; `aurora-image lock` resolves them with hashes into
    `locks/app-requirements.txt`, which the build installs."""

    @property
    def venv(self) -> str:
        return f"{self.checkout}/venv"


class WxcamMedia(Model):
    location: _text_of("location")
    """URL prefix nginx serves the WXcam media under (starts and ends with `/`)."""
    root: AbsPath
    """Directory served there as static files, with byte ranges (MP4s stream over HTTP)."""


class Nginx(Model):
    wxcam_media: WxcamMedia
    """The static WXcam media location."""
    proxy_timeout: TimeSpan = "3600s"
    """Read and send timeout of the proxy to Panel (long-lived websockets)."""
    certificate_dir: AbsPath
    """Let's Encrypt state on the persistent volume; `/etc/letsencrypt` links here, and nginx
    switches to TLS once a certificate for `hostname` exists in it."""
    security_headers: list[_text_of("header")] = [
        'X-Content-Type-Options "nosniff"',
        'X-Frame-Options "SAMEORIGIN"',
        'Referrer-Policy "strict-origin-when-cross-origin"',
        # Panel's page: its own scripts (Bokeh evaluates some, and inlines its
        # document; Panel's ES-module shim loads blob: scripts), its websocket, images
        # as data: and blob: URLs; nothing else (checked in Chromium by the VM suite).
        "Content-Security-Policy \"default-src 'self'; script-src 'self' 'unsafe-inline' "
        "'unsafe-eval' blob:; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "font-src 'self' data:; connect-src 'self' ws: wss:; object-src 'none'; "
        "base-uri 'self'; frame-ancestors 'self'\"",
    ]
    """`add_header` values sent with every response."""


class Schedule(Model):
    """A timer's schedule: a calendar expression and/or monotonic intervals."""

    calendar: Calendar | None = None
    """`OnCalendar=`: a systemd calendar expression, e.g. `*:02/5` or `*-*-* 00:10:00`."""
    on_boot: TimeSpan | None = None
    """`OnBootSec=`: first run this long after boot."""
    on_active: TimeSpan | None = None
    """`OnActiveSec=`: first run this long after the timer starts."""
    every: TimeSpan | None = None
    """`OnUnitActiveSec=`: run again this long after the last run started."""
    every_after_finish: TimeSpan | None = None
    """`OnUnitInactiveSec=`: run again this long after the last run finished."""
    jitter: TimeSpan | None = None
    """`RandomizedDelaySec=`: random delay added to each run."""
    persistent: bool = True
    """`Persistent=`: catch up on a calendar run missed while the host was down."""

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if self.calendar is None and self.every is None and self.every_after_finish is None:
            raise ValueError("give 'calendar' (e.g. '*:02/5') or 'every' (e.g. 2min)")
        return self


class NetTimeouts(Model):
    """How long a transfer waits on a silent peer, so a run fails instead of hanging."""

    connect: TimeSpan = "15s"
    """ssh `ConnectTimeout=`: the TCP connection and the SSH handshake."""
    alive_interval: TimeSpan = "15s"
    """ssh `ServerAliveInterval=`: probe a quiet connection this often."""
    alive_count: int = Field(default=4, ge=1)
    """ssh `ServerAliveCountMax=`: unanswered probes before the connection is dropped."""
    io: TimeSpan = "5min"
    """rsync `--timeout=`, and the limit of each remote command (listing, preflight)."""


class SyncDefaults(Model):
    on_boot: TimeSpan = "2min"
    """First run of every sync this long after boot."""
    every: TimeSpan = "2min"
    """Each sync runs again this long after its last run started."""
    jitter: TimeSpan = "30s"
    """Random delay added to each sync run."""
    persistent: bool = True
    """`Persistent=` of the sync timers."""
    after: list[UnitName] = ["network-online.target"]
    """Units every sync service starts after (`After=`)."""
    condition_path_exists: AbsPath | None = None
    """Syncs run only when this path exists (`ConditionPathExists=`): the sources are reached over
    the tailnet, so without it they are skipped, not failed."""
    timeout: TimeSpan = "15min"
    """`TimeoutStartSec=` of one sync run (a stream's `timeout` overrides it)."""
    network: NetTimeouts = NetTimeouts()
    """ssh and rsync timeouts of the syncs."""
    overlap: TimeSpan = "10min"
    """Each incremental window starts this long before the last run's time (taken on the source
    host), so files whose mtimes lag are still pulled; files already here are skipped by rsync."""

    @property
    def schedule(self) -> Schedule:
        return Schedule(
            on_boot=self.on_boot, every=self.every, jitter=self.jitter, persistent=self.persistent
        )


class Stream(Model):
    """One instrument stream pulled from its source host into the raw mirror."""

    name: Name
    """Stream name: units `aurora-<name>-source-sync.{service,timer}`, command
    `/usr/local/bin/aurora-<name>-sync`, state `<state_dir>/<name>.last`."""
    label: Text
    """Short human name, used in the timer's description."""
    description: Text
    """Description of the sync service."""
    enabled: bool = True
    """False: the stream's timer is not enabled (its state file is kept)."""
    host: Host
    """Source host (a tailnet address)."""
    user: UserName | None = None
    """Login on the source host; default: the spec's `user.name`."""
    path: AbsPath
    """Directory on the source host to pull from."""
    dest: RelPath
    """Destination below `storage.raw_root`."""
    mode: Literal["incremental", "mirror"] = "incremental"
    """`incremental`: pull files changed since the last run that match `patterns`; `mirror`: rsync
    the tree through `filters`."""
    patterns: list[Glob] = []
    """File name globs to pull (incremental streams)."""
    lookback_days: int | None = Field(default=None, ge=1)
    """Without a state file (first run, rebuilt host), pull only files this recent."""
    stamp_regex: str | None = None
    """Regex with one group capturing a time stamp in the file name; with `min_stamp`, older files
    are never pulled."""
    min_stamp: Annotated[str, Field(pattern=r"^\d+$")] | None = None
    """Files whose captured stamp sorts before this are skipped (digits, e.g. `202605020000`)."""
    start_fresh: bool = False
    """Without a state file, record "now" and pull nothing instead of the history."""
    filters: list[_text_of("filter")] = []
    """rsync filter rules for a mirror stream, in order (`+ HDR_*.jpg`, `- *`)."""
    delete_excluded: bool = False
    """Mirror streams: delete local files the filters exclude."""
    identity: AbsPath | None = None
    """SSH private key for the source host (installed from a credential; see `secrets`); default:
    the user's keys or Tailscale SSH."""
    port: int = 22
    """SSH port of the source host."""
    timeout: TimeSpan | None = None
    """`TimeoutStartSec=` of one sync run; default `source_sync.defaults.timeout`."""
    max_delete: int = Field(default=100, ge=0)
    """Mirror streams: at most this many local files deleted per run (`--max-delete`); more
    fails the run, naming the fix."""

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
    """Schedule and ordering shared by every stream."""
    streams: Annotated[list[Stream], AfterValidator(_unique_by("name", "stream name"))]
    """The instrument streams pulled into the raw mirror, one sync service and timer each."""


class Mount(Model):
    """A persistent volume: mounted by the image, never owned by it."""

    where: AbsPath
    """Mount point."""
    what: _text_of("mount_what")
    """What to mount: `LABEL=...` for a volume, or a CephFS source."""
    type: _text_of("fstype")
    """File system type (`ext4`, `ceph`, ...)."""
    options: _text_of("mount_options") = "defaults,nofail,x-systemd.device-timeout=30s"
    """Mount options; keep `nofail` so the image boots without the volume."""

    @property
    def unit_part(self) -> str:
        """The mount path as systemd escapes it ("/data" -> "data")."""
        return self.where.strip("/").replace("-", "\\x2d").replace("/", "-")


_SCRIPT = re.compile(r"(?:^|[\s/])([\w.-]+\.py)\b")


class Job(Model):
    """A processing job: one of the dashboard app's scripts on a timer."""

    name: Name
    """Job name: units `aurora-<name>.{service,timer}`."""
    description: Text
    """Description of the job's service."""
    timer_description: Text
    """Description of the job's timer."""
    enabled: bool = True
    """False: the job's timer is not enabled."""
    schedule: Schedule
    """When the job runs."""
    command: Command
    """Command run in `dashboard.checkout` with the app's environment; must run one of the app's
    `.py` scripts. `{venv}`, `{checkout}`, `{raw}` and `{products}` stand for the spec's paths.
    Skipped, not failed, when the app lacks the script."""
    after: list[UnitName] = ["network-online.target"]
    """Units the job starts after (`After=`)."""
    wants: list[UnitName] | None = None
    """`Wants=`; default: `network-online.target` when it is in `after`."""
    exec_condition: Command | None = None
    """`ExecCondition=`: the run is skipped when this command fails (same placeholders as
    `command`)."""
    io_best_effort: bool = False
    """Run with best-effort I/O scheduling at low priority."""
    timeout: TimeSpan | None = None
    """`TimeoutStartSec=` of one run."""

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
    """Job name: units `aurora-gws-rsync-<name>.{service,timer}`."""
    source: AbsPath
    """Local tree whose contents are pushed (`rsync SOURCE/ host:DEST/`)."""
    dest: RelPath
    """Destination below `gws.root`."""
    calendar: Calendar
    """When to push (`OnCalendar=`)."""
    excludes: list[Glob] = []
    """rsync `--exclude` patterns."""
    timeout: TimeSpan | None = None
    """`TimeoutStartSec=` of one push; default `gws.timeout`."""
    max_delete: int | None = Field(default=None, ge=0)
    """Deletions allowed on the GWS per push; default `gws.max_delete`."""
    enabled: bool = True
    """False: the push's timer is not enabled."""


class GwsMount(Model):
    enabled: bool = False
    """Mount the GWS over SSHFS (off, as in the Ansible repository)."""
    where: AbsPath
    """Mount point of the SSHFS view."""
    host: Host
    """Transfer host the SSHFS mount goes through."""
    options: list[MountOption] = []
    """Extra SSHFS mount options."""


class Gws(Model):
    enabled: bool = True
    """False: no push timer is enabled (a staging copy must never write to the group
    workspace); the units stay in the image."""
    user: UserName
    """JASMIN account the pushes log in as."""
    hosts: list[Host] = Field(min_length=1)
    """Transfer hosts, tried in this order until one succeeds."""
    root: AbsPath
    """Group workspace path on JASMIN; job destinations are below it."""
    identity: AbsPath
    """SSH private key for the transfer hosts (installed from a credential)."""
    log_dir: AbsPath
    """One log file per push run is written here."""
    timeout: TimeSpan = "6h"
    """Default `TimeoutStartSec=` of a push."""
    jitter: TimeSpan = "60s"
    """Random delay added to each push."""
    network: NetTimeouts = NetTimeouts(io="10min")
    """ssh and rsync timeouts of the pushes."""
    max_delete: int = Field(default=50, ge=0)
    """Files a push may delete on the GWS (`--max-delete`); more stops the push, naming the fix
    (`aurora-gws-rsync-<job> --max-delete N` for a deliberate larger deletion)."""
    backup_dir: RelPath = "backups"
    """Below `root`: what a push deletes or replaces on the GWS is moved to
    `<backup_dir>/<job>/<UTC date and time>/` instead of vanishing."""
    backup_days: int = Field(default=30, ge=1)
    """Backup directories older than this many days are pruned by the push."""
    jobs: Annotated[list[GwsJob], AfterValidator(_unique_by("name", "GWS job name"))]
    """The pushes, one service and timer each."""
    mount: GwsMount
    """The optional SSHFS view of the GWS."""

    @model_validator(mode="after")
    def _backups_apart(self) -> Gws:
        backups = PurePosixPath(self.backup_dir)
        for job in self.jobs:
            dest = PurePosixPath(job.dest)
            if backups == dest or dest in backups.parents or backups in dest.parents:
                raise ValueError(
                    f"'backup_dir' {self.backup_dir!r} overlaps job {job.name!r}'s dest "
                    f"{job.dest!r}: a push would delete or push its own backups"
                )
        return self


class Settle(Model):
    local: TimeSpan
    """A raw file counts as settled locally once its mtime is this old."""
    gws: TimeSpan
    """A file counts as settled on the GWS once its mtime is this old."""
    products: TimeSpan
    """Settle time for product trees."""


class Checksum(Model):
    mode: Literal["none", "spot", "full"] = "spot"
    """`none`, `spot` (a stable sample of files) or `full` (every file)."""
    spot_modulus: int = Field(default=10, ge=1)
    """`spot` checks about one file in this many, chosen by a hash of its name."""


class MirrorVerify(Model):
    """Manifests of source, local and GWS copies, so pruning is decided on evidence."""

    enabled: bool = True
    """False: the verification timer is not enabled."""
    calendar: Calendar
    """When to verify (`OnCalendar=`)."""
    jitter: TimeSpan = "60s"
    """Random delay added to each run."""
    manifest_root: AbsPath
    """Where the source, local and GWS manifests are written."""
    keep: int = Field(default=48, ge=1)
    """Manifest sets kept; older ones are removed."""
    settle: Settle
    """How old a file must be before its copies are compared."""
    checksum: Checksum = Checksum()
    """Which files are compared by content, not just by size and mtime."""
    timeout: TimeSpan = "2h"
    """`TimeoutStartSec=` of one verification run."""


_UFW_PORT = r"^\d{1,5}(:\d{1,5})?(/(tcp|udp))?$"


class Firewall(Model):
    """ufw policy, applied when the image is built (the root is read-only at run time)."""

    default_incoming: Literal["deny", "reject", "allow"] = "deny"
    """ufw's default policy for incoming traffic."""
    allow: list[Annotated[str, Field(pattern=_UFW_PORT)]]
    """Ports let in: `22/tcp`, `111/udp`, ranges `6000:6007/tcp`."""
    deny: list[Annotated[str, Field(pattern=_UFW_PORT)]] = []
    """Ports explicitly denied (e.g. Panel's, which must stay private)."""

    def rules(self) -> list[str]:
        return [f"allow {p}" for p in self.allow] + [f"deny {p}" for p in self.deny]


class Debian(Model):
    """Where Debian packages come from. A snapshot pins the whole archive in time,
    so the same lock builds the same image; without one the build warns when
    the archive has moved on from locks/debian-packages.txt."""

    mirror: Annotated[Url, Field(pattern=r"^.*[^/]$")] = "http://deb.debian.org/debian"
    """Debian archive the image's packages come from."""
    security_mirror: Annotated[Url, Field(pattern=r"^.*[^/]$")] = (
        "http://deb.debian.org/debian-security"
    )
    """Debian security archive."""
    snapshot: Annotated[str, Field(pattern=r"^\d{8}T\d{6}Z$")] | None = None
    """A snapshot.debian.org time stamp (`20261101T000000Z`): both archives are read as they were
    then, so the package set cannot move."""

    def urls(self) -> tuple[str, str]:
        if self.snapshot is None:
            return self.mirror, self.security_mirror
        base = "http://snapshot.debian.org/archive"
        return f"{base}/debian/{self.snapshot}", f"{base}/debian-security/{self.snapshot}"


class AptRepository(Model):
    """An extra Debian repository (e.g. Tailscale's) the image installs packages from."""

    name: Name
    """Name of the repository (its sources file and key are named after it)."""
    url: Url
    """Repository URL."""
    suite: _text_of("apt_suite")
    """Suite, e.g. `trixie`."""
    components: list[Word] = ["main"]
    """Components to use."""
    key: LocalPath
    """The repository's signing key, relative to the spec file; its bytes are a build input."""


class Tailscale(Model):
    """Joining the instrument tailnet; the client comes from an extra repository."""

    enabled: bool = False
    """Join the tailnet at boot (the client must come from `apt_repositories`)."""
    auth_credential: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")] = "tailscale.authkey"
    """Name of the credential holding the auth key."""
    ssh: bool = False
    """Enable Tailscale SSH on this node (`tailscale up --ssh`): it hands root logins to
    the tailnet's ACLs, past sshd and its keys; off unless an operator opts in."""
    state_on_volume: AbsPath | None = None
    """Where tailscaled's state (the node key: the host's tailnet identity) really lives, on a
    persistent volume: `/var/lib/tailscale` becomes a link to it, so a rebuild (which replaces
    `/var`) keeps the identity and needs no fresh auth key. Unset: it lives on `/var`."""


class Secret(Model):
    """A secret's name and where it is installed at boot; never its value."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    """Credential name, the same under QEMU (SMBIOS) and on JASMIN (the credential store)."""
    purpose: Text
    """What the secret is for, for the operator (never its value)."""
    path: AbsPath | None = None
    """Where `aurora-credentials.service` installs it; unset: read only by the units that import
    it."""
    mode: Annotated[str, Field(pattern=r"^0[0-7]{3}$")] = "0600"
    """File mode of the installed secret."""
    owner: UserName = "root"
    """Owner of the installed secret."""
    format: Literal["raw", "msmtprc"] = "raw"
    """`raw`: copied as given; `msmtprc`: relay settings as JSON (`host`, `port`, `from`, `user`,
    `password`, `tls`, `ca_file`) turned into an msmtp configuration."""


ChangeCategory = Literal[
    "source-sync", "gws", "nginx-tls", "firewall", "credentials", "alerting", "app", "packages"
]


class DeployTarget(Model):
    """One server a release goes to (e.g. `staging`, `production`)."""

    server: Word
    """Name (or id) of the Nova server this target rebuilds."""
    role: Literal["staging", "production"]
    """`staging` takes any attested image; `production` only one whose inputs ran healthy on
    staging for `deploy.staging_soak`, and with the approvals `deploy.approval_required` asks."""
    cloud: Word | None = None
    """Its `clouds.yaml` entry; unset: `deploy.cloud`."""
    spec: str | None = None
    """The spec this target's image is built from, relative to this spec (e.g. `staging.yml`, an
    overlay of it); unset: this spec."""
    address: Host | None = None
    """Address the health probe uses; unset: the server's address from Nova."""


class Deploy(Model):
    """Where releases of this image go on JASMIN Cloud, and how the probe reaches it.

    Not part of the image's behaviour: the release tooling reads it, and every
    field can be overridden on the command line.
    """

    cloud: Word | None = None
    """The default `clouds.yaml` entry; `--cloud`, `OS_CLOUD` or `OS_AUTH_URL` (the `OS_*`
    variables) take precedence, as with the openstack CLI."""
    server: Word = "aurora"
    """Name (or id) of the Nova server releases rebuild."""
    address: Host | None = None
    """Address the health probe uses; unset: the server's address from Nova."""
    ssh_user: UserName = "root"
    """User the probe, `audit` and `secrets check` log in as."""
    ssh_port: Annotated[int, Field(ge=1, le=65535)] = 22
    """SSH port the probe uses."""
    http_port: Annotated[int, Field(ge=1, le=65535)] = 80
    """HTTP port the probe checks the dashboard on."""
    https_port: Annotated[int, Field(ge=1, le=65535)] = 443
    """HTTPS port the probe checks the dashboard on."""
    probe_timeout: TimeSpan = "10min"
    """How long the probe waits for the rebuilt server to answer."""
    keep_images: Annotated[int, Field(ge=2)] = 3
    """Images kept in Glance by the prune; never fewer than the live one and the one before it."""
    targets: dict[Name, DeployTarget] = {}
    """Named release targets (`promote --target NAME`); unset: the one server above."""
    allowed_signers: str | None = None
    """OpenSSH allowed_signers file (relative to this spec) whose keys may sign releases; set, every
    promote and rollback verifies the image's signature first. A production target needs it."""
    lease_ttl: TimeSpan = "3h"
    """How long a promote or rollback holds the server's lease (one operator at a time) before
    another operator may take it over."""
    staging_soak: TimeSpan = "24h"
    """How long the same inputs must have run healthy on a staging target before a production
    target accepts them (`--force --reason` overrides, recorded)."""
    soak_window: TimeSpan = "30min"
    """How long the probe keeps watching a rebuilt server before the release counts as done; a
    failure within it rolls back by itself."""
    approval_required: list[ChangeCategory] = []
    """Change categories a production promote needs `--approve CATEGORY` for."""


_SECRET_KEY = re.compile(
    r"PASS(WORD|WD)?($|_)|PWD|SECRET|TOKEN|AUTH_?KEY|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL",
    re.IGNORECASE,
)


# Deployment names that hold where a secret is installed, not the secret itself.
_SECRET_PATH_KEYS = frozenset({"GWS_SSH_PRIVATE_KEY"})


def _names_a_path(key: str) -> bool:
    return key in _SECRET_PATH_KEYS or key.endswith(("_PATH", "_FILE"))


def _env_name(key: str) -> str:
    if _SECRET_KEY.search(key) and not _names_a_path(key):
        raise ValueError(
            f"{key!r} looks like a secret: secrets are credentials given at boot, "
            "declare its name under 'secrets' instead"
        )
    if not re.match(r"^[A-Z_][A-Z0-9_]*$", key):
        raise ValueError(f"{key!r} is not a valid environment variable name")
    return key


EnvName = Annotated[str, AfterValidator(_env_name)]


def _no_secrets(environment: dict[str, str]) -> dict[str, str]:
    """A secret-looking key naming a path (`GWS_SSH_PRIVATE_KEY`) may only carry a path."""
    for key, value in environment.items():
        if _SECRET_KEY.search(key) and not value.startswith("/"):
            raise ValueError(
                f"{key!r} must be the absolute path a secret is installed at, never the "
                "secret itself (secrets are credentials given at boot: see 'secrets')"
            )
    return environment


class HostSpec(Model):
    release: Annotated[str, Field(pattern=r"^[0-9][0-9A-Za-z.]*$")]
    """Release name; the first part of every image tag (`<release>-<digest>`)."""
    hostname: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")]
    """The host's public name: `/etc/hostname`, nginx's `server_name`, the certificate."""
    user: User
    """The service user."""
    packages: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]+$")]]
    """Debian packages installed in the image (besides the base system)."""
    debian: Debian = Debian()
    """Where Debian packages come from."""
    apt_repositories: list[AptRepository] = []
    """Extra apt repositories (e.g. Tailscale's)."""
    tailscale: Tailscale = Tailscale()
    """Joining the instrument tailnet."""
    storage: Storage
    """The directory layout on the volumes and on `/var`."""
    firewall: Firewall
    """ufw rules, set at build time."""
    mounts: Annotated[list[Mount], AfterValidator(_unique_by("where", "mount point"))] = []
    """Persistent volumes: mounted by the image, never owned by it."""
    dashboard: Dashboard
    """The Panel dashboard service."""
    environment: Annotated[dict[EnvName, EnvValue], AfterValidator(_no_secrets)] = {}
    """`/etc/aurora-dashboard.env`, read by the dashboard and every job; keys that look like
    secrets (`PASSWORD`, `TOKEN`, ...) are refused, except names of where a secret is installed
    (`GWS_SSH_PRIVATE_KEY`, `*_PATH`, `*_FILE`), whose value must be an absolute path."""
    nginx: Nginx
    """The public nginx site."""
    source_sync: SourceSync
    """Pulling the instrument streams into the raw mirror."""
    jobs: Annotated[list[Job], AfterValidator(_unique_by("name", "job"))] = []
    """Processing and operations jobs: the app's scripts on timers."""
    gws: Gws
    """Pushes to the JASMIN group workspace."""
    mirror_verify: MirrorVerify
    """Manifests of the source, local and GWS copies, so pruning upstream is decided on evidence."""
    secrets: Annotated[list[Secret], AfterValidator(_unique_by("name", "secret"))] = []
    """The credentials the host is given at boot, by name; never their values."""
    operator_keys: list[_text_of("public_key")] = []
    """Operators' SSH public keys (not secrets) baked into the image for root
    (`/etc/ssh/authorized_keys.d/root`), so a failed volume or credential store never
    locks everyone out; the `ssh.authorized_keys.root` credential adds to them."""
    credential_store: AbsPath = "/data/aurora/credstore"
    """Where the host finds credentials not given at boot (JASMIN): `/etc/credstore` links here, on
    the persistent volume, root-only."""
    deploy: Deploy = Deploy()
    """Where releases go on JASMIN Cloud; read by the release commands only."""

    _source: SpecSource | None = PrivateAttr(default=None)

    @property
    def source(self) -> SpecSource:
        """Where the spec was loaded from and the files it names (set by `load_spec`)."""
        if self._source is None:
            raise SpecError("this spec was not loaded from a file (use load_spec)")
        return self._source


@dataclass(frozen=True)
class _NamedFile:
    """A file the spec names, for the check a build makes before it starts."""

    key: str
    file: Path
    line: int
    path: Path
    directory: bool
    fix: str


@dataclass(frozen=True)
class SpecSource:
    """Where a loaded spec came from, and every file it names resolved against it.

    The loader resolves each relative path once (relative to the spec file), so the
    build, the release gates and the tag never need the spec's path beside the spec.
    """

    path: Path
    """The spec file as the operator gave it (errors name it so)."""
    bases: tuple[Path, ...] = ()
    """The specs it builds on (`base:`, then its base, ...), nearest first."""
    app_dir: Path | None = None
    """The local app tree (`dashboard.app.path`); None for a git app."""
    apt_keys: Mapping[str, Path] = field(default_factory=dict)
    """Repository name -> its signing key (`apt_repositories[].key`)."""
    allowed_signers: Path | None = None
    """`deploy.allowed_signers`, if set."""
    targets: Mapping[str, Path] = field(default_factory=dict)
    """Deploy target name -> the spec its images are built from (`deploy.targets[].spec`)."""
    named: tuple[_NamedFile, ...] = field(default=(), repr=False)

    def require_files(self) -> None:
        """Raise SpecError naming each file a build needs that is not there (app tree,
        apt keys): file, line, key and fix, as for any other mistake of the spec."""
        problems = [
            SpecProblem(str(f.file), f.line, f.key, f"{f.path} {f.fix}")
            for f in self.named
            if not (f.path.is_dir() if f.directory else f.path.is_file())
        ]
        if problems:
            raise SpecError("", problems)


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Overlay wins; mappings merge key by key, lists and scalars are replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_Chain = list[tuple[Path, dict[Any, int]]]


def _read(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], _Chain]:
    """Read a spec file, applying it over its `base:` spec if it names one; with each
    file read and its key lines, nearest first."""
    try:
        data, lines = load_yaml_with_lines(path)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such host spec (give an existing YAML file)") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}:1: a host spec is a YAML mapping of keys")
    base = data.pop("base", None)
    if base is None:
        return data, [(path, lines)]
    base_path = (path.parent / str(base)).resolve()
    if base_path in seen:
        raise SpecError(f"{path}:{lines.get(('base',), 1)}: base: {base} includes itself")
    base_data, chain = _read(base_path, (*seen, path.resolve()))
    return _merge(base_data, data), [(path, lines), *chain]


def _source(spec: HostSpec, chain: _Chain) -> SpecSource:
    """Resolve the files the spec names, relative to the spec file (an overlay's too)."""
    path = chain[0][0]
    here = path.parent

    def where(*key: str | int) -> tuple[Path, int]:
        """The file and line that set a key (an overlay's own, else its base's)."""
        return next(((f, lines[key]) for f, lines in chain if key in lines), (path, 1))

    named: list[_NamedFile] = []
    app_dir = None
    if spec.dashboard.app.path is not None:
        app_dir = (here / spec.dashboard.app.path).resolve()
        key = ("dashboard", "app", "path")
        fix = "is not a directory; point it at the app checkout"
        named.append(_NamedFile(".".join(key), *where(*key), app_dir, True, fix))
    apt_keys = {}
    for index, repo in enumerate(spec.apt_repositories):
        apt_keys[repo.name] = key_file = (here / repo.key).resolve()
        fix = f"does not exist; put the {repo.name} archive key there"
        at = where("apt_repositories", index, "key")
        named.append(_NamedFile(f"apt_repositories[{index}].key", *at, key_file, False, fix))
    signers = spec.deploy.allowed_signers
    return SpecSource(
        path=path,
        bases=tuple(f for f, _ in chain[1:]),
        app_dir=app_dir,
        apt_keys=apt_keys,
        allowed_signers=here / signers if signers else None,
        targets={n: here / t.spec for n, t in spec.deploy.targets.items() if t.spec},
        named=tuple(named),
    )


def load_spec(path: Path) -> HostSpec:
    """Load and validate a host spec; raise SpecError listing every problem, a line each.
    The spec knows its file and the files it names (`HostSpec.source`)."""
    data, chain = _read(path)
    try:
        spec = HostSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error(path, chain[0][1], exc, HostSpec) from None
    spec._source = _source(spec, chain)
    return spec
