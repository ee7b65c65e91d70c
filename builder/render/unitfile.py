"""systemd unit files: which names are units, and parsing one into
`Section.Key -> [values]`, the shape of the reference units, so rendered units
can be compared directive by directive."""

from __future__ import annotations

# The unit types the image carries or audits (the one list: render, explain, audit).
UNIT_SUFFIXES = (".service", ".timer", ".mount", ".socket", ".path", ".target", ".automount")
UNIT_DIRS = ("/etc/systemd/system/", "/usr/lib/systemd/system/", "/lib/systemd/system/")


def unit_name(path: str) -> str | None:
    """The unit a file in a unit directory is (None for drop-ins and other files)."""
    directory, _, name = path.rpartition("/")
    if directory + "/" not in UNIT_DIRS:
        return None
    return name if name.endswith(UNIT_SUFFIXES) else None


def parse_unit(text: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        directives.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return directives
