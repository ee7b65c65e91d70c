"""The one table of what the image carries from this project: every file, who
produces it and the spec keys it depends on.

Kinds: ``template`` (a units/*.j2 template rendered from the spec), ``generated``
(written by render's own code: JSON configs, links, directories), ``static``
(copied as is from mkosi.extra/), ``build`` (made by the image build: the
identity file, the app and its venv, ufw's rules). Render walks the rendered
rows (template and generated) and records each row's producer and keys on the
file it makes (builder.render.tree.Provenance); `aurora-image explain`, the
audit's unit list (through the manifest), the preset, the unit classes and
docs/reference/carried.md read that record. In a row's ``path``, ``<name>``
stands for one file per item of ``each``; in its keys, ``[]`` is that item.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from builder.render import produce
from builder.render.names import FIREWALL_SAVED, IDENTITY, PRESET, SYSTEM_UNITS, UNIT_CLASSES_FILE
from builder.render.unitfile import unit_name
from builder.spec.model import HostSpec

Kind = Literal["template", "generated", "static", "build"]
Role = Literal["service", "pipeline"]
Maker = Callable[[HostSpec, Any], produce.Made]


@dataclass(frozen=True)
class Carried:
    """One row: a file (or one file per list item) the image carries."""

    path: str
    kind: Kind
    producer: str
    keys: tuple[str, ...] = ()
    each: str | None = None
    # Spec keys that must all be set for the file to exist; `[]` is the row's item.
    when: tuple[str, ...] = ()
    make: Maker | None = None
    # The preset enables the unit: True, or when all these spec keys are set.
    enable: bool | tuple[str, ...] = False
    # A template unit (name@.service) is enabled once per item of this list (unit_part).
    instances: str | None = None
    role: Role | None = None
    # The mode of a template row's file.
    mode: int = 0o644

    def items(self, spec: HostSpec) -> Iterator[tuple[int | None, Any]]:
        """The row's items in the spec (one None for a single file), as far as `when` allows."""
        if self.each is None:
            if all(lookup(spec, k) for k in self.when):
                yield None, None
            return
        for index, item in enumerate(lookup(spec, self.each)):
            if all(lookup(spec, at(k, index)) for k in self.when):
                yield index, item

    def enabled(self, spec: HostSpec, index: int | None) -> bool:
        if isinstance(self.enable, bool):
            return self.enable
        return all(lookup(spec, at(k, index)) for k in self.enable)


@dataclass(frozen=True)
class PackageUnit:
    """A unit a Debian package ships that the image enables or classifies."""

    name: str
    enable: bool = True
    when: tuple[str, ...] = ()
    role: Role | None = None


def at(key: str, index: int | None) -> str:
    """A row's key for one item: ``gws.jobs[]`` -> ``gws.jobs[2]``."""
    return key if index is None else key.replace("[]", f"[{index}]", 1)


def lookup(spec: HostSpec, key: str) -> Any:
    """The spec value at a key path such as ``gws.jobs[2].enabled``."""
    value: Any = spec
    for part in re.findall(r"\[\d+\]|[^.\[\]]+", key):
        value = value[int(part[1:-1])] if part.startswith("[") else getattr(value, part)
    return value


SANDBOX = ("storage.state_dir", "storage.log_dir", "credential_store", "nginx.certificate_dir")
UNITS = SYSTEM_UNITS


def _preset(spec: HostSpec, _: None) -> produce.Made:
    return PRESET, {"enabled": enabled_units(spec)}


def _unit_classes(spec: HostSpec, _: None) -> produce.Made:
    return UNIT_CLASSES_FILE, produce._json(unit_classes(spec), sort_keys=False)


T = "template"
G = "generated"
S = "static"
B = "build"

