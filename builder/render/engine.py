"""Render a host spec into the file tree baked into the image.

Pure: a spec goes in, a mapping of image paths to file contents comes out.
Nothing here touches the disk, so rendering is fast and every unit can be
checked without building or booting anything.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import jinja2

from builder.spec.model import GwsJob, HostSpec, Mount, NetTimeouts, Schedule, Stream
from builder.spec.systemd_values import escape_exec, escape_specifiers, parse_timespan

UNITS_DIR = Path(__file__).resolve().parents[2] / "units"
SYSTEM_UNITS = "/etc/systemd/system"
ENV_FILE = "/etc/aurora-dashboard.env"
OPERATOR_KEYS = "/etc/ssh/authorized_keys.d/root"
SYNC_PROGRAM = "/usr/lib/aurora/aurora-source-sync"
SYNC_CONFIG_DIR = "/etc/aurora/source-sync"
STORAGE_DIR = "/usr/lib/aurora/storage"
NGINX_TLS_DIR = "/run/aurora/nginx"
GWS_PROGRAM = "/usr/lib/aurora/aurora-gws-push"
GWS_CONFIG_DIR = "/etc/aurora/gws"
MIRROR_VERIFY_PROGRAM = "/usr/lib/aurora/aurora-mirror-verify"
MIRROR_VERIFY_CONFIG = "/etc/aurora/mirror-verify.json"
# Which units are services and which pipeline (read by the release probe, builder.host.health).
UNIT_CLASSES_FILE = "/etc/aurora/unit-classes.json"
# Written by aurora-volume-id (aurora-storage@.service) when the storage layout
# first initialises a volume; the GWS pushes compare it with what they pushed from.
VOLUME_MARKER = ".aurora-volume-id"
TAILSCALE_STATE = "/var/lib/tailscale"


@dataclass(frozen=True)
class File:
    """One entry of the rendered tree: a regular file or a symlink."""

    content: bytes = b""
    mode: int = 0o644
    link: str | None = None
    directory: bool = False


Tree = dict[str, File]


def _seconds(span: str) -> str:
    value = parse_timespan(str(span))
    return str(int(value)) if value == int(value) else str(value)


def _milliseconds(span: str) -> str:
    return str(round(parse_timespan(str(span)) * 1000))


def placeholders(spec: HostSpec) -> dict[str, str]:
    """The path names a spec may use in job commands, e.g. {venv}/bin/python."""
    return {
        "venv": spec.dashboard.venv,
        "checkout": spec.dashboard.checkout,
        "raw": spec.storage.raw_root,
        "products": spec.storage.product_root,
    }


def expand(text: str, names: dict[str, str]) -> str:
    for key, value in names.items():
        text = text.replace("{" + key + "}", value)
    return text


@functools.cache
def environment(units_dir: Path = UNITS_DIR) -> jinja2.Environment:
    """One environment per template directory: it caches compiled templates
    (and reloads one whose file changed), so repeated renders stay cheap."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(units_dir),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["seconds"] = _seconds
    env.filters["milliseconds"] = _milliseconds
    # Spec text in unit files: systemd expands `%` (and `$` in Exec*=) otherwise.
    env.filters["unit_text"] = escape_specifiers
    env.filters["exec"] = escape_exec
    return env


MIRROR_VERIFY = "aurora-mirror-verify"


def gws_unit(job: GwsJob) -> str:
    return f"aurora-gws-rsync-{job.name}"


def mount_unit_name(where: str) -> str:
    return where.strip("/").replace("-", "\\x2d").replace("/", "-") + ".mount"


def sync_unit(stream: Stream) -> str:
    return f"aurora-{stream.name}-source-sync"


def sync_program_link(stream: Stream) -> str:
    """The contract's per-stream command name, a link to the one sync program."""
    return f"/usr/local/bin/aurora-{stream.name}-sync"


