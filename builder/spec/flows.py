"""The data flows of the spec: source syncs into the raw mirror, the app's jobs on
timers, pushes to the group workspace (GWS), and the mirror verification.

Part of the model (builder.spec.model composes HostSpec from these); each field's
docstring is its line in docs/reference/spec.md.
"""

# Mutable defaults are safe here: pydantic copies them per instance (ruff cannot
# see across modules that Model is a pydantic model).
# ruff: noqa: RUF012

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from builder.spec.validators import (
    AbsPath,
    Calendar,
    Command,
    Digits,
    Glob,
    Host,
    Model,
    MountOption,
    Name,
    RelPath,
    RsyncFilter,
    Text,
    TimeSpan,
    UnitName,
    UserName,
    unique_by,
)


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
    min_stamp: Digits | None = None
    """Files whose captured stamp sorts before this are skipped (digits, e.g. `202605020000`)."""
    start_fresh: bool = False
    """Without a state file, record "now" and pull nothing instead of the history."""
    filters: list[RsyncFilter] = []
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
    streams: Annotated[list[Stream], AfterValidator(unique_by("name", "stream name"))]
    """The instrument streams pulled into the raw mirror, one sync service and timer each."""


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
    jobs: Annotated[list[GwsJob], AfterValidator(unique_by("name", "GWS job name"))]
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
