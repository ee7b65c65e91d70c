"""The machine's sections of the spec: its user and storage, the dashboard and nginx,
volumes, firewall, package sources, tailnet and secrets (by name, never by value).

Part of the model (builder.spec.model composes HostSpec from these); each field's
docstring is its line in docs/reference/spec.md.
"""

# Mutable defaults are safe here: pydantic copies them per instance (ruff cannot
# see across modules that Model is a pydantic model).
# ruff: noqa: RUF012

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from builder.spec.validators import (
    AbsPath,
    AptSuite,
    CredentialName,
    DirMode,
    FileMode,
    FsType,
    GitRef,
    GitUrl,
    Header,
    Host,
    LocalPath,
    MirrorUrl,
    Model,
    MountOptions,
    MountWhat,
    Name,
    Origin,
    PortRule,
    RelPath,
    Requirement,
    Snapshot,
    Text,
    TimeSpan,
    Url,
    UrlPrefix,
    UserName,
    Word,
)


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
    mode: DirMode = "02775"
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
    git: GitUrl | None = None
    """The app's git URL; needs `ref`. Cloned at build time, baked into the image."""
    ref: GitRef | None = None
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
    requirements: list[Requirement]
    """The app's Python pins, `name==version`; `aurora-image lock` resolves them with hashes into
    `locks/app-requirements.txt`, which the build installs."""

    @property
    def venv(self) -> str:
        return f"{self.checkout}/venv"


class WxcamMedia(Model):
    location: UrlPrefix
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
    security_headers: list[Header] = [
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


class Mount(Model):
    """A persistent volume: mounted by the image, never owned by it."""

    where: AbsPath
    """Mount point."""
    what: MountWhat
    """What to mount: `LABEL=...` for a volume, or a CephFS source."""
    type: FsType
    """File system type (`ext4`, `ceph`, ...)."""
    options: MountOptions = "defaults,nofail,x-systemd.device-timeout=30s"
    """Mount options; keep `nofail` so the image boots without the volume."""

    @property
    def unit_part(self) -> str:
        """The mount path as systemd escapes it ("/data" -> "data")."""
        return self.where.strip("/").replace("-", "\\x2d").replace("/", "-")


class Firewall(Model):
    """ufw policy, applied when the image is built (the root is read-only at run time)."""

    default_incoming: Literal["deny", "reject", "allow"] = "deny"
    """ufw's default policy for incoming traffic."""
    allow: list[PortRule]
    """Ports let in: `22/tcp`, `111/udp`, ranges `6000:6007/tcp`."""
    deny: list[PortRule] = []
    """Ports explicitly denied (e.g. Panel's, which must stay private)."""

    def rules(self) -> list[str]:
        return [f"allow {p}" for p in self.allow] + [f"deny {p}" for p in self.deny]


class Debian(Model):
    """Where Debian packages come from. A snapshot pins the whole archive in time,
    so the same lock builds the same image; without one the build warns when
    the archive has moved on from locks/debian-packages.txt."""

    mirror: MirrorUrl = "http://deb.debian.org/debian"
    """Debian archive the image's packages come from."""
    security_mirror: MirrorUrl = "http://deb.debian.org/debian-security"
    """Debian security archive."""
    snapshot: Snapshot | None = None
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
    suite: AptSuite
    """Suite, e.g. `trixie`."""
    components: list[Word] = ["main"]
    """Components to use."""
    key: LocalPath
    """The repository's signing key, relative to the spec file; its bytes are a build input."""


class Tailscale(Model):
    """Joining the instrument tailnet; the client comes from an extra repository."""

    enabled: bool = False
    """Join the tailnet at boot (the client must come from `apt_repositories`)."""
    auth_credential: CredentialName = "tailscale.authkey"
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

    name: CredentialName
    """Credential name, the same under QEMU (SMBIOS) and on JASMIN (the credential store)."""
    purpose: Text
    """What the secret is for, for the operator (never its value)."""
    path: AbsPath | None = None
    """Where `aurora-credentials.service` installs it; unset: read only by the units that import
    it."""
    mode: FileMode = "0600"
    """File mode of the installed secret."""
    owner: UserName = "root"
    """Owner of the installed secret."""
    format: Literal["raw", "msmtprc"] = "raw"
    """`raw`: copied as given; `msmtprc`: relay settings as JSON (`host`, `port`, `from`, `user`,
    `password`, `tls`, `ca_file`) turned into an msmtp configuration."""
