"""One operator at a time: the release lease held in the Nova server's metadata.

`promote` and `rollback` take a lease on the server before they change
anything and give it back when they finish. The lease lives where every
operator's tool looks, in the server's own metadata
(`aurora_lease_{holder,action,taken,expires,id}`), so a second operator on
another machine is refused with who holds it, for what, and until when.

Nova metadata has no compare-and-swap, so taking a lease is: read it, refuse
if someone else holds a live one, write ours with a random id, wait
SETTLE_SECONDS, read again and proceed only if our id is still there (two
operators racing both write; the later write wins and the earlier one backs
off). The window left is two writes landing within SETTLE_SECONDS of each
other *after* both reads saw no lease, which needs two operators starting
within a second of each other.

A lease whose expiry has passed belongs to a run that died: it is taken
over, and the takeover is said. An unexpired lease is broken only when asked
(`--break-lease`), and the message names whose lease was broken.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from builder.errors import EXIT_LEASE_HELD, AuroraError
from builder.release.cloud import Cloud, CloudError

PREFIX = "aurora_lease_"
KEYS = tuple(f"{PREFIX}{k}" for k in ("holder", "action", "taken", "expires", "id"))
SETTLE_SECONDS = 1.0
DEFAULT_TTL = 3 * 3600.0
STAMP = "%Y-%m-%dT%H:%M:%SZ"


class LeaseHeld(AuroraError):
    """Another operator holds the server's lease; nothing was changed."""

    exit_code = EXIT_LEASE_HELD


@dataclass(frozen=True)
class Lease:
    """Who may change the server, for what, until when (UTC)."""

    holder: str
    action: str
    taken: datetime
    expires: datetime
    id: str

    def expired(self, now: datetime) -> bool:
        return now >= self.expires

    def describe(self) -> str:
        return (
            f"{self.holder} for {self.action} since {self.taken.strftime(STAMP)} "
            f"until {self.expires.strftime(STAMP)}"
        )

    def to_metadata(self) -> dict[str, str]:
        values = (self.holder, self.action, self.taken.strftime(STAMP),
                  self.expires.strftime(STAMP), self.id)  # fmt: skip
        # Nova limits a metadata value to 255 characters.
        return {key: value[:255] for key, value in zip(KEYS, values, strict=True)}


def _when(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, STAMP).replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return None


def from_metadata(metadata: Mapping[str, str]) -> Lease | None:
    """The lease in a server's metadata; a half-written or garbled one counts as
    held until its expiry, or for DEFAULT_TTL after it was taken when unreadable."""
    items = {k.removeprefix(PREFIX): v for k, v in metadata.items() if k.startswith(PREFIX)}
    if not items:
        return None
    taken = _when(items.get("taken", "")) or datetime.now(UTC)
    expires = _when(items.get("expires", "")) or taken + timedelta(seconds=DEFAULT_TTL)
    return Lease(
        holder=items.get("holder") or "an unknown operator",
        action=items.get("action") or "an unknown action",
        taken=taken,
        expires=expires,
        id=items.get("id", ""),
    )


def new_lease(holder: str, action: str, ttl: float, now: datetime) -> Lease:
    return Lease(holder, action, now, now + timedelta(seconds=ttl), secrets.token_hex(8))


@dataclass(frozen=True)
class Taken:
    """A lease this run holds, and whose stale or broken lease it replaced (if any)."""

    lease: Lease
    replaced: Lease | None = None
    broken: bool = False


def take(
    cloud: Cloud,
    server_id: str,
    server_name: str,
    *,
    holder: str,
    action: str,
    ttl: float = DEFAULT_TTL,
    break_lease: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    settle: float = SETTLE_SECONDS,
) -> Taken:
    """Take the server's lease or raise LeaseHeld naming its holder and expiry."""
    now = clock()
    current = from_metadata(cloud.server_metadata(server_id))
    broken = False
    if current is not None and not current.expired(now):
        if not break_lease:
            raise LeaseHeld(
                f"server {server_name} is leased by {current.describe()}; wait for it to "
                "finish, or if that run is dead, pass --break-lease"
            )
        broken = True
    mine = new_lease(holder, action, ttl, now)
    cloud.set_server_metadata(server_id, **mine.to_metadata())
    time.sleep(settle)
    now_there = from_metadata(cloud.server_metadata(server_id))
    if now_there is None or now_there.id != mine.id:
        who = now_there.describe() if now_there else "nobody (it was removed)"
        raise LeaseHeld(
            f"server {server_name}: another operator took the lease at the same moment: "
            f"now held by {who}; nothing was changed, try again later"
        )
    return Taken(mine, current, broken)


def give_back(cloud: Cloud, server_id: str, lease: Lease) -> bool:
    """Remove the lease if it is still ours (a breaker's lease is left alone)."""
    current = from_metadata(cloud.server_metadata(server_id))
    if current is None or current.id != lease.id:
        return False
    cloud.delete_server_metadata(server_id, list(KEYS))
    return True


@contextmanager
def held(
    cloud: Cloud,
    server_id: str,
    server_name: str,
    *,
    holder: str,
    action: str,
    ttl: float = DEFAULT_TTL,
    break_lease: bool = False,
    note: Callable[[str], None] = print,
) -> Iterator[Taken]:
    """Hold the lease for the body; give it back however the body ends."""
    taken = take(cloud, server_id, server_name, holder=holder, action=action, ttl=ttl,
                 break_lease=break_lease)  # fmt: skip
    if taken.replaced is not None:
        how = "broke" if taken.broken else "took over the expired"
        note(f"{how} lease of {taken.replaced.describe()} on {server_name}")
    try:
        yield taken
    finally:
        try:
            give_back(cloud, server_id, taken.lease)
        except CloudError as exc:
            note(
                f"warning: lease on {server_name} not given back ({exc}); "
                f"it expires at {taken.lease.expires.strftime(STAMP)}"
            )
