"""Parse a systemd unit file into `Section.Key -> [values]`, the shape of the
reference units, so rendered units can be compared directive by directive."""

from __future__ import annotations


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
