"""Render a host spec into the file tree baked into the image.

Pure: a spec goes in, a mapping of image paths to file contents comes out.
Nothing here touches the disk, so rendering is fast and every unit can be
checked without building or booting anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jinja2

from builder.spec import HostSpec, Mount, Stream
from builder.systemd_values import parse_timespan

UNITS_DIR = Path(__file__).resolve().parent.parent / "units"
SYSTEM_UNITS = "/etc/systemd/system"
ENV_FILE = "/etc/aurora-dashboard.env"
SYNC_PROGRAM = "/usr/lib/aurora/aurora-source-sync"
SYNC_CONFIG_DIR = "/etc/aurora/source-sync"
STORAGE_DIR = "/usr/lib/aurora/storage"


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


def environment(units_dir: Path = UNITS_DIR) -> jinja2.Environment:
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
    return env


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
        "ssh": {
            "identity": stream.identity,
            "port": stream.port,
            "options": ["StrictHostKeyChecking=accept-new"],
            "known_hosts": f"{spec.user.home}/.ssh/known_hosts",
        },
        "rsync_options": [],
    }


def storage_entries(spec: HostSpec, mount: Mount) -> list[dict[str, str]]:
    """tmpfiles entries for the storage layout that lives on one volume."""
    s, user = spec.storage, spec.user.name
    paths = [s.raw_root, *(f"{s.raw_root}/{d}" for d in s.raw_dirs)]
    paths += [s.product_root, *(f"{s.product_root}/{d}" for d in s.product_dirs)]
    below = [p for p in paths if p == mount.where or p.startswith(mount.where.rstrip("/") + "/")]
    parents: list[str] = []
    for path in below:
        parent = path.rsplit("/", 1)[0]
        while parent.startswith(mount.where + "/") and parent not in parents + below:
            parents.append(parent)
            parent = parent.rsplit("/", 1)[0]
    ordered = sorted(set(parents) | set(below), key=lambda p: (p.count("/"), p))
    return [{"path": p, "mode": s.mode, "user": user, "group": user} for p in ordered]


def _var_entries(spec: HostSpec) -> list[dict[str, str]]:
    user = spec.user.name
    return [
        {"path": "/var/home", "mode": "0755", "user": "root", "group": "root"},
        {"path": f"/var{spec.user.home}", "mode": "0750", "user": user, "group": user},
        {"path": f"/var{spec.user.home}/.ssh", "mode": "0700", "user": user, "group": user},
        {"path": "/var/roothome", "mode": "0700", "user": "root", "group": "root"},
        {"path": spec.storage.log_dir, "mode": "0755", "user": user, "group": user},
        {"path": spec.storage.state_dir, "mode": "0755", "user": user, "group": user},
        {"path": "/var/lib/aurora/ssh", "mode": "0755", "user": "root", "group": "root"},
    ]


def enabled_units(spec: HostSpec) -> list[str]:
    units = [
        "systemd-networkd.service",
        "systemd-networkd-wait-online.service",
        "systemd-resolved.service",
        "ssh.service",
        "nginx.service",
        "remote-fs.target",
        "aurora-dashboard.service",
    ]
    if spec.mounts:
        units.append("aurora-storage@.service " + " ".join(m.unit_part for m in spec.mounts))
    units += [f"{sync_unit(s)}.timer" for s in spec.source_sync.streams if s.enabled]
    return units


def render(spec: HostSpec, units_dir: Path = UNITS_DIR) -> Tree:
    """Render every file the spec decides, keyed by absolute path in the image."""
    env = environment(units_dir)
    user = spec.user.name
    tree: Tree = {}

    def put(path: str, template: str, mode: int = 0o644, **context: object) -> None:
        tree[path] = File(env.get_template(template).render(**context).encode(), mode)

    put("/etc/hostname", "hostname.j2", hostname=spec.hostname)
    for mount in spec.mounts:
        # Mount points must exist in the read-only root before the volumes arrive.
        tree[mount.where] = File(mode=0o755, directory=True)
    put("/etc/fstab", "fstab.j2", mounts=[_fstab_entry(m) for m in spec.mounts])
    put("/usr/lib/sysusers.d/aurora.conf", "sysusers.conf.j2", user=spec.user)
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
    )
    put(
        "/etc/nginx/sites-available/aurora.conf",
        "nginx-site.conf.j2",
        hostname=spec.hostname,
        d=spec.dashboard,
        nginx=spec.nginx,
    )
    tree["/etc/nginx/sites-enabled/aurora.conf"] = File(link="../sites-available/aurora.conf")

    defaults = spec.source_sync.defaults
    for stream in spec.source_sync.streams:
        unit = sync_unit(stream)
        put(
            f"{SYSTEM_UNITS}/{unit}.service",
            "source-sync.service.j2",
            stream=stream,
            user=user,
            defaults=defaults,
            program=sync_program_link(stream),
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
