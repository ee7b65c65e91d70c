"""The one command table of `aurora-image`: every command, its handler and options.

The argparse parser (`build_parser`), the bash completion (builder.cli.completion)
and docs/reference/commands.md (builder.cli.reference) are all derived from
`GROUPS`, so a command or flag cannot exist without completing and being
documented. The idea is mkosi's settings table (one list drives parsing, CLI
and docs); here each row is a `Command` of `Arg`s, grouped as the page shows them.

Add a command: write its handler (`(args) -> exit code`, printing its result)
in the module of its kind, add a `Command` to its group below, run `make docs`.
Long because it is the table: one entry per command, and no logic beside it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.cli import debstore as cli_debstore
from builder.cli import gates as cli_gates
from builder.cli import main as cli_main
from builder.cli import ops as cli_ops
from builder.cli import release as cli_release
from builder.cli import status as cli_status
from builder.image.inputs import REPO

Handler = Callable[[argparse.Namespace], int]
"""A command: takes the parsed arguments, prints, returns the exit code."""

PROG = "aurora-image"
DESCRIPTION = "Build, test and release immutable images of the Aurora dashboard host."
DEFAULT_SPEC = REPO / "hosts" / "aurora.yml"
DEFAULT_RENDER_DIR = REPO / "build" / "render"


@dataclass(frozen=True)
class Arg:
    """One argument: its names (`--out`, or a positional's dest) and argparse keywords."""

    names: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.names, **self.options)


def arg(*names: str, **options: Any) -> Arg:
    return Arg(names, options)


@dataclass(frozen=True)
class Command:
    """One subcommand.

    ``usage`` holds the rows of its group's table in commands.md: what follows
    `aurora-image` on the command line, and what that does.
    """

    name: str
    run: Handler
    summary: str
    args: tuple[Arg, ...] = ()
    usage: Mapping[str, str] = field(default_factory=dict)
    spec: bool = True  # takes --spec (the host spec it reads)


@dataclass(frozen=True)
class Group:
    """Commands documented together; ``notes`` is the page's prose under their table."""

    title: str
    commands: tuple[Command, ...]
    notes: str = ""


# -- options several commands share, declared once ---------------------------------

