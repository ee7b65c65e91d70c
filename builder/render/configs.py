"""The JSON configs the on-host programs read (mkosi.extra/usr/lib/aurora/): one
per stream, GWS job and the mirror verifier, each documented by its program."""

from __future__ import annotations

from builder.render.names import VOLUME_MARKER
from builder.spec.model import GwsJob, HostSpec, NetTimeouts, Stream
from builder.spec.systemd_values import parse_timespan


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
                    # Verified on the port it is synced on (sync_config's).
                    "ssh": {**_ssh(stream.identity, spec), "port": stream.port},
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
