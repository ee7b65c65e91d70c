"""What each rendered row of the carried table makes from the spec: a template's
context (the row names the template) or the file itself. One function per row,
named after what it makes; builder.render.carried pairs each with its path and
spec keys, and builder.render.engine calls them."""

from __future__ import annotations

import json

from builder.errors import SpecError
from builder.render import configs, layout
from builder.render.names import (
    ENV_FILE,
    GWS_CONFIG_DIR,
    GWS_PROGRAM,
    MIRROR_VERIFY,
    MIRROR_VERIFY_CONFIG,
    MIRROR_VERIFY_PROGRAM,
    NGINX_TLS_DIR,
    OPERATOR_KEYS,
    STORAGE_DIR,
    SYNC_CONFIG_DIR,
    SYNC_PROGRAM,
    SYSTEM_UNITS,
    TAILSCALE_STATE,
    gws_unit,
    mount_unit_name,
    sync_program_link,
    sync_unit,
)
from builder.render.tree import File
from builder.spec.model import GwsJob, HostSpec, Job, Mount, Schedule, Stream

# A row's product: its path and either a template's context or the file itself.
Made = tuple[str, dict[str, object] | File]


def _json(data: object, *, sort_keys: bool = True) -> File:
    return File((json.dumps(data, indent=2, sort_keys=sort_keys) + "\n").encode())


def hostname(spec: HostSpec, _: None) -> Made:
    return "/etc/hostname", {"hostname": spec.hostname}


def operator_keys(spec: HostSpec, _: None) -> Made:
    # Operators' public keys in the read-only image: root stays reachable without /data.
    keys = "".join(f"{key}\n" for key in spec.operator_keys)
    return OPERATOR_KEYS, File(("# Operators' keys, from the host spec.\n" + keys).encode())


def mount_point(spec: HostSpec, mount: Mount) -> Made:
    # Mount points must exist in the read-only root before the volumes arrive.
    return mount.where, File(mode=0o755, directory=True)


def fstab(spec: HostSpec, _: None) -> Made:
    return "/etc/fstab", {"mounts": [layout.fstab_entry(m) for m in spec.mounts]}


def sysusers(spec: HostSpec, _: None) -> Made:
    return "/usr/lib/sysusers.d/aurora.conf", {"user": spec.user, "panel": spec.dashboard.user}


def var_tmpfiles(spec: HostSpec, _: None) -> Made:
    return "/usr/lib/tmpfiles.d/aurora.conf", {"entries": layout.var_entries(spec)}


def volume_layout(spec: HostSpec, mount: Mount) -> Made:
    path = f"{STORAGE_DIR}/{mount.unit_part}.conf"
    return path, {"entries": layout.storage_entries(spec, mount)}


def letsencrypt(spec: HostSpec, _: None) -> Made:
    # certbot keeps its state on the persistent volume, not in the read-only root.
    return "/etc/letsencrypt", File(link=spec.nginx.certificate_dir)


def credstore(spec: HostSpec, _: None) -> Made:
    # The credential store (JASMIN's secrets) lives on the persistent volume, root-only.
    return "/etc/credstore", File(link=spec.credential_store)


def dashboard_env(spec: HostSpec, _: None) -> Made:
    return ENV_FILE, {"environment": spec.environment}


def dashboard_service(spec: HostSpec, _: None) -> Made:
    return f"{SYSTEM_UNITS}/aurora-dashboard.service", {
        "d": spec.dashboard,
        "user": spec.user.name,
        "env_file": ENV_FILE,
        "hidden": layout.sandbox_hidden(spec),
    }


def nginx_site(spec: HostSpec, _: None) -> Made:
    return "/etc/nginx/sites-available/aurora.conf", {
        "hostname": spec.hostname,
        "headers": spec.nginx.security_headers,
        "tls_dir": NGINX_TLS_DIR,
        "d": spec.dashboard,
    }


def nginx_site_link(spec: HostSpec, _: None) -> Made:
    return "/etc/nginx/sites-enabled/aurora.conf", File(link="../sites-available/aurora.conf")


def nginx_locations(spec: HostSpec, _: None) -> Made:
    return "/etc/nginx/snippets/aurora-locations.conf", {
        "hostname": spec.hostname,
        "d": spec.dashboard,
        "nginx": spec.nginx,
    }