JSON = arg("--json", action="store_true", help="machine-readable output")
SPEC = arg("--spec", type=Path, default=DEFAULT_SPEC, help="host spec (YAML)")
# Global options are accepted before or after the subcommand, as operators type
# them (`aurora-image --debug list`, `aurora-image list --debug`). Below the top
# level their default is SUPPRESS, so one not repeated there keeps the value given
# before the command.
_DEBUG_HELP = "show tracebacks on errors"
_CLOUD_NAMES = ("--os-cloud", "--cloud")  # as the openstack CLI spells it, and short
_CLOUD = {
    "dest": "cloud",
    "metavar": "CLOUD",
    "help": "clouds.yaml entry (default: OS_CLOUD or the OS_* variables, then deploy.cloud)",
}
TOP_OPTIONS = (
    arg("--debug", action="store_true", help=_DEBUG_HELP),
    arg(*_CLOUD_NAMES, default=None, **_CLOUD),
)
DEBUG = arg("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
CLOUD = arg(*_CLOUD_NAMES, default=argparse.SUPPRESS, **_CLOUD)

DRY_RUN = arg(
    "--dry-run",
    action="store_true",
    help="print exactly what would be uploaded, rebuilt and deleted; change nothing",
)
SSH = (
    arg("--ssh-port", type=int, help="ssh port (default: deploy.ssh_port)"),
    arg("--ssh-config", type=Path, help="ssh -F file"),
    arg("--identity", type=Path, help="ssh private key"),
)
# Commands that can read what is live (`live`, or a tag only Glance holds).
LIVE = (
    CLOUD,
    arg("--server", help="Nova server name or id for `live` (default: deploy.server)"),
)
SERVER = (CLOUD, arg("--server", help="Nova server name or id (default: deploy.server)"))
# The release probe's view of the server (promote, rollback).
PROBE = (
    arg("--address", help="address the probe uses (default: deploy.address or Nova's)"),
    *SSH,
    arg("--http-port", type=int, help="dashboard HTTP port (default: deploy.http_port)"),
    arg("--https-port", type=int, help="HTTPS port (default: deploy.https_port)"),
    arg("--probe-timeout", metavar="SPAN", help="e.g. 10min (default: deploy.probe_timeout)"),
)
TARGET = arg("--target", metavar="NAME", help="deploy target (deploy.targets)")
# The release gates (builder.cli.gates turns them into a Gates).
GATES = (
    TARGET,
    arg(
        "--break-lease",
        action="store_true",
        help="take the server's lease even from another operator (their run is dead)",
    ),
    arg(
        "--allowed-signers",
        type=Path,
        metavar="FILE",
        help="OpenSSH allowed_signers for release signatures (default: deploy.allowed_signers)",
    ),
)
PROMOTE_GATES = (
    *GATES,
    arg(
        "--soak",
        metavar="SPAN",
        help="keep probing this long after the rebuild, roll back on a failure "
        "(default: deploy.soak_window; 0 skips)",
    ),
    arg("--force", action="store_true", help="production: skip the staging soak rule"),
    arg("--reason", help="why --force (recorded on the Glance image)"),
    arg(
        "--approve",
        action="append",
        default=[],
        metavar="CATEGORY",
        choices=cli_gates.categories(),
        help="approve a change category production asks approval for (repeatable)",
    ),
)
TAG_OR_NEWEST = arg(
    "tag", nargs="?", metavar="TAG", help="image tag or directory (default: newest)"
)


# -- the table ----------------------------------------------------------------------

GROUPS: tuple[Group, ...] = (
    Group(
        "The spec and the rendered files",
        (
            Command(
                "validate",
                cli_main.cmd_validate,
                "check a host spec and list every problem in it",
                usage={
                    "validate": (
                        "checks the spec: `valid`, or every problem at once, one line each, "
                        "`file:line: key.path: problem and fix` (a misspelt key gets a "
                        "did-you-mean, "
                        'a YAML syntax error plain words); with `--json`, `{"valid": false, '
                        '"errors": [{"file", "line", "key", "message"}, ...]}`'
                    ),
                },
            ),
            Command(
                "schema",
                cli_main.cmd_schema,
                "print the host spec's JSON Schema (for editors)",
                (arg("--out", type=Path, help="write it to this file instead (atomically)"),),
                usage={
                    "schema [--out FILE]": (
                        "prints the spec's JSON Schema, for editors "
                        "([below](#checking-a-spec-while-typing-it))"
                    ),
                },
                spec=False,
            ),
            Command(
                "render",
                cli_main.cmd_render,
                "render units and configs into a directory",
                (
                    arg("--out", type=Path, default=DEFAULT_RENDER_DIR, help="output directory"),
                    arg(
                        "--diff",
                        action="store_true",
                        help="show what changes against the newest image instead of writing "
                        "(unified diff)",
                    ),
                    arg(
                        "--against",
                        metavar="REF",
                        help="with --diff: an image tag or directory, `live` (what the server "
                        "runs; its files from Glance if not built here), or a directory "
                        "`render` wrote",
                    ),
                    arg(
                        "--exit-code",
                        action="store_true",
                        help="with --diff: exit 1 when files would change",
                    ),
                    *LIVE,
                ),
                usage={
                    "render [--out DIR]": "renders into `build/render/` (atomically)",
                    "render --diff [--against REF] [--exit-code]": (
                        "the rendered files this spec changes against the newest image, or "
                        "`REF`: a tag, an image or `render` directory, or `live` (what the server "
                        "runs, read from Glance when not built here); `--exit-code`: exit 1 when "
                        "files would change, like `git diff --exit-code`"
                    ),
                },
            ),
            Command(
                "explain",
                cli_ops.cmd_explain,
                "print a rendered unit with where each value came from",
                (arg("unit", metavar="UNIT", help="unit name (suffix optional) or rendered path"),),
                usage={
                    "explain UNIT": (
                        "a rendered unit, each value annotated with the spec line it came from"
                    ),
                },
            ),
            Command(
                "lock",
                cli_main.cmd_lock,
                "resolve the dashboard's Python pins into locks/ (with hashes)",
                (
                    arg(
                        "--debian",
                        nargs="?",
                        const="",
                        metavar="TAG",
                        help="instead record the Debian package set of image TAG (default: newest)",
                    ),
                ),
                usage={
                    "lock": (
                        "resolves `dashboard.requirements` into `locks/app-requirements.txt` "
                        "with hashes"
                    ),
                    "lock --debian [TAG]": (
                        "records a tested image's Debian packages in `locks/debian-packages.txt`; "
                        "later builds warn about and record in their manifest any package that "
                        "moved (`debian.snapshot` in the spec builds from snapshot.debian.org, "
                        "so nothing can move)"
                    ),
                },
            ),
        ),
    ),
    Group(
        "Images",
        (
            Command(
                "build",
                cli_main.cmd_build,
                "build the image (render + mkosi) into images/<tag>/",
                (
                    arg(
                        "--progress",
                        action="store_true",
                        help="show mkosi steps even without a TTY",
                    ),
                    arg(
                        "--tag-file",
                        type=Path,
                        metavar="PATH",
                        help="also write the built tag into PATH",
                    ),
                    arg(
                        "--update-debian",
                        action="store_true",
                        help="resolve Debian packages from the mirror, not the Debian lock "
                        "(then `lock --debian` pins the new set)",
                    ),
                ),
                usage={
                    "build [--progress]": (
                        "builds the image into `images/<tag>/`, or says it is already built"
                    ),
                    "build --update-debian": (
                        "takes the mirror's Debian packages instead of the lock's files "
                        "(a tag of its own); `lock --debian TAG` then pins them"
                    ),
                },
            ),
            Command(
                "list",
                cli_main.cmd_list,
                "list stored images, newest first, with size and attestation",
                (arg("-q", "--quiet", action="store_true", help="only the tags, one a line"),),
                usage={
                    "list [--quiet]": (
                        "stored images, newest first, with size and attestation "
                        "(`--quiet`: only the tags)"
                    ),
                },
                spec=False,
            ),
            Command(
                "diff",
                cli_main.cmd_diff,
                "show what image B changes against image A",
                (
                    arg("a", metavar="A", help="base image: a tag, a directory, or `live`"),
                    arg("b", metavar="B", help="candidate image: a tag, a directory, or `live`"),
                    *LIVE,
                    arg(
                        "--overlay",
                        type=Path,
                        metavar="SPEC",
                        help="prove B differs from A only in this overlay spec's keys "
                        "(exit 1 if not)",
                    ),
                ),
                usage={
                    "diff A B": (
                        "what image B changes against A: rendered files, packages, sizes, inputs; "
                        "A and B are tags, directories or `live`, and a tag not built here is read "
                        "from its Glance upload"
                    ),
                },
            ),
            Command(
                "verify",
                cli_main.cmd_verify,
                "rebuild TAG in an empty cache and compare bit for bit",
                (
                    arg("tag", help="image tag in the store (or an image directory)"),
                    arg("--progress", action="store_true", help="show mkosi steps"),
                ),
                usage={
                    "verify TAG": (
                        "rebuilds TAG from this checkout in an empty build cache and compares bit "
                        "for bit; where the disks differ it names the partitions and files (exit "
                        "1). Slow (a cold build): `bench/run.py --verify` runs it, `make test` "
                        "does not"
                    ),
                },
            ),
            Command(
                "prune",
                cli_main.cmd_prune,
                "remove old images, never live ones or their rollback",
                (
                    arg(
                        "--keep", type=int, required=True, metavar="N", help="newest images to keep"
                    ),
                    arg(
                        "--live",
                        action="append",
                        default=[],
                        metavar="TAG",
                        help="an image that is running somewhere (repeatable); never removed",
                    ),
                    arg(
                        "--dry-run", action="store_true", help="list what would go; remove nothing"
                    ),
                ),
                usage={
                    "prune --keep N [--live TAG] [--dry-run]": (
                        "removes images older than the N newest, and partial builds untouched "
                        "for an hour; never a live image or its rollback target (the newest "
                        "attested image before it); "
                        "`--dry-run` lists what would go and why, removes nothing"
                    ),
                },
                spec=False,
            ),
            Command(
                "debstore",
                cli_debstore.cmd_debstore,
                "the .debs images were built from: export, import, verify",
                (
                    arg("action", choices=["export", "import", "verify"]),
                    arg(
                        "what",
                        metavar="TAG|FILE",
                        help="export/verify: an image tag; import: a tar",
                    ),
                    arg("--to", type=Path, metavar="FILE", help="export: the tar to write"),
                ),
                usage={
                    "debstore export TAG --to FILE": (
                        "writes the .debs image TAG was built from (its manifest's digests) "
                        "into a tar, to carry to another machine"
                    ),
                    "debstore import FILE": (
                        "adds such a tar's .debs to this machine's package store"
                    ),
                    "debstore verify TAG": (
                        "checks that every .deb of TAG is in the store, undamaged"
                    ),
                },
            ),
        ),
    ),
    Group(
        "Running hosts",
        (
            Command(
                "vm",
                cli_ops.cmd_vm,
                "boot an image under QEMU and open a shell on it (ssh)",
                (
                    TAG_OR_NEWEST,
                    arg(
                        "--keep",
                        action="store_true",
                        help="leave it running for `aurora-image ssh`",
                    ),
                    arg("--stop", action="store_true", help="power off the kept VM of TAG"),
                    arg(
                        "--console",
                        action="store_true",
                        help="attach to the serial console (Ctrl-] leaves); boots TAG first "
                        "unless it is kept running, without waiting for sshd",
                    ),
                ),
                usage={
                    "vm [TAG]": (
                        "boots an image (default: the newest) under QEMU, prints the serial "
                        "log's path, opens a root shell; powers off when you leave"
                    ),
                    "vm [TAG] --keep": (
                        "the same, and leaves it running (without a terminal: boots, prints "
                        "where it runs, returns)"
                    ),
                    "vm --stop [TAG]": "powers a kept VM off",
                    "vm --console [TAG] [--keep]": (
                        "the serial console, for when sshd is what broke: attaches to the kept "
                        "VM of TAG, or boots TAG and attaches from its first line without "
                        "waiting for sshd (powered off when you leave, unless `--keep`); "
                        "Ctrl-] leaves"
                    ),
                },
            ),
            Command(
                "ssh",
                cli_ops.cmd_ssh,
                "a shell (or -- CMD) on a VM left running by `vm --keep`",
                (
                    arg(
                        "tag",
                        nargs="?",
                        metavar="TAG",
                        help="which kept VM (default: the only one)",
                    ),
                    arg(
                        "command", nargs=argparse.REMAINDER, metavar="-- CMD", help="command to run"
                    ),
                ),
                usage={"ssh [TAG] [-- CMD]": "a shell (or one command) on a kept VM"},
                spec=False,
            ),
            Command(
                "status",
                cli_status.cmd_status,
                "what is live where: per server the tag, image, Nova state, attestation; "
                "the newest local image and kept VMs",
                (
                    CLOUD,
                    arg(
                        "--server",
                        action="append",
                        metavar="NAME",
                        help="Nova server name or id (repeatable; default: every "
                        "deploy.targets entry, else deploy.server)",
                    ),
                    arg(
                        "--local",
                        action="store_true",
                        help="only this machine; do not ask the cloud",
                    ),
                ),
                usage={
                    "status [--server NAME] [--local]": (
                        "what is live where, like `bootc status`: per server the live tag, "
                        "Glance image, Nova state, attested or not, who promoted it; then the "
                        "newest local image and the VMs kept running here; exit 1 when a server "
                        "cannot be read (its entry says why)"
                    ),
                },
            ),
            Command(
                "logs",
                cli_status.cmd_logs,
                "an image's build log, last smoke-suite log and serial logs",
                (
                    TAG_OR_NEWEST,
                    arg(
                        "--only", choices=["build", "smoke", "serial"], help="just this kind of log"
                    ),
                    arg("--tail", type=int, metavar="N", help="the last N lines of each log"),
                ),
                usage={
                    "logs [TAG] [--only build|smoke|serial] [--tail N]": (
                        "an image's logs in one place: the build log, the last smoke-suite run "
                        "(`smoke.log`, kept beside the image with the console of its VM, "
                        "`smoke-serial.log`) and the serial log of `aurora-image vm`"
                    ),
                },
                spec=False,
            ),
            Command(
                "audit",
                cli_ops.cmd_audit,
                "check a running host for drift from its image (observe only)",
                (
                    arg(
                        "host", metavar="HOST", help="[user@]host, or vm[:TAG] for a kept local VM"
                    ),
                    arg(
                        "--image",
                        metavar="TAG",
                        help="audit against TAG (or `live`: what Nova says the server runs), "
                        "whatever the host says; a tag not built here is read from its Glance "
                        "upload",
                    ),
                    *SSH,
                    arg("--all", action="store_true", help="list every check, not only drift"),
                    *LIVE,
                ),
                usage={
                    "audit HOST [--image TAG|live] [--all]": (
                        "observe-only drift check of a running host against its image's manifest; "
                        "exit 1 on drift. `HOST` is `[user@]host` or `vm[:TAG]` for a kept VM; "
                        "`--ssh-port`, `--identity`, `--ssh-config` for ssh"
                    ),
                },
            ),
            Command(
                "secrets",
                cli_release.cmd_secrets,
                "which of the spec's credentials a host has (never values)",
                (
                    arg("action", choices=["check"], help="check: list present / missing"),
                    arg("host", metavar="HOST", help="[user@]host, or a Host of --ssh-config"),
                    *SSH,
                ),
                usage={
                    "secrets check HOST": (
                        "which credentials the spec names are present or missing on a host (names "
                        "and sizes only, never values); exit non-zero when one is missing"
                    ),
                },
            ),
        ),
        notes="""\
`audit` compares against the manifest of the tag the host says it runs
(`--image TAG` overrides; `--image live` takes what Nova says the server
runs). The manifest comes from the local image store when the image was
built here, else from the release's metadata in Glance, so any clone with
cloud access can audit
([what travels with a release](../architecture/promote.md#what-travels-with-a-release)).
""",
    ),
    Group(
        "Releases",
        (
            Command(
                "promote",
                cli_release.cmd_promote,
                "upload a tested image to Glance, rebuild the server, probe",
                (
                    arg("tag", metavar="TAG", help="image tag in the store (must be attested)"),
                    *SERVER,
                    *PROBE,
                    DRY_RUN,
                    *PROMOTE_GATES,
                ),
                usage={
                    "promote TAG [--dry-run]": (
                        "upload, rebuild the server, probe; on failure roll back automatically"
                    ),
                },
            ),
            Command(
                "rollback",
                cli_release.cmd_rollback,
                "rebuild the server from an earlier image, probe",
                (
                    arg(
                        "tag",
                        metavar="TAG",
                        nargs="?",
                        help="tag in Glance (default: the one live before)",
                    ),
                    *SERVER,
                    *PROBE,
                    DRY_RUN,
                    *GATES,
                ),
                usage={
                    "rollback [TAG] [--dry-run]": (
                        "rebuild the server from an earlier image in Glance (default: the one live "
                        "before the current), then probe"
                    ),
                },
            ),
            Command(
                "releases",
                cli_release.cmd_releases,
                "tags locally and in Glance, what is live, who promoted",
                (*SERVER, TARGET),
                usage={
                    "releases": (
                        "tags in Glance and here, the live one (Nova's answer), promotion history"
                    ),
                },
            ),
            Command(
                "glance-prune",
                cli_release.cmd_glance_prune,
                "delete old images from Glance (never live/previous)",
                (
                    arg("--keep", type=int, metavar="N", help="newest ready images to keep"),
                    *SERVER,
                    TARGET,
                    DRY_RUN,
                ),
                usage={
                    "glance-prune [--keep N] [--dry-run]": (
                        "deletes older `aurora-*` images (and their metadata images) from Glance, "
                        "keeping N (default `deploy.keep_images`); never the live one or the one "
                        "before it"
                    ),
                },
            ),
            Command(
                "sign",
                cli_gates.cmd_sign,
                "sign an attested image's release statement (ssh-keygen -Y sign)",
                (
                    arg("tag", metavar="TAG", help="image tag in the store (must be attested)"),
                    arg(
                        "--key",
                        type=Path,
                        help="ssh private key to sign with (default: AURORA_SIGNING_KEY); "
                        "never in the repo",
                    ),
                ),
                usage={
                    "sign TAG [--key FILE]": (
                        "signs an attested image's release statement with an operator's ssh key "
                        "(the smoke suite signs by itself when `AURORA_SIGNING_KEY` is set); "
                        "`promote` checks it against `deploy.allowed_signers`"
                    ),
                },
            ),
        ),
        notes="""\
They read the server from the spec's [`deploy`](spec.md#deploy) section;
flags override it: `--os-cloud` (or `--cloud`), `--server`, and for `promote` and `rollback`
the probe's `--address`, `--ssh-port`, `--ssh-config`, `--identity`,
`--http-port`, `--https-port`, `--probe-timeout`.

`--dry-run` prints exactly what would happen (what is uploaded, with name,
size and properties; which server is rebuilt from what to what; what is
deleted and why), changes nothing and exits 0; with `--json` as data. See
[preview](../architecture/promote.md#preview-dry-run).
""",
    ),
    Group(
        "Shell completion",
        (
            Command(
                "completion",
                cli_main.cmd_completion,
                "print the shell completion script",
                (arg("shell", choices=["bash"], help="the shell (bash)"),),
                usage={
                    "completion bash": (
                        "prints the bash completion script, generated from this table as this "
                        "page is: every command, option, image tag in the store and path completes"
                    ),
                },
                spec=False,
            ),
        ),
        notes="""\
```sh
aurora-image completion bash > /etc/bash_completion.d/aurora-image   # for every shell
source <(aurora-image completion bash)                                # for this one
```
""",
    ),
)

COMMANDS: tuple[Command, ...] = tuple(c for g in GROUPS for c in g.commands)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of `aurora-image`, made from the table."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"{PROG} {cli_main.version()}")
    for option in TOP_OPTIONS:
        option.add_to(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.summary, description=command.summary)
        for option in (SPEC, JSON, DEBUG) if command.spec else (JSON, DEBUG):
            option.add_to(p)
        for option in command.args:
            option.add_to(p)
        p.set_defaults(func=command.run)
    return parser