TABLE: tuple[Carried, ...] = (
    Carried("/etc/hostname", T, "units/hostname.j2", ("hostname",), make=produce.hostname),
    Carried("/etc/ssh/authorized_keys.d/root", G, "builder.render.produce.operator_keys",
            ("operator_keys",), make=produce.operator_keys),
    Carried("<mount>/", G, "builder.render.produce.mount_point", ("mounts[].where",),
            each="mounts", make=produce.mount_point),
    Carried("/etc/fstab", T, "units/fstab.j2", ("mounts",), make=produce.fstab),
    Carried("/usr/lib/sysusers.d/aurora.conf", T, "units/sysusers.conf.j2",
            ("user", "dashboard.user"), make=produce.sysusers),
    Carried("/usr/lib/tmpfiles.d/aurora.conf", T, "units/tmpfiles.conf.j2",
            ("user", "storage", "tailscale"), make=produce.var_tmpfiles),
    Carried("/usr/lib/aurora/storage/<volume>.conf", T, "units/tmpfiles.conf.j2",
            ("mounts[]", "storage", "user.name", "mirror_verify.manifest_root", "gws.log_dir",
             "tailscale", "credential_store"), each="mounts", make=produce.volume_layout),
    Carried("/etc/letsencrypt", G, "builder.render.produce.letsencrypt",
            ("nginx.certificate_dir",), make=produce.letsencrypt),
    Carried("/etc/credstore", G, "builder.render.produce.credstore", ("credential_store",),
            make=produce.credstore),
    Carried("/etc/aurora-dashboard.env", T, "units/dashboard.env.j2", ("environment",),
            make=produce.dashboard_env),
    Carried(f"{UNITS}/aurora-dashboard.service", T, "units/dashboard.service.j2",
            ("dashboard", "user.name", "credential_store", "nginx.certificate_dir"),
            make=produce.dashboard_service, enable=True, role="service"),
    Carried("/etc/nginx/sites-available/aurora.conf", T, "units/nginx-site.conf.j2",
            ("hostname", "nginx.security_headers", "dashboard"), make=produce.nginx_site),
    Carried("/etc/nginx/sites-enabled/aurora.conf", G, "builder.render.produce.nginx_site_link",
            make=produce.nginx_site_link),
    Carried("/etc/nginx/snippets/aurora-locations.conf", T, "units/nginx-locations.conf.j2",
            ("hostname", "dashboard", "nginx"), make=produce.nginx_locations),
    Carried("/etc/nginx/snippets/aurora-headers.conf", G, "builder.render.produce.nginx_headers",
            ("nginx.security_headers",), make=produce.nginx_headers),
    Carried("/etc/aurora/nginx-tls.env", G, "builder.render.produce.nginx_tls_env",
            ("hostname", "nginx.certificate_dir"), make=produce.nginx_tls_env),
    Carried(f"{UNITS}/aurora-<stream>-source-sync.service", T, "units/program.service.j2",
            ("source_sync.streams[]", "source_sync.defaults", "user.name", "storage.raw_root",
             *SANDBOX), each="source_sync.streams", make=produce.sync_service, role="pipeline"),
    Carried(f"{UNITS}/aurora-<stream>-source-sync.timer", T, "units/timer.j2",
            ("source_sync.streams[].label", "source_sync.streams[].name",
             "source_sync.defaults.on_boot", "source_sync.defaults.every",
             "source_sync.defaults.jitter", "source_sync.defaults.persistent"),
            each="source_sync.streams",
            make=produce.sync_timer, enable=("source_sync.streams[].enabled",)),
    Carried("/etc/aurora/source-sync/<stream>.json", G, "builder.render.configs.sync_config",
            ("source_sync.streams[]", "source_sync.defaults", "user", "storage", "secrets"),
            each="source_sync.streams", make=produce.sync_config),
    Carried("/usr/local/bin/aurora-<stream>-sync", G, "builder.render.produce.sync_link",
            ("source_sync.streams[].name",), each="source_sync.streams", make=produce.sync_link),
    Carried(f"{UNITS}/aurora-<job>.service", T, "units/job.service.j2",
            ("jobs[]", "user.name", "dashboard.checkout", "storage.raw_root",
             "storage.product_root", *SANDBOX), each="jobs", make=produce.job_service,
            role="pipeline"),
    Carried(f"{UNITS}/aurora-<job>.timer", T, "units/timer.j2",
            ("jobs[].name", "jobs[].timer_description", "jobs[].schedule"), each="jobs",
            make=produce.job_timer, enable=("jobs[].enabled",)),
    Carried(f"{UNITS}/aurora-gws-rsync-<push>.service", T, "units/program.service.j2",
            ("gws.jobs[]", "gws.identity", "gws.timeout", "gws.log_dir", "user.name", *SANDBOX),
            each="gws.jobs", make=produce.gws_service, role="pipeline"),
    Carried(f"{UNITS}/aurora-gws-rsync-<push>.timer", T, "units/timer.j2",
            ("gws.jobs[].name", "gws.jobs[].calendar", "gws.jitter"), each="gws.jobs",
            make=produce.gws_timer, enable=("gws.enabled", "gws.jobs[].enabled")),
    Carried("/etc/aurora/gws/<push>.json", G, "builder.render.configs.gws_config",
            ("gws", "gws.jobs[]", "storage.state_dir", "mounts", "secrets", "user"),
            each="gws.jobs", make=produce.gws_config),
    Carried("/usr/local/bin/aurora-gws-rsync-<push>", G, "builder.render.produce.gws_link",
            ("gws.jobs[].name",), each="gws.jobs", make=produce.gws_link),
    Carried(f"{UNITS}/<gws.mount.where>.mount", T, "units/sshfs.mount.j2", ("gws",),
            make=produce.gws_mount, enable=("gws.mount.enabled",)),
    Carried(f"{UNITS}/aurora-mirror-verify.service", T, "units/program.service.j2",
            ("mirror_verify.timeout", "mirror_verify.manifest_root", "user.name", *SANDBOX),
            make=produce.mirror_verify_service, role="pipeline"),
    Carried(f"{UNITS}/aurora-mirror-verify.timer", T, "units/timer.j2",
            ("mirror_verify.calendar", "mirror_verify.jitter"),
            make=produce.mirror_verify_timer, enable=("mirror_verify.enabled",)),
    Carried("/etc/aurora/mirror-verify.json", G, "builder.render.configs.mirror_verify_config",
            ("mirror_verify", "source_sync.streams", "gws", "storage", "user", "secrets"),
            make=produce.mirror_verify_config),
    Carried("/usr/local/bin/aurora-mirror-verify", G, "builder.render.produce.mirror_verify_link",
            make=produce.mirror_verify_link),
    Carried(f"{UNITS}/tailscaled.service.d/aurora-state.conf", G,
            "builder.render.layout.tailscale_dropin", ("tailscale.state_on_volume", "mounts"),
            when=("tailscale.enabled", "tailscale.state_on_volume"),
            make=produce.tailscale_dropin),
    Carried(f"{UNITS}/aurora-tailscale-up.service", T, "units/tailscale-up.service.j2",
            ("tailscale", "hostname", "credential_store"), when=("tailscale.enabled",),
            make=produce.tailscale_up, enable=True),
    Carried(f"{UNITS}/aurora-credentials.service", T, "units/credentials.service.j2",
            ("secrets", "user.home", "credential_store"), make=produce.credentials_service,
            enable=True, role="service"),
    Carried("/etc/aurora/credentials.json", G, "builder.render.produce.credentials_json",
            ("secrets",), make=produce.credentials_json),
    Carried(UNIT_CLASSES_FILE, G, "builder.render.carried.unit_classes (the table's roles)",
            ("mounts", "source_sync.streams", "jobs", "gws.jobs"), make=_unit_classes),
    Carried(PRESET, T, "units/preset.j2 (the table's enabled units)",
            ("mounts", "source_sync.streams", "jobs", "gws", "mirror_verify.enabled",
             "tailscale.enabled"), make=_preset),
    # ufw's own files, as `ufw allow|deny` and `ufw default` write them (ufw 0.36).
    Carried("/etc/ufw/user.rules", T, "units/ufw-user.rules.j2",
            ("firewall.allow", "firewall.deny"), make=produce.ufw_user_rules, mode=0o640),
    Carried("/etc/ufw/user6.rules", T, "units/ufw-user.rules.j2",
            ("firewall.allow", "firewall.deny"), make=produce.ufw_user6_rules, mode=0o640),
    Carried("/etc/default/ufw", T, "units/ufw-default.j2", ("firewall.default_incoming",),
            make=produce.ufw_default),
    # Copied as is from mkosi.extra/ (no spec keys: what varies they read from rendered files).
    Carried("/etc/ssh/sshd_config.d/aurora.conf", S, "mkosi.extra"),
    Carried("/etc/systemd/journald.conf.d/aurora.conf", S, "mkosi.extra"),
    Carried("/etc/systemd/network/80-dhcp.network", S, "mkosi.extra"),
    Carried("/etc/systemd/system-generators/*", S,
            "mkosi.extra (masks the generators this host has no use for)"),
    Carried("/etc/ufw/ufw.conf", S, "mkosi.extra"),
    Carried(f"{UNITS}/aurora-health.service", S, "mkosi.extra", role="service"),
    Carried(f"{UNITS}/aurora-health.timer", S, "mkosi.extra", enable=True),
    Carried(f"{UNITS}/aurora-nginx-tls.service", S, "mkosi.extra", enable=True),
    Carried(f"{UNITS}/aurora-ssh-hostkeys.service", S, "mkosi.extra"),
    Carried(f"{UNITS}/aurora-storage@.service", S, "mkosi.extra", ("mounts",), enable=True,
            instances="mounts", role="service"),
    Carried(f"{UNITS}/certbot.service.d/aurora-tls.conf", S, "mkosi.extra"),
    Carried(f"{UNITS}/fail2ban.service.d/aurora-after-ssh.conf", S, "mkosi.extra"),
    Carried(f"{UNITS}/ssh.service.d/aurora-hostkeys.conf", S, "mkosi.extra"),
    Carried(f"{UNITS}/ssh.service.d/aurora-start.conf", S, "mkosi.extra"),
    Carried(f"{UNITS}/systemd-resolved.service.d/aurora-var.conf", S, "mkosi.extra"),
    Carried(f"{UNITS}/ufw.service", S, "mkosi.extra"),
    Carried("/usr/lib/aurora/*", S, "mkosi.extra (the on-host programs and their data)"),
    # Made by the image build from its inputs.
    Carried(IDENTITY, B, "builder.image.build.identity", ("release",)),
    *(
        Carried(saved, B, "builder.image.layer (the image's ufw-init, in a scratch netns)",
                ("firewall.allow", "firewall.deny", "firewall.default_incoming"))
        for saved in FIREWALL_SAVED
    ),
    Carried("<dashboard.checkout>/", B, "builder.image.layer (the app, from dashboard.app)",
            ("dashboard.checkout", "dashboard.app")),
    Carried("<dashboard.checkout>/venv/", B, "mkosi.postinst.chroot (uv, from the app's lock)",
            ("dashboard.checkout",)),
)  # fmt: skip

