"""Secrets: refused as values anywhere in the spec, and `aurora-image secrets check
HOST`: which of the spec's credentials a host has.

The spec names every credential; values live outside the image: system
credentials (SMBIOS under QEMU, listed by `systemd-creds --system list`) and
the credential store (`/etc/credstore`, which the image links to the
root-only `/data/aurora/credstore` on the persistent volume), the places
systemd's `ImportCredential=` searches. One ssh round trip prints only names
and sizes, so no value ever leaves the host or reaches a log.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from builder.host.remote import Remote
    from builder.spec.model import Secret

# --------------------------------------------------------------------------- values
# The spec holds names of secrets, never values. These checks run on every string
# of the spec (builder.spec.validators.Model), so a value pasted in by mistake is refused at
# validation, before it can reach an image, a manifest or a log.

SECRET_FIX = (
    "secrets never go in the spec: declare a credential under 'secrets' and give its "
    "value at boot (the credential store)"
)
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*(PRIVATE KEY|CERTIFICATE|KEY|SECRET)[A-Z ]*-----")
# http(s) with any user part (a token as user name), or any scheme with user:password.
_URL_CREDENTIALS = re.compile(
    r"\bhttps?://[^/\s@]+@|\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE
)
# password=..., secret=... as mount or command-line options; a path value is a file
# holding the secret (secretfile=, credentials=/path), which is fine.
_OPTION = re.compile(
    r"(?:^|[\s,;&?-])(password|passwd|pass|pwd|secret|token|api[_-]?key|auth[_-]?key)"
    r"=(?![/$])[^\s,;&]+",
    re.IGNORECASE,
)
_KNOWN_TOKENS = re.compile(
    r"\b(ghp_|gho_|ghs_|github_pat_|glpat-|xox[abposr]-|tskey-|sk-|AKIA[0-9A-Z]{12})"
    r"[A-Za-z0-9_-]{8,}"
)
_TOKEN_CANDIDATE = re.compile(r"[A-Za-z0-9+/=_-]{24,}")
# A public key is random-looking too, and no secret (operator_keys).
_PUBLIC_KEY = re.compile(
    r"\b(ssh-[a-z0-9]+|ecdsa-sha2-[a-z0-9]+|sk-[a-z0-9.@-]+) [A-Za-z0-9+/]+={0,3}"
)


def _entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _random_token(word: str) -> bool:
    """A long run of mixed-case letters and digits with a random look (an API key or
    password), not a path, a version pin or a hex commit id."""
    if word.startswith("/") or re.fullmatch(r"[0-9a-f]+", word):
        return False
    mixed = sum(bool(re.search(c, word)) for c in (r"[a-z]", r"[A-Z]", r"[0-9]")) == 3
    return mixed and _entropy(word) >= 4.0


def secret_in(value: str) -> str | None:
    """What secret a spec value carries, named for a one-line refusal (None: none).

    Never returns the value itself: the refusal must not repeat the secret.
    """
    if _PEM.search(value):
        return "a PEM block (a key or certificate)"
    if _URL_CREDENTIALS.search(value):
        return "credentials in a URL"
    option = _OPTION.search(value)
    if option:
        return f"a {option.group(1).lower()}= option with a value"
    if _KNOWN_TOKENS.search(value):
        return "an access token"
    if any(_random_token(w) for w in _TOKEN_CANDIDATE.findall(_PUBLIC_KEY.sub("", value))):
        return "a long random token, like an API key or a password"
    return None


def check_value(value: str) -> None:
    """Raise ValueError naming the kind of secret in ``value`` and the fix."""
    kind = secret_in(value)
    if kind is not None:
        raise ValueError(f"holds {kind}: {SECRET_FIX}")


# --------------------------------------------------------------------------- on a host

MARK = "@@creds:"
STORES = (
    "/run/credstore",
    "/etc/credstore",
    "/run/credstore.encrypted",
    "/etc/credstore.encrypted",
)
CREDSTORE = "/etc/credstore"
# Names and sizes only: never cat, never systemd-creds cat.
SCRIPT = f"""\
echo '{MARK}system'
systemd-creds --system list --no-legend --no-pager 2>/dev/null | awk '{{print $1, $3}}'
for d in {" ".join(STORES)}; do
  echo "{MARK}dir $d"
  [ -d "$d/" ] && find -L "$d/" -mindepth 1 -maxdepth 1 -type f -printf '%f %s\\n' 2>/dev/null
