"""What each value of the spec may be: the string classes, the structural checks, and
`Model`, the strict base of every section (no unknown key, no control character).

Values land in unit files, tmpfiles, fstab, nginx and JSON; each string class
admits only what its value needs, so no value can end a line, open a section,
add a directive or field, or reach a shell. `%` and `$` in free text are escaped
where systemd would expand them (builder.spec.systemd_values.escape_*).

One way to write a string class: a row of CHARSETS (a pattern and how an
operator reads it) made into a type by `_text_of`. That type checks the whole
value against the pattern, refuses with one message shape that never repeats a
secret, and puts the pattern into the JSON Schema (builder.spec.schema) so an
editor checks the same. Checks beyond a character set (absolute paths, time
spans, environment names) are named functions, listed by the reference
(builder.spec.reference.VALIDATOR_NAMES).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, WithJsonSchema, field_validator

from builder.spec import credcheck
from builder.spec.systemd_values import parse_timespan, validate_calendar

_PATH_CHARS = r"[A-Za-z0-9._+@/-]"
_URL_CHARS = r"[A-Za-z0-9._~:/?#@!&()*+,;=%-]"
_CREDENTIAL = (r"[a-z0-9][a-z0-9._-]*", "a credential name of lower-case letters, digits, . _ -")

# kind -> (pattern the whole value must match, what the value must be, for the message).
CHARSETS: dict[str, tuple[str, str]] = {
    "path": (rf"{_PATH_CHARS}+", "a path of letters, digits and . _ + @ / -"),
    "host": (
        r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*",
        "a host name or an IP address",
    ),
    "hostname": (r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", "a lower-case host name such as example.org"),
    "origin": (
        r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:\d{1,5})?",
        "a host name, optionally with :port",
    ),
    "user": (r"[a-z_][a-z0-9_.-]{0,31}", "a user name: lower-case letters, digits, _ . -"),
    "name": (r"[a-z0-9][a-z0-9-]*", "lower-case letters, digits and '-'"),
    "credential": _CREDENTIAL,
    "unit": (
        r"[A-Za-z0-9:_.\\@-]+\.(service|socket|target|timer|mount|automount|path|slice|scope"
        r"|device|swap)",
        "a unit name such as network-online.target",
    ),
    "glob": (
        r"[A-Za-z0-9._*?!^\[\]{},/+@=:~-]+",
        "a glob of letters, digits and . _ * ? [ ] { } , / + @ = : ~ -",
    ),
    "filter": (r"[+-] [A-Za-z0-9._*?!^\[\]{},/+@=:~-]+", "an rsync rule '+ GLOB' or '- GLOB'"),
    "text": (r"[^\\]*", "text without backslashes"),
    "command": (r".*[^\\]", "a command that does not end in a backslash"),
    "env": (r"[^'\"\\`$]*", "text without quotes, backslashes, backticks or $"),
    "env_name": (r"[A-Z_][A-Z0-9_]*", "an environment variable name: A-Z, 0-9 and _"),
    "url": (rf"(https?|ssh|git)://{_URL_CHARS}+", "an http(s)/ssh/git URL"),
    "mirror": (
        rf"(https?|ssh|git)://{_URL_CHARS}*[A-Za-z0-9._~:?#@!&()*+,;=%-]",
        "an http(s)/ssh/git URL that does not end in /",
    ),
    "git": (
        rf"(https?|ssh|git|file)://{_URL_CHARS}+|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._/-]+",
        "a git URL (https://, ssh://, file:// or user@host:path)",
    ),
    "ref": (r"[A-Za-z0-9._][A-Za-z0-9._/-]*", "a commit, tag or branch name"),
    "word": (r"[A-Za-z0-9][A-Za-z0-9._-]*", "a name of letters, digits and . _ -"),
    "release": (r"[0-9][0-9A-Za-z.]*", "a release name such as 2026.11"),
    "package": (r"[a-z0-9][a-z0-9+.-]+", "a Debian package name such as ca-certificates"),
    "requirement": (r"[A-Za-z0-9_.\-\[\]]+==[\w.+!-]+", "a Python pin name==version"),
    "apt_suite": (r"[A-Za-z0-9][A-Za-z0-9._/-]*", "an apt suite such as trixie"),
    "snapshot": (r"\d{8}T\d{6}Z", "a snapshot.debian.org time stamp such as 20261101T000000Z"),
    "dir_mode": (r"0?[0-7]{3,4}", "an octal directory mode such as 02775"),
    "file_mode": (r"0[0-7]{3}", "an octal file mode such as 0600"),
    "digits": (r"\d+", "digits"),
    "port_rule": (r"\d{1,5}(:\d{1,5})?(/(tcp|udp))?", "a port or range: 22/tcp, 6000:6007/tcp"),
    "mount_what": (r"[A-Za-z0-9._:/,=@+-]+", "LABEL=..., UUID=... or a device or network source"),
    "fstype": (r"[a-z0-9][a-z0-9._]*", "a file system type such as ext4"),
    "mount_options": (r"[A-Za-z0-9._,=/:@+-]+", "comma-separated options without spaces"),
    "mount_option": (r"[A-Za-z0-9._=/:@+-]+", "one option without commas or spaces"),
    "location": (r"/([A-Za-z0-9._~-]+/)*", "a URL prefix like /wxcam-media/"),
    "public_key": (
        r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
        r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [A-Za-z0-9@._+-]+)?",
        "an OpenSSH public key line: TYPE BASE64 [COMMENT], without options",
    ),
    "header": (
        r"[A-Za-z0-9-]+ \"[^\"\\$]*\"",
        'Name "value" (the value without double quotes, backslashes or $)',
    ),
}


def _charset(kind: str) -> Callable[[str], str]:
    """The check of one string class: the whole value matches, or one message says
    what it must be (a value that looks like a secret is named, never repeated)."""
    pattern, what = CHARSETS[kind]
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            credcheck.check_value(value)
            raise ValueError(f"{value!r} must be {what}")
        return value

    return check


def _text_of(kind: str) -> Any:
    """A string class as a type: its check, and its pattern in the JSON Schema."""
    schema = {"type": "string", "pattern": f"^(?:{CHARSETS[kind][0]})$"}
    return Annotated[str, AfterValidator(_charset(kind)), WithJsonSchema(schema)]


def _absolute(value: str) -> str:
    if not PurePosixPath(value).is_absolute():
        raise ValueError(f"path {value!r} must be absolute (start with /)")
    _charset("path")(value)
    if ".." in PurePosixPath(value).parts:
        raise ValueError(f"path {value!r} must not contain '..'")
    return str(PurePosixPath(value))


def _relative(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not value:
        raise ValueError(f"{value!r} must be a relative path below its root, without '..'")
    _charset("path")(value)
    if any(part.startswith("-") for part in path.parts):
        raise ValueError(f"{value!r}: a path part must not start with '-'")
    return str(path)


def _timespan(value: str) -> str:
    parse_timespan(str(value))
    return str(value)


def _calendar(value: str) -> str:
    return validate_calendar(str(value))


_SECRET_KEY = re.compile(
    r"PASS(WORD|WD)?($|_)|PWD|SECRET|TOKEN|AUTH_?KEY|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL",
    re.IGNORECASE,
)
# Deployment names that hold where a secret is installed, not the secret itself.
_SECRET_PATH_KEYS = frozenset({"GWS_SSH_PRIVATE_KEY"})


def _names_a_path(key: str) -> bool:
    return key in _SECRET_PATH_KEYS or key.endswith(("_PATH", "_FILE"))


def _env_name(key: str) -> str:
    if _SECRET_KEY.search(key) and not _names_a_path(key):
        raise ValueError(
            f"{key!r} looks like a secret: secrets are credentials given at boot, "
            "declare its name under 'secrets' instead"
        )
    return _charset("env_name")(key)


def no_secrets(environment: dict[str, str]) -> dict[str, str]:
    """A secret-looking key naming a path (`GWS_SSH_PRIVATE_KEY`) may only carry a path."""
    for key, value in environment.items():
        if _SECRET_KEY.search(key) and not value.startswith("/"):
            raise ValueError(
                f"{key!r} must be the absolute path a secret is installed at, never the "
                "secret itself (secrets are credentials given at boot: see 'secrets')"
            )
    return environment


# Structural checks (a character set and more).
AbsPath = Annotated[str, AfterValidator(_absolute)]
RelPath = Annotated[str, AfterValidator(_relative)]
TimeSpan = Annotated[str, AfterValidator(_timespan)]
Calendar = Annotated[str, AfterValidator(_calendar)]
EnvName = Annotated[str, AfterValidator(_env_name)]
# String classes, one per CHARSETS row.
LocalPath = _text_of("path")
Host = _text_of("host")
HostName = _text_of("hostname")
Origin = _text_of("origin")
UserName = _text_of("user")
Name = _text_of("name")
CredentialName = _text_of("credential")
UnitName = _text_of("unit")
Glob = _text_of("glob")
RsyncFilter = _text_of("filter")
Text = _text_of("text")
Command = _text_of("command")
EnvValue = _text_of("env")
Url = _text_of("url")
MirrorUrl = _text_of("mirror")
GitUrl = _text_of("git")
GitRef = _text_of("ref")
Word = _text_of("word")
Release = _text_of("release")
Package = _text_of("package")
Requirement = _text_of("requirement")
AptSuite = _text_of("apt_suite")
Snapshot = _text_of("snapshot")
DirMode = _text_of("dir_mode")
FileMode = _text_of("file_mode")
Digits = _text_of("digits")
PortRule = _text_of("port_rule")
MountWhat = _text_of("mount_what")
FsType = _text_of("fstype")
MountOptions = _text_of("mount_options")
MountOption = _text_of("mount_option")
UrlPrefix = _text_of("location")
PublicKey = _text_of("public_key")
Header = _text_of("header")


def unique_by(key: str, what: str) -> Callable[[list[Any]], list[Any]]:
    """A list validator: items must differ in `key` (errors point at the list)."""

    def check(items: list[Any]) -> list[Any]:
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            value = getattr(item, key)
            if value in seen:
                raise ValueError(
                    f"duplicate {what} {value!r} at [{index}] (first at [{seen[value]}])"
                )
            seen[value] = index
        return items

    return check


# Unicode categories refused in every string: control characters (newline,
# tab, ESC ...), format characters (bidi overrides), line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a field's value (itself, list items, mapping keys and values),
    with where it sits in the field (`[0]`, `.KEY`) for the refusal."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key, where)
            yield from _strings(item, f"{where}.{key}")


def _no_control(value: Any) -> None:
    for where, text in _strings(value):
        prefix = f"{where.lstrip('.')}: " if where else ""
        try:
            credcheck.check_value(text)  # first: the refusal must not repeat a secret
        except ValueError as exc:
            raise ValueError(f"{prefix}{exc}") from None
        bad = next((c for c in text if unicodedata.category(c) in _REFUSED_CATEGORIES), None)
        if bad is not None:
            raise ValueError(
                f"{prefix}{text!r} contains the control character U+{ord(bad):04X}: "
                "write it on one line without control characters"
            )


class Model(BaseModel):
    """Strict base: unknown keys are errors, models are immutable.

    Each field's docstring is its description in the spec reference
    (docs/reference/spec.md, written by builder.spec.reference).
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=False, use_attribute_docstrings=True
    )

    @field_validator("*", mode="after")
    @classmethod
    def _one_line(cls, value: Any) -> Any:
        """No string of the spec may carry a secret or a control character (a newline
        adds a line)."""
        _no_control(value)
        return value
