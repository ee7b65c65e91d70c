"""The host spec: `HostSpec`, a typed and validated model of one host, and
`load_spec`, which reads it from YAML (with its `base:` specs) and resolves the
files it names relative to it (`HostSpec.source`).

Every check that can be made before an image is built is made here, so a
mistake costs a second, not a build. Errors name the file, the line, the key
path and the fix, on one line. The sections live beside it: builder.spec.host
(the machine), builder.spec.flows (syncs, jobs, pushes, verification),
builder.spec.deploy (releases); what each value may be is builder.spec.validators.
Every name a caller needs is importable from here.
"""

# Mutable defaults are safe here: pydantic copies them per instance (ruff cannot
# see across modules that Model is a pydantic model).
# ruff: noqa: RUF012

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, PrivateAttr, ValidationError

from builder.errors import SpecError, SpecProblem
from builder.spec.deploy import ChangeCategory, Deploy, DeployTarget
from builder.spec.errors import spec_error
from builder.spec.flows import (
    Checksum,
    Gws,
    GwsJob,
    GwsMount,
    Job,
    MirrorVerify,
    NetTimeouts,
    Schedule,
    Settle,
    SourceSync,
    Stream,
    SyncDefaults,
)
from builder.spec.host import (
    AppSource,
    AptRepository,
    Dashboard,
    Debian,
    Firewall,
    Mount,
    Nginx,
    Secret,
    Storage,
    Tailscale,
    User,
    WxcamMedia,
)
from builder.spec.validators import (
    AbsPath,
    EnvName,
    EnvValue,
    HostName,
    Model,
    Package,
    PublicKey,
    Release,
    no_secrets,
    unique_by,
)
from builder.spec.yaml_lines import load_yaml_with_lines

__all__ = [
    "AppSource",
    "AptRepository",
    "ChangeCategory",
    "Checksum",
    "Dashboard",
    "Debian",
    "Deploy",
    "DeployTarget",
    "Firewall",
    "Gws",
    "GwsJob",
    "GwsMount",
    "HostSpec",
    "Job",
    "MirrorVerify",
    "Model",
    "Mount",
    "NetTimeouts",
    "Nginx",
    "Schedule",
    "Secret",
    "Settle",
    "SourceSync",
    "SpecSource",
    "Storage",
    "Stream",
    "SyncDefaults",
    "Tailscale",
    "User",
    "WxcamMedia",
    "load_spec",
]


class HostSpec(Model):
    release: Release
    """Release name; the first part of every image tag (`<release>-<digest>`)."""
    hostname: HostName
    """The host's public name: `/etc/hostname`, nginx's `server_name`, the certificate."""
    user: User
    """The service user."""
    packages: list[Package]
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
    mounts: Annotated[list[Mount], AfterValidator(unique_by("where", "mount point"))] = []
    """Persistent volumes: mounted by the image, never owned by it."""
    dashboard: Dashboard
    """The Panel dashboard service."""
    environment: Annotated[dict[EnvName, EnvValue], AfterValidator(no_secrets)] = {}
    """`/etc/aurora-dashboard.env`, read by the dashboard and every job; keys that look like
    secrets (`PASSWORD`, `TOKEN`, ...) are refused, except names of where a secret is installed
    (`GWS_SSH_PRIVATE_KEY`, `*_PATH`, `*_FILE`), whose value must be an absolute path."""
    nginx: Nginx
    """The public nginx site."""
    source_sync: SourceSync
    """Pulling the instrument streams into the raw mirror."""
    jobs: Annotated[list[Job], AfterValidator(unique_by("name", "job"))] = []
    """Processing and operations jobs: the app's scripts on timers."""
    gws: Gws
    """Pushes to the JASMIN group workspace."""
    mirror_verify: MirrorVerify
    """Manifests of the source, local and GWS copies, so pruning upstream is decided on evidence."""
    secrets: Annotated[list[Secret], AfterValidator(unique_by("name", "secret"))] = []
    """The credentials the host is given at boot, by name; never their values."""
    operator_keys: list[PublicKey] = []
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