# Units Debian packages ship: enabled by the preset (or only classified), in this order.
PACKAGE_UNITS: tuple[PackageUnit, ...] = (
    PackageUnit("systemd-networkd.service"),
    PackageUnit("systemd-networkd-wait-online.service"),
    PackageUnit("systemd-resolved.service"),
    PackageUnit("ssh.service", role="service"),
    PackageUnit("nginx.service", role="service"),
    PackageUnit("certbot.timer"),
    PackageUnit("ufw.service"),
    PackageUnit("fail2ban.service"),
    PackageUnit("remote-fs.target"),
    PackageUnit("tailscaled.service", when=("tailscale.enabled",)),
)

RENDERED = tuple(row for row in TABLE if row.make is not None)


def row(path: str) -> Carried:
    """The row whose path pattern is ``path``."""
    return next(r for r in TABLE if r.path == path)


def _instances(spec: HostSpec, carried: Carried) -> Iterator[tuple[int | None, str]]:
    """(item index, unit name) of each unit a unit row stands for in this spec."""
    name = unit_name(carried.path)
    if name is None:
        return
    if carried.make is not None:
        for index, item in carried.items(spec):
            yield index, str(unit_name(carried.make(spec, item)[0]))
        return
    if carried.instances is None:
        yield None, name
        return
    for index, item in enumerate(lookup(spec, carried.instances)):
        yield index, name.replace("@.", f"@{item.unit_part}.", 1)


def enabled_units(spec: HostSpec) -> list[str]:
    """What the preset enables: the packages' units, then the table's (a template unit
    with its instances on one line, as presets write it)."""
    units = [u.name for u in PACKAGE_UNITS if u.enable and all(lookup(spec, k) for k in u.when)]
    for carried in TABLE:
        if carried.instances is not None:
            parts = [item.unit_part for item in lookup(spec, carried.instances)]
            if parts and carried.enabled(spec, None):
                units.append(f"{unit_name(carried.path)} {' '.join(parts)}")
            continue
        units += [name for index, name in _instances(spec, carried) if carried.enabled(spec, index)]
    return units


def unit_classes(spec: HostSpec) -> dict[str, list[str]]:
    """The spec's units by what a failure of theirs says (see builder.host.health): a
    service failing is the image's fault; a pipeline unit depends on instruments and data."""
    classes: dict[str, list[str]] = {"service": [], "pipeline": []}
    for unit in PACKAGE_UNITS:
        if unit.role:
            classes[unit.role].append(unit.name)
    for carried in TABLE:
        if carried.role:
            classes[carried.role] += [name for _, name in _instances(spec, carried)]
    return {role: sorted(names) for role, names in classes.items()}
