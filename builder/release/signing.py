"""Signed releases: an OpenSSH signature over what the smoke suite vouched for.

At attestation time one statement binds the image's manifest, its
attestation and its disk digest (sha256 of each, and the tag), and
`ssh-keygen -Y sign -n aurora-image` signs it with an operator's key or a
signing key given like any secret (a file outside the repository, named by
`--key` or `AURORA_SIGNING_KEY`). The statement and its signature sit beside
the image (`release.statement`, `release.statement.sig`) and travel with its
Glance upload (`aurora_statement`, `aurora_signature*`), so `rollback` to an
image that is no longer in the local store checks the same signature.

`promote` and `rollback` verify against an allowed_signers file (the spec's
`deploy.allowed_signers`, or `--allowed-signers`) before anything is
uploaded or rebuilt; a missing, foreign or tampered signature, or a file that
no longer has the signed digest, is refused in one line. The Glance bytes
themselves (qcow2) are bound to the signed raw disk by the promote that
uploaded them: it verified the local image first and Glance keeps the
upload's hash (builder.release.glance.is_ready).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from builder.errors import AuroraError
from builder.image.inputs import REPO
from builder.image.store import ATTESTATION, MANIFEST, disk_digest, read_manifest, sha256_file
from builder.render.tree import atomic_write

NAMESPACE = "aurora-image"
STATEMENT = "release.statement"
SIGNATURE = "release.statement.sig"
KEY_ENV = "AURORA_SIGNING_KEY"
# Glance keeps a property value of at most 255 characters: the armoured
# signature is split over aurora_signature_0, _1, ...
PROPERTY_CHUNK = 250


class SignatureError(AuroraError):
    """An image's release signature is missing, foreign or does not match it."""


@dataclass(frozen=True)
class Verified:
    """Who signed a release (the allowed_signers principal) and what they signed."""

    signer: str
    statement: dict[str, str]


def statement_for(image_dir: Path) -> dict[str, str]:
    """What a release signature covers: the tag and the digests of its three parts."""
    return {
        "namespace": NAMESPACE,
        "tag": read_manifest(image_dir).tag,
        "manifest_sha256": sha256_file(image_dir / MANIFEST),
        "attestation_sha256": sha256_file(image_dir / ATTESTATION),
        "disk_sha256": disk_digest(image_dir) or "",
    }


def _encode(statement: Mapping[str, str]) -> bytes:
    return (json.dumps(dict(statement), sort_keys=True, separators=(",", ":")) + "\n").encode()