def sync_config(spec: HostSpec, stream: Stream) -> dict[str, object]:
    """What the on-host sync program reads for one stream (see its docstring)."""
    return {
        "name": stream.name,
        "source_host": stream.host,
        "source_user": stream.user or spec.user.name,
        "source_dir": stream.path,
        "dest_dir": f"{spec.storage.raw_root}/{stream.dest}",
        "mode": stream.mode,
        "patterns": list(stream.patterns),
        "stamp_regex": stream.stamp_regex,
        "min_stamp": stream.min_stamp,
        "lookback_days": stream.lookback_days,
        "start_fresh": stream.start_fresh,
        "filters": list(stream.filters),
        "delete_excluded": stream.delete_excluded,
        "state_file": f"{spec.storage.state_dir}/{stream.name}.last",
        "lock_file": f"{spec.storage.state_dir}/{stream.name}.lock",
        "ssh": {**_ssh(stream.identity, spec), "port": stream.port},
        "timeouts": _timeouts(spec.source_sync.defaults.network),
        "overlap": int(parse_timespan(spec.source_sync.defaults.overlap)),
        "max_delete": stream.max_delete,
        "rsync_options": [],
    }


def _timeouts(net: NetTimeouts) -> dict[str, int]:
    """Seconds, as the programs' ssh_command and rsync --timeout take them."""
    return {
        "connect": int(parse_timespan(net.connect)),
        "alive_interval": int(parse_timespan(net.alive_interval)),
        "alive_count": net.alive_count,
        "io": int(parse_timespan(net.io)),
    }


def volume_marker(spec: HostSpec, path: str) -> str | None:
    """The identity marker of the persistent volume holding ``path`` (None: not on one)."""
    mounts = [m for m in spec.mounts if path == m.where or path.startswith(m.where + "/")]
    if not mounts:
        return None
    where = max(mounts, key=lambda m: len(m.where)).where
    return f"{where.rstrip('/')}/{VOLUME_MARKER}"


KNOWN_HOSTS_CREDENTIAL = "ssh.known_hosts"


def known_hosts(spec: HostSpec) -> str:
    """The instruments' and GWS hosts' keys: installed from the `ssh.known_hosts`
    credential where the spec declares one, else the user's own file."""
    declared = [s.path for s in spec.secrets if s.name == KNOWN_HOSTS_CREDENTIAL and s.path]
    return declared[0] if declared else f"{spec.user.home}/.ssh/known_hosts"


def _ssh(identity: str | None, spec: HostSpec) -> dict[str, object]:
    # Known hosts, not first use: an unknown or changed host key fails the run.
    return {
        "identity": identity,
        "port": 22,
        "options": ["StrictHostKeyChecking=yes"],
        "known_hosts": known_hosts(spec),
    }


def gws_config(spec: HostSpec, job: GwsJob) -> dict[str, object]:
    """What the on-host GWS push program reads for one job."""
    gws = spec.gws
    return {
        "name": job.name,
        "source": job.source,
        "dest": f"{gws.root}/{job.dest}",
        "user": gws.user,
        "hosts": list(gws.hosts),
        "excludes": list(job.excludes),
        "rsync_options": [],
        "log_dir": gws.log_dir,
        "lock_file": f"{spec.storage.state_dir}/gws-{job.name}.lock",
        "ssh": _ssh(gws.identity, spec),
        "timeouts": _timeouts(gws.network),
        "max_delete": gws.max_delete if job.max_delete is None else job.max_delete,
        "backup_dir": f"{gws.root}/{gws.backup_dir}/{job.name}",
        "backup_days": gws.backup_days,
        "volume_marker": volume_marker(spec, job.source),
    }


def mirror_verify_config(spec: HostSpec) -> dict[str, object]:
    """What the on-host mirror verifier reads: every incremental stream's three copies."""
    mv, gws, s = spec.mirror_verify, spec.gws, spec.storage
    raw_job = next((j for j in gws.jobs if j.source.rstrip("/") == s.raw_root), None)
    raw_dest = f"{gws.root}/{raw_job.dest}" if raw_job else f"{gws.root}/data/raw/"
    streams = []
    for stream in spec.source_sync.streams:
        if stream.mode != "incremental":
            continue
        streams.append(
            {
                "name": stream.name,
                "patterns": list(stream.patterns),
                "source": {
                    "host": stream.host,
                    "user": stream.user or spec.user.name,
                    "path": stream.path,
                    "ssh": _ssh(stream.identity, spec),
                },
                "local": f"{s.raw_root}/{stream.dest}",
                "gws": raw_dest.rstrip("/") + f"/{stream.dest}",
                "settle": "local",
            }
        )
    return {
        "manifest_root": mv.manifest_root,
        "keep": mv.keep,
        "lock_file": f"{s.state_dir}/mirror-verify.lock",
        "settle_seconds": {
            "local": int(parse_timespan(mv.settle.local)),
            "gws": int(parse_timespan(mv.settle.gws)),
            "products": int(parse_timespan(mv.settle.products)),
        },
        "checksum": {"mode": mv.checksum.mode, "spot_modulus": mv.checksum.spot_modulus},
        "gws": {"user": gws.user, "hosts": list(gws.hosts), "ssh": _ssh(gws.identity, spec)},
        "streams": streams,
    }