def nginx_headers(spec: HostSpec, _: None) -> Made:
    lines = "".join(f"add_header {h} always;\n" for h in spec.nginx.security_headers)
    return "/etc/nginx/snippets/aurora-headers.conf", File(lines.encode())


def nginx_tls_env(spec: HostSpec, _: None) -> Made:
    text = f"AURORA_HOSTNAME={spec.hostname}\nAURORA_CERT_DIR={spec.nginx.certificate_dir}\n"
    return "/etc/aurora/nginx-tls.env", File(text.encode())


def sync_service(spec: HostSpec, stream: Stream) -> Made:
    defaults = spec.source_sync.defaults
    return f"{SYSTEM_UNITS}/{sync_unit(stream)}.service", {
        "description": stream.description,
        "after": defaults.after,
        "condition": defaults.condition_path_exists,
        "user": spec.user.name,
        "program": sync_program_link(stream),
        "timeout": stream.timeout or defaults.timeout,
        "writes": layout.sandbox_writes(spec, f"{spec.storage.raw_root}/{stream.dest}"),
        "hidden": layout.sandbox_hidden(spec),
    }


def sync_timer(spec: HostSpec, stream: Stream) -> Made:
    unit = sync_unit(stream)
    return f"{SYSTEM_UNITS}/{unit}.timer", {
        "description": f"Schedule Aurora {stream.label} source sync",
        "schedule": spec.source_sync.defaults.schedule,
        "unit": f"{unit}.service",
    }


def sync_config(spec: HostSpec, stream: Stream) -> Made:
    return f"{SYNC_CONFIG_DIR}/{stream.name}.json", _json(configs.sync_config(spec, stream))


def sync_link(spec: HostSpec, stream: Stream) -> Made:
    return sync_program_link(stream), File(link=SYNC_PROGRAM)


def job_service(spec: HostSpec, job: Job) -> Made:
    s = spec.storage
    return f"{SYSTEM_UNITS}/aurora-{job.name}.service", {
        "job": job,
        "user": spec.user.name,
        "checkout": spec.dashboard.checkout,
        "env_file": ENV_FILE,
        "writes": layout.sandbox_writes(spec, s.raw_root, s.product_root),
        "hidden": layout.sandbox_hidden(spec),
    }


def job_timer(spec: HostSpec, job: Job) -> Made:
    return f"{SYSTEM_UNITS}/aurora-{job.name}.timer", {
        "description": job.timer_description,
        "schedule": job.schedule,
        "unit": f"aurora-{job.name}.service",
    }


def gws_service(spec: HostSpec, push: GwsJob) -> Made:
    gws, unit = spec.gws, gws_unit(push)
    return f"{SYSTEM_UNITS}/{unit}.service", {
        "description": f"Aurora sync {push.name} data to JASMIN GWS",
        "after": ["network-online.target"],
        "condition": gws.identity,
        "user": spec.user.name,
        "program": f"/usr/local/bin/{unit}",
        "timeout": push.timeout or gws.timeout,
        "writes": layout.sandbox_writes(spec, gws.log_dir),
        "hidden": layout.sandbox_hidden(spec),
    }


def gws_timer(spec: HostSpec, push: GwsJob) -> Made:
    unit = gws_unit(push)
    return f"{SYSTEM_UNITS}/{unit}.timer", {
        "description": f"Schedule Aurora GWS {push.name} sync",
        "schedule": Schedule(calendar=push.calendar, jitter=spec.gws.jitter),
        "unit": f"{unit}.service",
    }


def gws_config(spec: HostSpec, push: GwsJob) -> Made:
    return f"{GWS_CONFIG_DIR}/{push.name}.json", _json(configs.gws_config(spec, push))


def gws_link(spec: HostSpec, push: GwsJob) -> Made:
    return f"/usr/local/bin/{gws_unit(push)}", File(link=GWS_PROGRAM)


def gws_mount(spec: HostSpec, _: None) -> Made:
    return f"{SYSTEM_UNITS}/{mount_unit_name(spec.gws.mount.where)}", {"gws": spec.gws}