def signing_key(explicit: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """The key to sign with: `--key`, else AURORA_SIGNING_KEY; never a file in the repo."""
    env = os.environ if env is None else env
    chosen = explicit or (Path(env[KEY_ENV]) if env.get(KEY_ENV) else None)
    if chosen is None:
        raise SignatureError(
            f"no signing key: pass --key PATH (an operator's ssh key) or set {KEY_ENV} "
            "to the signing key's file (kept outside the repository, like any secret)"
        )
    path = chosen.expanduser().resolve()
    if path.is_relative_to(REPO):
        raise SignatureError(
            f"{chosen}: a signing key inside the repository would be committed; "
            "keep it outside (e.g. ~/.ssh or the credential store) and point at it there"
        )
    if not path.is_file():
        raise SignatureError(f"{chosen}: no such signing key file")
    return path


def _ssh_keygen(argv: list[str], data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["ssh-keygen", *argv], input=data, capture_output=True, check=False, timeout=60
        )
    except FileNotFoundError:
        raise SignatureError("ssh-keygen is not installed; run `make setup`") from None


def sign(image_dir: Path, key: Path) -> dict[str, str]:
    """Write the release statement and its OpenSSH signature beside the image."""
    if not (image_dir / ATTESTATION).is_file():
        raise SignatureError(f"{image_dir.name}: no {ATTESTATION}: sign only an attested image")
    statement = statement_for(image_dir)
    body = _encode(statement)
    with tempfile.TemporaryDirectory(prefix="aurora-sign-") as tmp:
        unsigned = Path(tmp) / STATEMENT
        unsigned.write_bytes(body)
        done = _ssh_keygen(["-Y", "sign", "-f", str(key), "-n", NAMESPACE, str(unsigned)])
        if done.returncode != 0:
            why = (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
            raise SignatureError(f"{key}: ssh-keygen -Y sign failed ({why})")
        signature = unsigned.with_name(SIGNATURE).read_bytes()
    atomic_write(image_dir / STATEMENT, body)
    atomic_write(image_dir / SIGNATURE, signature)
    return statement


def _verify_bytes(body: bytes, signature: bytes, allowed: Path, what: str) -> str:
    """The principal whose allowed key made `signature` over `body`, or SignatureError."""
    if not allowed.is_file():
        raise SignatureError(f"{allowed}: no such allowed_signers file (deploy.allowed_signers)")
    with tempfile.TemporaryDirectory(prefix="aurora-verify-") as tmp:
        sig = Path(tmp) / SIGNATURE
        sig.write_bytes(signature)
        found = _ssh_keygen(["-Y", "find-principals", "-s", str(sig), "-f", str(allowed)])
        principals = found.stdout.decode().split()
        if found.returncode != 0 or not principals:
            raise SignatureError(
                f"{what}: signed by a key that is not in {allowed}; "
                "add the signer's key there or sign again with an allowed key"
            )
        done = _ssh_keygen(
            ["-Y", "verify", "-f", str(allowed), "-I", principals[0], "-n", NAMESPACE,
             "-s", str(sig)], body,
        )  # fmt: skip
    if done.returncode != 0:
        raise SignatureError(
            f"{what}: the release statement does not match its signature by "
            f"{principals[0]} (tampered); rebuild and attest, or sign it again"
        )
    return principals[0]


def verify_local(image_dir: Path, allowed: Path) -> Verified:
    """Check the image's signature and that its files still have the signed digests."""
    tag = image_dir.name
    try:
        body = (image_dir / STATEMENT).read_bytes()
        signature = (image_dir / SIGNATURE).read_bytes()
    except FileNotFoundError:
        raise SignatureError(
            f"{tag}: unsigned: no {SIGNATURE} in {image_dir}; sign it after the smoke suite "
            f"(`aurora-image sign {tag} --key KEY`)"
        ) from None
    signer = _verify_bytes(body, signature, allowed, tag)
    signed = json.loads(body)
    now = statement_for(image_dir)
    changed = [k for k in sorted(now) if signed.get(k) != now[k]]
    if changed:
        raise SignatureError(
            f"{tag}: {', '.join(changed)} differ from what {signer} signed (tampered after "
            "signing); rebuild and attest, then sign again"
        )
    return Verified(signer, signed)


def glance_properties(image_dir: Path) -> dict[str, str]:
    """The signature as Glance properties, so a rollback can check it without the store."""
    body = (image_dir / STATEMENT).read_text().strip()
    armour = (image_dir / SIGNATURE).read_text()
    chunks = [armour[i : i + PROPERTY_CHUNK] for i in range(0, len(armour), PROPERTY_CHUNK)]
    props = {"aurora_statement": body, "aurora_signature_parts": str(len(chunks))}
    props |= {f"aurora_signature_{i}": chunk for i, chunk in enumerate(chunks)}
    return props


def verify_glance(name: str, properties: Mapping[str, str], allowed: Path) -> Verified:
    """Check an uploaded image's signature and that Glance's digests are the signed ones."""
    body = properties.get("aurora_statement")
    parts = properties.get("aurora_signature_parts", "")
    if not body or not parts.isdigit():
        raise SignatureError(
            f"{name}: unsigned in Glance (no aurora_statement / aurora_signature); "
            "promote a signed image instead"
        )
    armour = "".join(properties.get(f"aurora_signature_{i}", "") for i in range(int(parts)))
    signer = _verify_bytes((body + "\n").encode(), armour.encode(), allowed, name)
    signed = json.loads(body)
    expected = {
        "tag": properties.get("aurora_tag"),
        "manifest_sha256": properties.get("aurora_manifest_sha256"),
        "disk_sha256": properties.get("aurora_image_sha256"),
    }
    changed = [k for k, v in expected.items() if signed.get(k) != v]
    if changed:
        raise SignatureError(
            f"{name}: Glance's {', '.join(changed)} differ from what {signer} signed; "
            "do not deploy it: delete it and promote the signed image again"
        )
    return Verified(signer, signed)


def sign_if_configured(image_dir: Path, env: Mapping[str, str] | None = None) -> str | None:
    """At attestation time: sign when a signing key is configured (AURORA_SIGNING_KEY);
    what happened, for the suite's summary (None: no key configured, nothing done)."""
    env = os.environ if env is None else env
    if not env.get(KEY_ENV):
        return None
    try:
        sign(image_dir, signing_key(None, env))
    except SignatureError as exc:
        return f"not signed: {exc}"
    return f"signed with {env[KEY_ENV]} ({SIGNATURE})"