def storage_entries(spec: HostSpec, mount: Mount) -> list[dict[str, str]]:
    """tmpfiles entries for the storage layout that lives on one volume.

    Ownership that cannot be climbed: the service user owns only the directories
    it writes (the roots and directories of the raw mirror and the products, the
    sync state, the manifests and push logs); every directory above them is
    root's, so the user cannot rename or replace what root reads at boot or
    renewal (the credential store, Let's Encrypt's state, Tailscale's key).
    tmpfiles also corrects the owner and mode of a volume laid out before.
    """
    s, user = spec.storage, spec.user.name
    on_volume = mount.where.rstrip("/") + "/"
    writes = [s.raw_root, *(f"{s.raw_root}/{d}" for d in s.raw_dirs)]
    writes += [s.product_root, *(f"{s.product_root}/{d}" for d in s.product_dirs)]
    writes += [spec.mirror_verify.manifest_root, spec.gws.log_dir]
    owned = {p: {"mode": s.mode, "user": user, "group": user} for p in writes}
    if s.state_on_volume is not None:
        owned[s.state_on_volume] = {"mode": "0755", "user": user, "group": user}
    root_only = {"mode": "0700", "user": "root", "group": "root"}
    tailscale = _tailscale_state(spec)
    if tailscale is not None:
        # tailscaled's node key: the host's tailnet identity, root-only like /var/lib/tailscale.
        owned[tailscale] = root_only
    # Made root-only before anyone puts a secret in it.
    owned[spec.credential_store] = root_only
    owned = {p: e for p, e in owned.items() if p.startswith(on_volume)}
    parents: dict[str, dict[str, str]] = {}
    for path in owned:
        parent = path.rsplit("/", 1)[0]
        while parent.startswith(on_volume) and parent not in owned:
            # Inside a write area (products/quicklooks) the user's; above one, root's.
            area = [a for a in owned if parent.startswith(a + "/") and owned[a]["user"] == user]
            parents[parent] = (
                owned[area[0]] if area else {"mode": "0755", "user": "root", "group": "root"}
            )
            parent = parent.rsplit("/", 1)[0]
    layout = {**parents, **owned}
    return [{"path": p, **layout[p]} for p in sorted(layout, key=lambda p: (p.count("/"), p))]


def _var_entries(spec: HostSpec) -> list[dict[str, str]]:
    user = spec.user.name
    return [
        {"path": "/var/home", "mode": "0755", "user": "root", "group": "root"},
        {"path": f"/var{spec.user.home}", "mode": "0750", "user": user, "group": user},
        {"path": f"/var{spec.user.home}/.ssh", "mode": "0700", "user": user, "group": user},
        {"path": "/var/roothome", "mode": "0700", "user": "root", "group": "root"},
        {"path": spec.storage.log_dir, "mode": "0755", "user": user, "group": user},
        _state_entry(spec),
        {"path": "/var/lib/aurora/ssh", "mode": "0755", "user": "root", "group": "root"},
        *_tailscale_entries(spec),
    ]


def _tailscale_state(spec: HostSpec) -> str | None:
    """Where tailscaled's state really lives, when the spec keeps it on a volume."""
    return spec.tailscale.state_on_volume if spec.tailscale.enabled else None


def _tailscale_entries(spec: HostSpec) -> list[dict[str, str]]:
    state = _tailscale_state(spec)
    return [] if state is None else [{"path": TAILSCALE_STATE, "link": state}]