def mirror_verify_service(spec: HostSpec, _: None) -> Made:
    mv = spec.mirror_verify
    return f"{SYSTEM_UNITS}/{MIRROR_VERIFY}.service", {
        "description": "Aurora mirror verification and prune-gate manifests",
        "after": ["network-online.target"],
        "condition": None,
        "user": spec.user.name,
        "program": f"/usr/local/bin/{MIRROR_VERIFY}",
        "timeout": mv.timeout,
        "writes": layout.sandbox_writes(spec, mv.manifest_root),
        "hidden": layout.sandbox_hidden(spec),
    }


def mirror_verify_timer(spec: HostSpec, _: None) -> Made:
    mv = spec.mirror_verify
    return f"{SYSTEM_UNITS}/{MIRROR_VERIFY}.timer", {
        "description": "Schedule Aurora mirror verification and prune-gate manifests",
        "schedule": Schedule(calendar=mv.calendar, jitter=mv.jitter),
        "unit": f"{MIRROR_VERIFY}.service",
    }


def mirror_verify_config(spec: HostSpec, _: None) -> Made:
    return MIRROR_VERIFY_CONFIG, _json(configs.mirror_verify_config(spec))


def mirror_verify_link(spec: HostSpec, _: None) -> Made:
    return f"/usr/local/bin/{MIRROR_VERIFY}", File(link=MIRROR_VERIFY_PROGRAM)


def tailscale_dropin(spec: HostSpec, _: None) -> Made:
    state = spec.tailscale.state_on_volume or TAILSCALE_STATE
    path = f"{SYSTEM_UNITS}/tailscaled.service.d/aurora-state.conf"
    return path, File(layout.tailscale_dropin(spec, state))


def tailscale_up(spec: HostSpec, _: None) -> Made:
    return f"{SYSTEM_UNITS}/aurora-tailscale-up.service", {
        "ts": spec.tailscale,
        "hostname": spec.hostname,
        "store": spec.credential_store,
    }


def credentials_service(spec: HostSpec, _: None) -> Made:
    return f"{SYSTEM_UNITS}/aurora-credentials.service", {
        "secrets": [s for s in spec.secrets if s.path],
        "home": spec.user.home,
        "store": spec.credential_store,
    }


def credentials_json(spec: HostSpec, _: None) -> Made:
    creds = [
        {"name": s.name, "path": s.path, "mode": s.mode, "owner": s.owner, "format": s.format}
        for s in spec.secrets
        if s.path
    ]
    return "/etc/aurora/credentials.json", _json(creds, sort_keys=False)


UFW_TARGETS = {"allow": "ACCEPT", "deny": "DROP"}
UFW_POLICIES = {"allow": "ACCEPT", "deny": "DROP", "reject": "REJECT"}


def ufw_rules(spec: HostSpec) -> list[dict[str, object]]:
    """The spec's firewall rules as ufw 0.36 writes them into user.rules: one tuple per
    port and protocol (a later rule for the same one changes its action in place, as
    `ufw deny` after `ufw allow` does), and the iptables lines ufw makes of each."""
    rules: dict[tuple[str, str], dict[str, object]] = {}
    for action, ports in (("allow", spec.firewall.allow), ("deny", spec.firewall.deny)):
        for text in ports:
            port, _, proto = text.partition("/")
            if ":" in port and not proto:
                raise SpecError(
                    f"{spec.source.path}: firewall.{action}: {text!r} is a port range without "
                    "a protocol, which ufw refuses; write it as e.g. 6000:6007/tcp"
                )
            match = f"-m multiport --dports {port}" if ":" in port else f"--dport {port}"
            protos = [proto] if proto else ["tcp", "udp"]
            lines = [f"-p {p} {match} -j {UFW_TARGETS[action]}" for p in protos]
            rules[(proto or "any", port)] = {
                "action": action,
                "proto": proto or "any",
                "port": port,
                "lines": lines,
            }
    return list(rules.values())


def ufw_user_rules(spec: HostSpec, _: None) -> Made:
    return "/etc/ufw/user.rules", {"p": "ufw", "any": "0.0.0.0/0", "rules": ufw_rules(spec)}


def ufw_user6_rules(spec: HostSpec, _: None) -> Made:
    return "/etc/ufw/user6.rules", {"p": "ufw6", "any": "::/0", "rules": ufw_rules(spec)}


def ufw_default(spec: HostSpec, _: None) -> Made:
    return "/etc/default/ufw", {"policy": UFW_POLICIES[spec.firewall.default_incoming]}
