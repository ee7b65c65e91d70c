"""Operator commands of `aurora-image`: interactive VM, ssh, audit, explain."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Add = Callable[..., argparse.ArgumentParser]


def register(add: Add) -> None:
    """Add this module's subcommands through the CLI's ``add`` helper."""
    _ = (add, Any)
