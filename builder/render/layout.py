"""Where things live on the host and who may touch them: the tmpfiles layout of
/var and of each volume, the units' sandbox paths, fstab entries, and tailscaled's
state on a volume."""

from __future__ import annotations

from builder.render.names import TAILSCALE_STATE
from builder.spec.model import HostSpec, Mount


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
    tailscale = tailscale_state(spec)
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


def var_entries(spec: HostSpec) -> list[dict[str, str]]:
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


def tailscale_state(spec: HostSpec) -> str | None:
    """Where tailscaled's state really lives, when the spec keeps it on a volume."""
    return spec.tailscale.state_on_volume if spec.tailscale.enabled else None


def _tailscale_entries(spec: HostSpec) -> list[dict[str, str]]:
    state = tailscale_state(spec)
    return [] if state is None else [{"path": TAILSCALE_STATE, "link": state}]


def tailscale_dropin(spec: HostSpec, state: str) -> bytes:
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


def fstab_entry(mount: Mount) -> dict[str, str]:
    passno = "2" if mount.type in {"ext4", "xfs", "btrfs"} else "0"
    return {
        "what": mount.what,
        "where": mount.where,
        "type": mount.type,
        "options": mount.options,
        "passno": passno,
    }
