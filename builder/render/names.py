"""Names the rendered files share: image paths the programs and units agree on,
and the unit and link names derived from a stream, job or mount."""

from __future__ import annotations

from builder.spec.model import GwsJob, Stream

SYSTEM_UNITS = "/etc/systemd/system"
ENV_FILE = "/etc/aurora-dashboard.env"
OPERATOR_KEYS = "/etc/ssh/authorized_keys.d/root"
SYNC_PROGRAM = "/usr/lib/aurora/aurora-source-sync"
SYNC_CONFIG_DIR = "/etc/aurora/source-sync"
STORAGE_DIR = "/usr/lib/aurora/storage"
NGINX_TLS_DIR = "/run/aurora/nginx"
GWS_PROGRAM = "/usr/lib/aurora/aurora-gws-push"
GWS_CONFIG_DIR = "/etc/aurora/gws"
MIRROR_VERIFY = "aurora-mirror-verify"
MIRROR_VERIFY_PROGRAM = "/usr/lib/aurora/aurora-mirror-verify"
MIRROR_VERIFY_CONFIG = "/etc/aurora/mirror-verify.json"
PRESET = "/usr/lib/systemd/system-preset/00-aurora.preset"
# Which units are services and which pipeline (read by the release probe, builder.host.health).
UNIT_CLASSES_FILE = "/etc/aurora/unit-classes.json"
# Written by the image build, not render: what the running host says it is (audits read it).
IDENTITY = "/usr/lib/aurora/image.json"
# Written by aurora-volume-id (aurora-storage@.service) when the storage layout
# first initialises a volume; the GWS pushes compare it with what they pushed from.
VOLUME_MARKER = ".aurora-volume-id"
TAILSCALE_STATE = "/var/lib/tailscale"
# Written by the config layer's build, not render: the tables the image's ufw-init loads,
# as (iptables-save, ip6tables-save) print them; ufw.service restores them at boot
# (/usr/lib/aurora/aurora-firewall reads these paths too).
FIREWALL_SAVED = ("/etc/ufw/aurora-boot.rules", "/etc/ufw/aurora-boot6.rules")


def gws_unit(job: GwsJob) -> str:
    return f"aurora-gws-rsync-{job.name}"


def mount_unit_name(where: str) -> str:
    return where.strip("/").replace("-", "\\x2d").replace("/", "-") + ".mount"


def sync_unit(stream: Stream) -> str:
    return f"aurora-{stream.name}-source-sync"


def sync_program_link(stream: Stream) -> str:
    """The contract's per-stream command name, a link to the one sync program."""
    return f"/usr/local/bin/aurora-{stream.name}-sync"
