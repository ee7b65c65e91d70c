"""Options shared by several `aurora-image` commands, declared once.

Global options are accepted before or after the subcommand, as operators
type them (`aurora-image --debug list`, `aurora-image list --debug`).
"""

from __future__ import annotations

import argparse


def global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options accepted before or after the subcommand (`aurora-image --debug list`
    and `aurora-image list --debug`). Below the top level their default is
    SUPPRESS, so an option not repeated there keeps the value given before it."""
    unset = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors", **unset)
    if top:
        cloud_option(parser, top=True)


def cloud_option(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """`--os-cloud` as the openstack CLI spells it (`--cloud` too), before or after
    the subcommand; the top level sets its default (None: OS_CLOUD, then the spec)."""
    parser.add_argument(
        "--os-cloud",
        "--cloud",
        dest="cloud",
        default=None if top else argparse.SUPPRESS,
        metavar="CLOUD",
        help="clouds.yaml entry (default: OS_CLOUD or the OS_* variables, then deploy.cloud)",
    )
