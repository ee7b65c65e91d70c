"""What the on-host programs share: config checking, ssh options, locking, atomic writes, messages.

The programs beside this file (aurora-source-sync, aurora-gws-push,
aurora-mirror-verify, aurora-credentials) import it as ``aurora_common`` and
keep only their own logic. Stdlib only: they run on the host's system python3,
without the builder's venv. Python puts a script's own directory (symlinks
resolved) first on ``sys.path``, so ``/usr/local/bin/aurora-cl61-sync`` ->
``/usr/lib/aurora/aurora-source-sync`` finds this module in ``/usr/lib/aurora``.

Each program's config is rendered by the image builder from a spec pydantic has
already validated; the checks here read it into typed values and refuse, with
one line naming file and key, what would be unsafe at run time (a stale or
hand-edited file, an injected ssh option, a relative path, a negative bound).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the lock; the next timer tick retries
SSH_FAILED = 255  # ssh's own failure (connect, auth, lost connection), or a stalled step
# Stream and job names: they name config, state, lock and manifest files.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
# A host name ssh cannot read as an option, or an IP address.
HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*")
_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "a boolean",
    list: "a list",
    dict: "an object",
}


class ConfigError(Exception):
    """A config file is missing, unreadable or malformed; the message names file and key."""


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """A program's name on every line it prints: ``<name>: <message>``."""

    name: str

    def __str__(self) -> str:
        return self.name

    def fail(self, message: str, code: int) -> NoReturn:
        """One line on stderr, then exit ``code``."""
        print(f"{self.name}: {message}", file=sys.stderr, flush=True)
        sys.exit(code)

    def warn(self, message: str) -> None:
        print(f"{self.name}: {message}", file=sys.stderr, flush=True)

    def say(self, message: str) -> None:
        print(f"{self.name}: {message}", flush=True)


def tail(data: str | bytes, lines: int = 1, limit: int = 300) -> str:
    """The last non-empty lines of a command's stderr on one line, for a log or error line."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-limit:] if kept else "no message"


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


class Checker:
    """Reads typed keys from one JSON object, failing with file and key named."""

    def __init__(self, data: Any, path: Path, prefix: str = "") -> None:
        self.path, self.prefix = path, prefix
        if not isinstance(data, dict):
            where = repr(prefix.rstrip(".")) if prefix else "top level"
            raise ConfigError(f"{path}: {where}: expected a JSON object")
        self.data = data

    def fail(self, key: str, why: str) -> NoReturn:
        raise ConfigError(f"{self.path}: key {self.prefix + key!r}: {why}")

    def get(self, key: str, kind: type, *, nullable: bool = False) -> Any:
        if key not in self.data:
            self.fail(key, "missing")
        value = self.data[key]
        if value is None and nullable:
            return None
        # bool is an int subclass; never accept it where a number is wanted.
        if isinstance(value, bool) and kind is not bool:
            self.fail(key, f"expected {_KIND_NAMES[kind]}, got a boolean")
        if not isinstance(value, kind):
            self.fail(key, f"expected {_KIND_NAMES[kind]}{' or null' if nullable else ''}")
        return value

    def child(self, key: str, *, nullable: bool = False) -> Checker | None:
        """The checker of a sub-object (``key.`` prefixes its keys in messages)."""
        value = self.get(key, dict, nullable=nullable)
        return None if value is None else Checker(value, self.path, f"{self.prefix}{key}.")

    def children(self, key: str) -> list[Checker]:
        """Checkers of a non-empty list of objects (``key[i].`` prefixes their keys)."""
        items = self.get(key, list)
        if not items:
            self.fail(key, "must not be empty")
        return [
            Checker(item, self.path, f"{self.prefix}{key}[{i}].") for i, item in enumerate(items)
        ]

    def integer(self, key: str, minimum: int, maximum: int | None = None) -> int:
        value = self.get(key, int)
        if value < minimum or (maximum is not None and value > maximum):
            self.fail(
                key, f"must be >= {minimum}" if maximum is None else f"must be {minimum}..{maximum}"
            )
        return value

    def text(self, key: str, *, nullable: bool = False) -> str | None:
        value = self.get(key, str, nullable=nullable)
        if value == "":
            self.fail(key, "must not be empty")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in choices:
            self.fail(key, "must be " + " or ".join(f'"{choice}"' for choice in choices))
        return value

    def word(self, key: str) -> str:
        """A user or host name: goes on an ssh command line, so no blanks, no leading '-'."""
        value = self.text(key)
        if value.startswith("-") or any(ch.isspace() for ch in value) or "@" in value:
            self.fail(key, f"{value!r} must not start with '-' or contain blanks or '@'")
        return value

    def abspath(self, key: str, *, nullable: bool = False) -> str | None:
        value = self.text(key, nullable=nullable)
        if value is not None and not value.startswith("/"):
            self.fail(key, "must be an absolute path")
        return value

    def strings(self, key: str, *, non_empty: bool = False) -> list[str]:
        value = self.get(key, list)
        if not all(isinstance(item, str) and item for item in value):
            self.fail(key, "expected a list of non-empty strings")
        if non_empty and not value:
            self.fail(key, "must not be empty")
        return value

    def host(self, key: str) -> Endpoint:
        """A ``host`` or ``host:port`` entry (see ``Endpoint.parse``)."""
        return self._endpoint(key, self.text(key))

    def hosts(self, key: str) -> list[Endpoint]:
        """A non-empty list of ``host`` or ``host:port`` entries, tried in order."""
        entries = self.strings(key, non_empty=True)
        return [self._endpoint(f"{key}[{i}]", entry) for i, entry in enumerate(entries)]

    def _endpoint(self, key: str, entry: str) -> Endpoint:
        endpoint = Endpoint.parse(entry)
        if endpoint is None:
            self.fail(
                key, f"{entry!r}: expected a host name or address, or host:port with port 1..65535"
            )
        return endpoint

    def reject_unknown(self, known: set[str] | tuple[str, ...]) -> None:
        """Catch typos in the builder's templates instead of silently ignoring them."""
        for key in sorted(set(self.data) - set(known)):
            self.fail(key, "unknown key")


