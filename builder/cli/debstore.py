"""`aurora-image debstore`: the content-addressed store of the .debs images were built from
(builder.image.debstore): export one image's packages, import them on another machine, verify."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from builder.errors import AuroraError


def _digests(tag: str, store: Path) -> tuple[Path, dict[str, str]]:
    from builder.image.store import read_manifest, resolve_image

    image_dir = resolve_image(tag, store)
    digests = read_manifest(image_dir).debian_debs
    if not digests:
        raise AuroraError(
            f"{image_dir.name}: its manifest records no .deb digests (built before the "
            "package store); rebuild it to record them"
        )
    return image_dir, digests


def cmd_debstore(args: argparse.Namespace) -> int:
    from builder.image import debstore

    root = debstore.store_dir(args.paths.cache)
    if args.action == "import":
        added = debstore.import_(Path(args.what), root)
        result = {"imported": added, "store": str(root)}
        print(json.dumps(result) if args.json else f"{added} .deb(s) added to {result['store']}")
        return 0
    image_dir, digests = _digests(args.what, args.paths.images)
    if args.action == "verify":
        bad = debstore.verify(digests, root)
        if args.json:
            print(json.dumps({"tag": image_dir.name, "packages": len(digests), "bad": bad}))
        elif not bad:
            print(f"{image_dir.name}: all {len(digests)} .debs in {root}")
        if bad:
            raise AuroraError(
                f"{image_dir.name}: {len(bad)} .deb(s) missing or damaged in the store "
                f"({', '.join(bad[:5])}); import them (`aurora-image debstore import FILE`)"
            )
        return 0
    if args.to is None:
        raise AuroraError("debstore export TAG needs --to FILE (the tar to write)")
    count = debstore.export(digests, args.to, root)
    print(json.dumps({"tag": image_dir.name, "debs": count, "file": str(args.to)}) if args.json
          else f"{image_dir.name}: {count} .debs written to {args.to}")  # fmt: skip
    return 0
