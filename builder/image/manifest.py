"""The typed records an image directory holds: its Manifest and its Attestation.

`manifest.json` is written once by the build and read by the store, diff,
audit, verify, release and the tests; `attestation.json` is the smoke suite's
verdict on exactly those disk bytes. Both are parsed here and nowhere else, so
a field has one name and one type everywhere. Pure: reading and writing the
files is builder.image.store's.

Images built by older builders lack later fields (sizes, root_hash, ...):
those parse as None (or empty), and `to_json` leaves a None field (and empty
artifacts) out, so an old or trimmed manifest keeps its shape and a new one is
written as the build always wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from builder.errors import StoreError

# One rendered path in the manifest: {"sha256", "mode"} for a file,
# {"directory": mode} for a directory, {"link": target} for a symlink.
Entry = dict[str, str]


def _object(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise StoreError(f"{what}: not a JSON object")
    return data


def _strings(data: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _optional_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)


@dataclass(frozen=True)
class Artifact:
    """One boot artifact (aurora.raw, kernel, initrd): its digest and size."""

    sha256: str
    size: int

    def to_json(self) -> dict[str, object]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class InputsRecord:
    """The build's inputs as the manifest keeps them (builder.image.inputs.Inputs)."""

    digest: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"digest": self.digest, "files": self.files, "extra": self.extra}

    @classmethod
    def from_json(cls, data: object) -> InputsRecord:
        data = data if isinstance(data, dict) else {}
        digest = data.get("digest")
        return cls(
            digest=None if digest is None else str(digest),
            files=_strings(data.get("files")),
            extra=_strings(data.get("extra")),
        )


@dataclass(frozen=True)
class Manifest:
    """What one build made and from what: `images/<tag>/manifest.json`.

    Field order is the file's key order.
    """

    tag: str
    release: str | None = None
    hostname: str | None = None
    # The spec as `verify` finds it again: repo-relative when it lives in the repo.
    spec: str | None = None
    inputs: InputsRecord | None = None
    source_date_epoch: int | None = None
    seed: str | None = None
    cmdline: str | None = None
    # dm-verity's root hash: the kernel refuses any root block that does not match it.
    root_hash: str | None = None
    # The config layer's dm-verity root hash (aurora.config_hash= on the cmdline).
    config_hash: str | None = None
    # The base image's key (builder.image.base): equal keys, equal base partitions.
    base: str | None = None
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    # The read-only root as shipped: a changed bit anywhere in it changes this.
    root_partition_sha256: str | None = None
    rendered: dict[str, Entry] = field(default_factory=dict)
    # Where each rendered file comes from: {path: {"producer", "keys", "unit"?}}
    # (builder.render.tree.carried_manifest); audit's unit list reads it.
    carried: dict[str, dict[str, Any]] | None = None
    debian_packages: dict[str, str] = field(default_factory=dict)
    python_packages: dict[str, str] = field(default_factory=dict)
    # Bytes per part (kernel, Debian packages, venv, app) and per partition.
    sizes: dict[str, Any] | None = None
    # Where the Python packages live on the host (what `audit` lists there).
    python_venv: str | None = None
    # {package: sha256} of the .debs kept in the package store (builder.image.debstore).
    debian_debs: dict[str, str] | None = None
    # The package set against locks/debian-packages.txt (builder.image.debian_lock.compare).
    debian_lock: dict[str, Any] | None = None

    def disk_sha256(self, disk: str) -> str | None:
        """The digest of artifact `disk` (builder.image.store.DISK) recorded at build
        time (None: no such artifact)."""
        artifact = self.artifacts.get(disk)
        return artifact.sha256 if artifact else None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "tag": self.tag,
            "release": self.release,
            "hostname": self.hostname,
            "spec": self.spec,
            "inputs": self.inputs.to_json() if self.inputs else None,
            "source_date_epoch": self.source_date_epoch,
            "seed": self.seed,
            "cmdline": self.cmdline,
            "root_hash": self.root_hash,
            "config_hash": self.config_hash,
            "base": self.base,
            "artifacts": {name: a.to_json() for name, a in self.artifacts.items()} or None,
            "root_partition_sha256": self.root_partition_sha256,
            "rendered": self.rendered,
            "carried": self.carried,
            "debian_packages": self.debian_packages,
            "python_packages": self.python_packages,
            "sizes": self.sizes,
            "python_venv": self.python_venv,
            "debian_debs": self.debian_debs,
            "debian_lock": self.debian_lock,
        }
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_json(cls, data: object, where: str = "manifest") -> Manifest:
        """Parse a manifest; StoreError (naming `where`) when it is not one."""
        data = _object(data, where)
        tag = data.get("tag")
        if not isinstance(tag, str) or not tag:
            raise StoreError(f"{where}: no 'tag'; not an image manifest")
        artifacts: dict[str, Artifact] = {}
        for name, info in (data.get("artifacts") or {}).items():
            if isinstance(info, dict) and isinstance(info.get("sha256"), str):
                artifacts[name] = Artifact(info["sha256"], int(info.get("size") or 0))
        rendered, carried = data.get("rendered"), data.get("carried")
        epoch = data.get("source_date_epoch")
        debs, lock, sizes = data.get("debian_debs"), data.get("debian_lock"), data.get("sizes")
        return cls(
            tag=tag,
            release=_optional_str(data, "release"),
            hostname=_optional_str(data, "hostname"),
            spec=_optional_str(data, "spec"),
            inputs=InputsRecord.from_json(data["inputs"]) if "inputs" in data else None,
            source_date_epoch=None if epoch is None else int(epoch),
            seed=_optional_str(data, "seed"),
            cmdline=_optional_str(data, "cmdline"),
            root_hash=_optional_str(data, "root_hash"),
            config_hash=_optional_str(data, "config_hash"),
            base=_optional_str(data, "base"),
            artifacts=artifacts,
            root_partition_sha256=_optional_str(data, "root_partition_sha256"),
            rendered={p: _strings(e) for p, e in rendered.items()}
            if isinstance(rendered, dict)
            else {},
            carried=carried if isinstance(carried, dict) else None,
            debian_packages=_strings(data.get("debian_packages")),
            python_packages=_strings(data.get("python_packages")),
            sizes=sizes if isinstance(sizes, dict) else None,
            python_venv=_optional_str(data, "python_venv"),
            debian_debs=_strings(debs) if isinstance(debs, dict) else None,
            debian_lock=lock if isinstance(lock, dict) else None,
        )