def load_json(path: Path) -> Any:
    """A config file's JSON; ConfigError (one line naming the file) when unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from exc


# --------------------------------------------------------------------------
# ssh
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SshConfig:
    """The ``ssh`` object of every config: how this host's user logs in to its peers."""

    identity: str | None
    port: int
    options: list[str]
    known_hosts: str | None

    @classmethod
    def parse(cls, c: Checker) -> SshConfig:
        c.reject_unknown(set(cls.__dataclass_fields__))
        return cls(
            identity=c.abspath("identity", nullable=True),
            port=c.integer("port", 1, 65535),
            options=c.strings("options"),
            known_hosts=c.abspath("known_hosts", nullable=True),
        )


@dataclass(frozen=True)
class Timeouts:
    """Seconds; a silent peer is given up on, so no run hangs until its unit's timeout."""

    connect: int
    alive_interval: int
    alive_count: int
    io: int

    @classmethod
    def parse(cls, c: Checker) -> Timeouts:
        c.reject_unknown(set(cls.__dataclass_fields__))
        return cls(**{key: c.integer(key, 1) for key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Endpoint:
    """One peer from a hosts list: ``port`` is None unless the entry was ``host:port``.

    Rendered configs carry plain names or addresses; ``host:port`` lets the tests
    point several entries at several loopback sshd ports.
    """

    entry: str
    name: str
    port: int | None

    @classmethod
    def parse(cls, entry: str) -> Endpoint | None:
        """``host``, ``host:port``, an IPv6 address, or ``[v6]:port``; None if malformed."""
        bracketed = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", entry)
        if bracketed:
            name, port = bracketed[1], bracketed[2]
        elif entry.count(":") == 1:
            name, port = entry.split(":")
        else:  # a plain name, or a bare IPv6 address
            name, port = entry, None
        if not HOST_RE.fullmatch(name):
            return None
        if port is None:
            return cls(entry, name, None)
        if not port.isdigit() or not 0 < int(port) < 65536:
            return None
        return cls(entry, name, int(port))

    @property
    def rsync_name(self) -> str:
        """The host as rsync's ``host:path`` needs it: an IPv6 address in brackets."""
        return f"[{self.name}]" if ":" in self.name else self.name


def ssh_command(ssh: SshConfig, timeouts: Timeouts, port: int | None = None) -> list[str]:
    """The ssh client invocation of every remote step and of rsync ``-e``.

    Every ssh option the programs use is decided here: no password prompt, and
    a peer that stops answering is given up on.
    """
    cmd = ["ssh", "-p", str(port if port is not None else ssh.port)]
    for option in (
        "BatchMode=yes",
        f"ConnectTimeout={timeouts.connect}",
        f"ServerAliveInterval={timeouts.alive_interval}",
        f"ServerAliveCountMax={timeouts.alive_count}",
    ):
        cmd += ["-o", option]
    if ssh.identity:
        cmd += ["-i", ssh.identity, "-o", "IdentitiesOnly=yes"]
    if ssh.known_hosts:
        cmd += ["-o", f"UserKnownHostsFile={ssh.known_hosts}"]
    for option in ssh.options:
        cmd += ["-o", option]
    return cmd


def run_bounded(
    argv: list[str], timeout: int, *, payload: bytes | None = None, text: bool = False
) -> subprocess.CompletedProcess[Any]:
    """Run one step with its output captured; a stall past ``timeout`` reads as ssh's
    own failure (``SSH_FAILED``, "timed out after Ns" on stderr), so callers treat a
    silent host like an unreachable one instead of hanging."""
    decode: dict[str, Any] = {"text": True, "errors": "replace"} if text else {}
    try:
        return subprocess.run(
            argv,
            input=payload,
            stdin=subprocess.DEVNULL if payload is None else None,
            capture_output=True,
            timeout=timeout,
            check=False,
            **decode,
        )
    except subprocess.TimeoutExpired:
        message = f"timed out after {timeout}s"
        empty, said = ("", message) if text else (b"", message.encode())
        return subprocess.CompletedProcess(argv, SSH_FAILED, empty, said)


def find_files(path: str, patterns: list[str]) -> list[str]:
    """``find`` of the regular files directly in ``path`` whose names match any of
    ``patterns`` (``-H``: ``path`` itself may be a symlink); callers add their own
    tests and ``-printf``. Run here and, over ssh, on the peers."""
    names: list[str] = []
    for pattern in patterns:
        names += ["-o", "-name", pattern] if names else ["-name", pattern]
    return ["find", "-H", path, "-maxdepth", "1", "-type", "f", "(", *names, ")"]


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def config_dir_option(parser: Any, env: str, default: str, what: str) -> None:
    """``--config-dir DIR``: the directory of ``<what>.json``, default ``$env`` or ``default``."""
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=Path(os.environ.get(env) or default),
        help=f"directory of <{what}>.json (default: ${env} or {default})",
    )


def max_delete_option(parser: Any, help: str) -> None:
    """``--max-delete N``: an operator's one-run raise of the config's deletion bound."""
    parser.add_argument("--max-delete", type=int, metavar="N", help=help)


def load_instance(
    prog: Program, args: Any, given: str | None, link: re.Pattern[str], what: str, load: Any
) -> tuple[str, Any]:
    """(name, config) of the stream or job to run: its name (``instance_name``), its
    config from ``load(args.config_dir, name)``, then ``--max-delete`` applied for this
    run. Any usage or config error is one line and exit 2, before anything is touched."""
    name = instance_name(prog, given, sys.argv[0], link, what)
    if args.max_delete is not None and args.max_delete < 0:
        prog.fail("--max-delete must be >= 0", EXIT_USAGE)
    try:
        cfg = load(args.config_dir, name)
    except ConfigError as exc:
        prog.fail(str(exc), EXIT_USAGE)
    if args.max_delete is not None:
        cfg = dataclasses.replace(cfg, max_delete=args.max_delete)
    return name, cfg


def instance_name(
    prog: Program, given: str | None, argv0: str, link: re.Pattern[str], what: str
) -> str:
    """The stream or job to run: ``given``, else the ``name`` group of the link name
    the program was started under (the image links one command per instance)."""
    name = given
    if name is None:
        match = link.fullmatch(os.path.basename(argv0))
        name = match["name"] if match else None
    if name is None:
        prog.fail(f"no {what.upper()} given and none derivable from the program name", EXIT_USAGE)
    if not NAME_RE.fullmatch(name):
        prog.fail(f"invalid {what} name {name!r}", EXIT_USAGE)
    return name


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def utc_stamp(epoch: float) -> str:
    """``YYYYmmddTHHMMSSZ``: names a run's log or manifest directory, sorting by time."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


def take_lock(lock_file: Path) -> int | None:
    """Hold an exclusive flock for the life of the process; None if another run has it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def atomic_write(
    path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> None:
    """Replace ``path`` with ``data`` (mode and owner set first), or leave it as it was:
    a crash never leaves a truncated state file or a secret readable by the wrong user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