done
echo '{MARK}store'
stat -L -c '%a %U' {CREDSTORE} 2>/dev/null
true
"""


@dataclass(frozen=True)
class CredentialState:
    name: str
    state: str  # present | empty | missing
    where: tuple[str, ...]
    purpose: str


@dataclass(frozen=True)
class SecretsReport:
    host: str
    credentials: tuple[CredentialState, ...]
    store_mode: str | None  # e.g. "700 root"; None when there is no store

    @property
    def missing(self) -> list[str]:
        return [c.name for c in self.credentials if c.state != "present"]

    @property
    def store_private(self) -> bool:
        if self.store_mode is None:
            return True
        mode, _, owner = self.store_mode.partition(" ")
        return owner == "root" and int(mode, 8) & 0o077 == 0

    @property
    def ok(self) -> bool:
        return not self.missing and self.store_private

    def summary(self) -> str:
        total = len(self.credentials)
        if self.ok:
            return f"{self.host}: all {total} credentials present"
        parts = []
        if self.missing:
            names = ", ".join(self.missing)
            parts.append(f"{len(self.missing)} of {total} missing or empty: {names}")
        if not self.store_private:
            parts.append(f"{CREDSTORE} is {self.store_mode}, not root-only: chmod 700 it")
        fix = f"put each missing one in {CREDSTORE}/<name> (root-only, on /data)"
        return f"{self.host}: " + "; ".join(parts) + (f"; {fix}" if self.missing else "")

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "ok": self.ok,
            "credstore": {
                "path": CREDSTORE,
                "mode": self.store_mode,
                "private": self.store_private,
            },
            "credentials": [asdict(c) for c in self.credentials],
            "missing": self.missing,
        }


def parse(output: str) -> tuple[dict[str, dict[str, int]], str | None]:
    """{source: {name: size}} and the credential store's 'mode owner' (pure)."""
    found: dict[str, dict[str, int]] = {}
    store_mode: str | None = None
    section = ""
    for line in output.splitlines():
        if line.startswith(MARK):
            section = line[len(MARK) :].strip()
            if section.startswith("dir "):
                section = section[4:]
            continue
        fields = line.split()
        if not fields:
            continue
        if section == "store":
            store_mode = " ".join(fields[:2])
            continue
        source = "system credential" if section == "system" else section
        size = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 1
        found.setdefault(source, {})[fields[0]] = size
    return found, store_mode


def assess(host: str, secrets: Sequence[Secret], output: str) -> SecretsReport:
    found, store_mode = parse(output)
    states = []
    for secret in secrets:
        where = tuple(src for src, names in found.items() if secret.name in names)
        sizes = [found[src][secret.name] for src in where]
        state = "missing" if not where else ("present" if any(sizes) else "empty")
        states.append(CredentialState(secret.name, state, where, secret.purpose))
    return SecretsReport(host, tuple(states), store_mode)


def check(remote: Remote, secrets: Sequence[Secret], *, timeout: float = 60) -> SecretsReport:
    """List names (never values) on the host and compare them with the spec's secrets."""
    return assess(remote.name, secrets, remote.run(SCRIPT, timeout=timeout, check=False))


def format_table(report: SecretsReport) -> str:
    width = max((len(c.name) for c in report.credentials), default=4)
    lines = [f"{'CREDENTIAL':<{width}}  {'STATE':<7}  WHERE"]
    for c in report.credentials:
        lines.append(f"{c.name:<{width}}  {c.state:<7}  {', '.join(c.where) or '-'}")
    lines.append(report.summary())
    return "\n".join(lines) + "\n"