@dataclass(frozen=True)
class DiskFingerprint:
    """Size and mtime of the disk when attested: unchanged, it need not be re-hashed."""

    size: int
    mtime_ns: int

    def to_json(self) -> dict[str, int]:
        return {"size": self.size, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class Attestation:
    """The smoke suite's verdict on one disk: `images/<tag>/attestation.json`.

    Field order is the file's key order.
    """

    tag: str
    image_sha256: str
    disk: DiskFingerprint | None
    passed: bool
    counts: dict[str, int]  # "total" and one count per outcome
    tests: dict[str, str]  # test id -> outcome
    started: str  # ISO 8601, UTC
    finished: str
    seconds: float
    accel: str | None = None  # kvm or tcg, when known

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "tag": self.tag,
            "image_sha256": self.image_sha256,
            "disk": self.disk.to_json() if self.disk else None,
            "passed": self.passed,
            "counts": self.counts,
            "tests": self.tests,
            "started": self.started,
            "finished": self.finished,
            "seconds": self.seconds,
        }
        if self.accel:
            data["accel"] = self.accel
        return data

    @classmethod
    def from_json(cls, data: object, where: str = "attestation") -> Attestation:
        """Parse an attestation; StoreError (naming `where`) when it is not one."""
        data = _object(data, where)
        disk = data.get("disk")
        try:
            return cls(
                tag=str(data.get("tag", "")),
                image_sha256=str(data.get("image_sha256", "")),
                disk=DiskFingerprint(int(disk["size"]), int(disk["mtime_ns"]))
                if isinstance(disk, dict)
                else None,
                # Only a literal true passes: a damaged file never vouches for a disk.
                passed=data.get("passed") is True,
                counts={str(k): int(v) for k, v in (data.get("counts") or {}).items()},
                tests=_strings(data.get("tests")),
                started=str(data.get("started", "")),
                finished=str(data.get("finished", "")),
                seconds=float(data.get("seconds") or 0.0),
                accel=_optional_str(data, "accel"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{where}: malformed attestation ({exc})") from None