def _tailscale_dropin(spec: HostSpec, state: str) -> bytes:
    """tailscaled starts only once the volume holding its state is mounted and laid out."""
    units = [f"aurora-storage@{m.unit_part}.service" for m in spec.mounts
             if state.startswith(m.where.rstrip("/") + "/")]  # fmt: skip
    lines = [
        "# tailscaled's state (the node key) is on a persistent volume, linked from",
        f"# {TAILSCALE_STATE}: a rebuild keeps the host's tailnet identity.",
        "[Unit]",
        f"RequiresMountsFor={state}",
    ]
    if units:
        lines += [f"Wants={' '.join(units)}", f"After={' '.join(units)}"]
    # Also bound into tailscaled's namespace: should a package ever ship the
    # directory (so the tmpfiles link is not made), the node key still lands on
    # the volume.
    lines += ["", "[Service]", f"BindPaths={state}:{TAILSCALE_STATE}"]
    return ("\n".join(lines) + "\n").encode()


def _state_entry(spec: HostSpec) -> dict[str, str]:
    storage, user = spec.storage, spec.user.name
    if storage.state_on_volume is not None:
        return {"path": storage.state_dir, "link": storage.state_on_volume}
    return {"path": storage.state_dir, "mode": "0755", "user": user, "group": user}


def sandbox_writes(spec: HostSpec, *paths: str | None) -> list[str]:
    """ReadWritePaths= of a sandboxed unit: the given paths, the state directory (and
    where it really lives) and the log directory; every other path is read-only."""
    s = spec.storage
    listed = [*paths, s.state_dir, s.state_on_volume, s.log_dir]
    return list(dict.fromkeys(p for p in listed if p))


def sandbox_hidden(spec: HostSpec) -> list[str]:
    """Paths no Aurora service may even read: root's trust anchors (the credential
    store, Let's Encrypt's keys)."""
    return [spec.credential_store, "/etc/credstore", spec.nginx.certificate_dir]


def enabled_units(spec: HostSpec) -> list[str]:
    units = [
        "systemd-networkd.service",
        "systemd-networkd-wait-online.service",
        "systemd-resolved.service",
        "ssh.service",
        "nginx.service",
        "aurora-nginx-tls.service",
        "aurora-health.timer",
        "certbot.timer",
        "ufw.service",
        "fail2ban.service",
        "remote-fs.target",
        "aurora-dashboard.service",
        "aurora-credentials.service",
    ]
    if spec.mounts:
        units.append("aurora-storage@.service " + " ".join(m.unit_part for m in spec.mounts))
    units += [f"{sync_unit(s)}.timer" for s in spec.source_sync.streams if s.enabled]
    units += [f"aurora-{j.name}.timer" for j in spec.jobs if j.enabled]
    units += [f"{gws_unit(j)}.timer" for j in spec.gws.jobs if spec.gws.enabled and j.enabled]
    if spec.mirror_verify.enabled:
        units.append(f"{MIRROR_VERIFY}.timer")
    if spec.tailscale.enabled:
        units += ["tailscaled.service", "aurora-tailscale-up.service"]
    if spec.gws.mount.enabled:
        units.append(mount_unit_name(spec.gws.mount.where))
    return units


def unit_classes(spec: HostSpec) -> dict[str, list[str]]:
    """The spec's units by what a failure of theirs says (see builder.host.health): a
    service failing is the image's fault; a pipeline unit depends on instruments and data."""
    services = [
        "aurora-dashboard.service",
        "nginx.service",
        "ssh.service",
        "aurora-credentials.service",
        "aurora-health.service",
        *(f"aurora-storage@{m.unit_part}.service" for m in spec.mounts),
    ]
    pipeline = [f"{sync_unit(s)}.service" for s in spec.source_sync.streams]
    pipeline += [f"aurora-{j.name}.service" for j in spec.jobs]
    pipeline += [f"{gws_unit(j)}.service" for j in spec.gws.jobs]
    pipeline.append(f"{MIRROR_VERIFY}.service")
    return {"service": sorted(services), "pipeline": sorted(pipeline)}


