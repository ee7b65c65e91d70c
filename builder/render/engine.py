"""Render a host spec into the file tree baked into the image.

Pure: a spec goes in, a mapping of image paths to file contents comes out.
Nothing here touches the disk, so rendering is fast and every unit can be
checked without building or booting anything. What is rendered is the carried
table's (builder.render.carried); each file records its row's producer and
spec keys (File.provenance).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2

from builder.render.carried import RENDERED, Carried, at, enabled_units, unit_classes
from builder.render.configs import gws_config, mirror_verify_config, sync_config, volume_marker
from builder.render.layout import sandbox_hidden, sandbox_writes, storage_entries
from builder.render.names import (
    ENV_FILE,
    GWS_CONFIG_DIR,
    MIRROR_VERIFY,
    OPERATOR_KEYS,
    SYNC_CONFIG_DIR,
    SYNC_PROGRAM,
    SYSTEM_UNITS,
    UNIT_CLASSES_FILE,
    VOLUME_MARKER,
    gws_unit,
    mount_unit_name,
    sync_unit,
)
from builder.render.tree import File, Provenance, Tree
from builder.render.unitfile import unit_name
from builder.spec.model import HostSpec
from builder.spec.systemd_values import escape_exec, escape_specifiers, parse_timespan

# Importers of the pre-split engine keep finding these here.
__all__ = [
    "ENV_FILE",
    "GWS_CONFIG_DIR",
    "MIRROR_VERIFY",
    "OPERATOR_KEYS",
    "SYNC_CONFIG_DIR",
    "SYNC_PROGRAM",
    "SYSTEM_UNITS",
    "UNITS_DIR",
    "UNIT_CLASSES_FILE",
    "VOLUME_MARKER",
    "File",
    "Provenance",
    "Tree",
    "enabled_units",
    "environment",
    "expand",
    "gws_config",
    "gws_unit",
    "mirror_verify_config",
    "mount_unit_name",
    "placeholders",
    "render",
    "sandbox_hidden",
    "sandbox_writes",
    "storage_entries",
    "sync_config",
    "sync_unit",
    "unit_classes",
    "volume_marker",
]

UNITS_DIR = Path(__file__).resolve().parents[2] / "units"


def _seconds(span: str) -> str:
    value = parse_timespan(str(span))
    return str(int(value)) if value == int(value) else str(value)


def _milliseconds(span: str) -> str:
    return str(round(parse_timespan(str(span)) * 1000))


def placeholders(spec: HostSpec) -> dict[str, str]:
    """The path names a spec may use in job commands, e.g. {venv}/bin/python."""
    return {
        "venv": spec.dashboard.venv,
        "checkout": spec.dashboard.checkout,
        "raw": spec.storage.raw_root,
        "products": spec.storage.product_root,
    }


def expand(text: str, names: dict[str, str]) -> str:
    for key, value in names.items():
        text = text.replace("{" + key + "}", value)
    return text


@functools.cache
def environment(units_dir: Path = UNITS_DIR) -> jinja2.Environment:
    """One environment per template directory: it caches compiled templates
    (and reloads one whose file changed), so repeated renders stay cheap."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(units_dir),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["seconds"] = _seconds
    env.filters["milliseconds"] = _milliseconds
    # Spec text in unit files: systemd expands `%` (and `$` in Exec*=) otherwise.
    env.filters["unit_text"] = escape_specifiers
    env.filters["exec"] = escape_exec
    return env


def template_name(row: Carried) -> str:
    """The template file a template row names (``units/timer.j2`` -> ``timer.j2``)."""
    return row.producer.split()[0].removeprefix("units/")


def render(spec: HostSpec, units_dir: Path = UNITS_DIR) -> Tree:
    """Render every file the spec decides, keyed by absolute path in the image."""
    tree: Tree = {}
    for row in RENDERED:
        for index, item in row.items(spec):
            path, entry = make(spec, row, index, item, units_dir)
            tree[path] = entry
    return dict(sorted(tree.items()))


def make(
    spec: HostSpec, row: Carried, index: int | None, item: Any, units_dir: Path = UNITS_DIR
) -> tuple[str, File]:
    """One file of a rendered row (for one item), with its provenance."""
    assert row.make is not None
    path, made = row.make(spec, item)
    if isinstance(made, dict):
        env = environment(units_dir)
        names = placeholders(spec)
        env.filters["paths"] = lambda text: expand(text, names)
        made = File(env.get_template(template_name(row)).render(**made).encode(), row.mode)
    keys = tuple(at(k, index) for k in row.keys)
    record = Provenance(row.producer, keys, unit_name(path))
    return path, File(made.content, made.mode, made.link, made.directory, record)


def remake(spec: HostSpec, record: Provenance) -> File | None:
    """The file a record names, rendered from another spec (None: the spec has no such
    file): the row and item are found by producer and keys, so a renamed item's file
    is still found under its new path."""
    for row in RENDERED:
        if row.producer != record.producer:
            continue
        for index, item in row.items(spec):
            if tuple(at(k, index) for k in row.keys) == record.keys:
                return make(spec, row, index, item)[1]
    return None