def render(spec: HostSpec, units_dir: Path = UNITS_DIR) -> Tree:
    """Render every file the spec decides, keyed by absolute path in the image."""
    env = environment(units_dir)
    names = placeholders(spec)
    env.filters["paths"] = lambda text: expand(text, names)
    user = spec.user.name
    tree: Tree = {}

    def put(path: str, template: str, mode: int = 0o644, **context: object) -> None:
        tree[path] = File(env.get_template(template).render(**context).encode(), mode)

    put("/etc/hostname", "hostname.j2", hostname=spec.hostname)
    # Operators' public keys in the read-only image: root stays reachable without /data.
    keys = "".join(f"{key}\n" for key in spec.operator_keys)
    tree[OPERATOR_KEYS] = File(("# Operators' keys, from the host spec.\n" + keys).encode())
    for mount in spec.mounts:
        # Mount points must exist in the read-only root before the volumes arrive.
        tree[mount.where] = File(mode=0o755, directory=True)
    put("/etc/fstab", "fstab.j2", mounts=[_fstab_entry(m) for m in spec.mounts])
    put(
        "/usr/lib/sysusers.d/aurora.conf",
        "sysusers.conf.j2",
        user=spec.user,
        panel=spec.dashboard.user,
    )
    put("/usr/lib/tmpfiles.d/aurora.conf", "tmpfiles.conf.j2", entries=_var_entries(spec))
    for mount in spec.mounts:
        put(
            f"{STORAGE_DIR}/{mount.unit_part}.conf",
            "tmpfiles.conf.j2",
            entries=storage_entries(spec, mount),
        )
    put(ENV_FILE, "dashboard.env.j2", environment=spec.environment)
    put(
        f"{SYSTEM_UNITS}/aurora-dashboard.service",
        "dashboard.service.j2",
        d=spec.dashboard,
        user=user,
        env_file=ENV_FILE,
        hidden=sandbox_hidden(spec),
    )
    put(
        "/etc/nginx/sites-available/aurora.conf",
        "nginx-site.conf.j2",
        hostname=spec.hostname,
        headers=spec.nginx.security_headers,
        tls_dir=NGINX_TLS_DIR,
        d=spec.dashboard,
    )
    put(
        "/etc/nginx/snippets/aurora-locations.conf",
        "nginx-locations.conf.j2",
        hostname=spec.hostname,
        d=spec.dashboard,
        nginx=spec.nginx,
    )
    tree["/etc/nginx/snippets/aurora-headers.conf"] = File(
        "".join(f"add_header {h} always;\n" for h in spec.nginx.security_headers).encode()
    )
    tree["/etc/aurora/nginx-tls.env"] = File(
        f"AURORA_HOSTNAME={spec.hostname}\nAURORA_CERT_DIR={spec.nginx.certificate_dir}\n".encode()
    )
    tree["/etc/nginx/sites-enabled/aurora.conf"] = File(link="../sites-available/aurora.conf")

    defaults = spec.source_sync.defaults
    for stream in spec.source_sync.streams:
        unit = sync_unit(stream)
        put(
            f"{SYSTEM_UNITS}/{unit}.service",
            "program.service.j2",
            description=stream.description,
            after=defaults.after,
            condition=defaults.condition_path_exists,
            user=user,
            program=sync_program_link(stream),
            timeout=stream.timeout or defaults.timeout,
            writes=sandbox_writes(spec, f"{spec.storage.raw_root}/{stream.dest}"),
            hidden=sandbox_hidden(spec),
        )
        put(
            f"{SYSTEM_UNITS}/{unit}.timer",
            "timer.j2",
            description=f"Schedule Aurora {stream.label} source sync",
            schedule=defaults.schedule,
            unit=f"{unit}.service",
        )
        config = json.dumps(sync_config(spec, stream), indent=2, sort_keys=True) + "\n"
        tree[f"{SYNC_CONFIG_DIR}/{stream.name}.json"] = File(config.encode())
        tree[sync_program_link(stream)] = File(link=SYNC_PROGRAM)

    for job in spec.jobs:
        put(
            f"{SYSTEM_UNITS}/aurora-{job.name}.service",
            "job.service.j2",
            job=job,
            user=user,
            checkout=spec.dashboard.checkout,
            env_file=ENV_FILE,
            writes=sandbox_writes(spec, spec.storage.raw_root, spec.storage.product_root),
            hidden=sandbox_hidden(spec),
        )
        put(
            f"{SYSTEM_UNITS}/aurora-{job.name}.timer",
            "timer.j2",
            description=job.timer_description,
            schedule=job.schedule,
            unit=f"aurora-{job.name}.service",
        )

    gws = spec.gws
    for push in gws.jobs:
        unit = gws_unit(push)
        put(
            f"{SYSTEM_UNITS}/{unit}.service",
            "program.service.j2",
            description=f"Aurora sync {push.name} data to JASMIN GWS",
            after=["network-online.target"],
            condition=gws.identity,
            user=user,
            program=f"/usr/local/bin/{unit}",
            timeout=push.timeout or gws.timeout,
            writes=sandbox_writes(spec, gws.log_dir),
            hidden=sandbox_hidden(spec),
        )
        put(
            f"{SYSTEM_UNITS}/{unit}.timer",
            "timer.j2",
            description=f"Schedule Aurora GWS {push.name} sync",
            schedule=Schedule(calendar=push.calendar, jitter=gws.jitter),
            unit=f"{unit}.service",
        )
        config = json.dumps(gws_config(spec, push), indent=2, sort_keys=True) + "\n"
        tree[f"{GWS_CONFIG_DIR}/{push.name}.json"] = File(config.encode())
        tree[f"/usr/local/bin/{unit}"] = File(link=GWS_PROGRAM)
    put(
        f"{SYSTEM_UNITS}/{mount_unit_name(gws.mount.where)}",
        "sshfs.mount.j2",
        gws=gws,
    )

    mv = spec.mirror_verify
    put(
        f"{SYSTEM_UNITS}/{MIRROR_VERIFY}.service",
        "program.service.j2",
        description="Aurora mirror verification and prune-gate manifests",
        after=["network-online.target"],
        condition=None,
        user=user,
        program=f"/usr/local/bin/{MIRROR_VERIFY}",
        timeout=spec.mirror_verify.timeout,
        writes=sandbox_writes(spec, spec.mirror_verify.manifest_root),
        hidden=sandbox_hidden(spec),
    )
    put(
        f"{SYSTEM_UNITS}/{MIRROR_VERIFY}.timer",
        "timer.j2",
        description="Schedule Aurora mirror verification and prune-gate manifests",
        schedule=Schedule(calendar=mv.calendar, jitter=mv.jitter),
        unit=f"{MIRROR_VERIFY}.service",
    )
    config = json.dumps(mirror_verify_config(spec), indent=2, sort_keys=True) + "\n"
    tree[MIRROR_VERIFY_CONFIG] = File(config.encode())
    tree[f"/usr/local/bin/{MIRROR_VERIFY}"] = File(link=MIRROR_VERIFY_PROGRAM)

    tailscale_state = _tailscale_state(spec)
    if tailscale_state is not None:
        tree[f"{SYSTEM_UNITS}/tailscaled.service.d/aurora-state.conf"] = File(
            _tailscale_dropin(spec, tailscale_state)
        )
    if spec.tailscale.enabled:
        put(
            f"{SYSTEM_UNITS}/aurora-tailscale-up.service",
            "tailscale-up.service.j2",
            ts=spec.tailscale,
            hostname=spec.hostname,
            store=spec.credential_store,
        )

    installed = [s for s in spec.secrets if s.path]
    put(
        f"{SYSTEM_UNITS}/aurora-credentials.service",
        "credentials.service.j2",
        secrets=installed,
        home=spec.user.home,
        store=spec.credential_store,
    )

    creds = [
        {"name": s.name, "path": s.path, "mode": s.mode, "owner": s.owner, "format": s.format}
        for s in installed
    ]
    tree["/etc/aurora/credentials.json"] = File((json.dumps(creds, indent=2) + "\n").encode())

    classes = json.dumps(unit_classes(spec), indent=2) + "\n"
    tree[UNIT_CLASSES_FILE] = File(classes.encode())

    put(
        "/usr/lib/systemd/system-preset/00-aurora.preset",
        "preset.j2",
        enabled=enabled_units(spec),
    )
    return dict(sorted(tree.items()))


def _fstab_entry(mount: Mount) -> dict[str, str]:
    passno = "2" if mount.type in {"ext4", "xfs", "btrfs"} else "0"
    return {
        "what": mount.what,
        "where": mount.where,
        "type": mount.type,
        "options": mount.options,
        "passno": passno,
    }
