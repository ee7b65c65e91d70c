"""`aurora-image`: parse, call, print; and the handlers of the spec and image-store commands.

The commands and their options are declared in builder.cli.commands (the one
table); the work happens in the modules the handlers call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from builder.cli import release as cli_release
from builder.errors import EXIT_INTERRUPTED, AuroraError, SpecError

if TYPE_CHECKING:
    from builder.image.store import ImageRecord
    from builder.render.engine import Tree


def cmd_render(args: argparse.Namespace) -> int:
    from builder.render.engine import render
    from builder.render.tree import write_tree
    from builder.spec.model import load_spec

    start = time.perf_counter()
    tree = render(load_spec(args.spec))
    if args.diff or args.against:
        return _render_diff(tree, args)
    dest = write_tree(tree, args.out)
    took = time.perf_counter() - start
    if args.json:
        print(json.dumps({"out": str(dest), "files": len(tree), "seconds": round(took, 3)}))
    else:
        print(f"rendered {len(tree)} files into {dest} in {took * 1000:.0f} ms")
    return 0


def _render_diff(tree: Tree, args: argparse.Namespace) -> int:
    """Show what the spec changes in the rendered files; writes nothing."""
    import tempfile

    from builder.image.store import MANIFEST, newest_image
    from builder.render.diff import diff_tree, directory_base, format_text, image_base

    against = args.against
    with tempfile.TemporaryDirectory(prefix="aurora-against-") as scratch:
        if against and Path(against).is_dir() and not (Path(against) / MANIFEST).is_file():
            base = directory_base(Path(against))
        elif against:
            found = cli_release.image_finder(args, Path(scratch)).resolve(against)
            base = image_base(found.path, found.origin)
        else:
            base = image_base(newest_image(args.paths.images))
    diff = diff_tree(tree, base)
    if args.json:
        print(json.dumps(diff.to_json()))
    else:
        sys.stdout.write(format_text(diff))
    # --exit-code: as `git diff --exit-code`, 1 when the spec changes rendered files.
    return 1 if args.exit_code and not diff.empty else 0


def cmd_lock(args: argparse.Namespace) -> int:
    if args.debian is not None:
        from builder.image.debian_lock import write_debian_lock
        from builder.image.store import newest_image, resolve_image

        store = args.paths.images
        image = resolve_image(args.debian, store) if args.debian else newest_image(store)
        path = write_debian_lock(image)
        print(
            json.dumps({"wrote": str(path), "image": image.name})
            if args.json
            else (f"wrote {path} from {image.name}")
        )
        return 0
    from builder.image.app_lock import write_lock
    from builder.spec.model import load_spec

    path = write_lock(load_spec(args.spec), args.paths.cache)
    print(json.dumps({"wrote": str(path)}) if args.json else f"wrote {path}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from builder.image.build import build
    from builder.spec.model import load_spec

    progress = (not args.json and sys.stderr.isatty()) or args.progress
    result = build(
        load_spec(args.spec), args.paths, progress=progress, update_debian=args.update_debian
    )
    if args.tag_file is not None:
        from builder.render.tree import atomic_write

        # What `make test` hands the smoke and release suites: this build, not the newest.
        atomic_write(args.tag_file, f"{result.tag}\n".encode())
    if args.json:
        print(
            json.dumps(
                {
                    "tag": result.tag,
                    "path": str(result.path),
                    "reused": result.reused,
                    "seconds": round(result.seconds, 1),
                }
            )
        )
    elif result.reused:
        print(f"{result.tag}: already built at {result.path} (same inputs, same image)")
    else:
        print(f"{result.tag}: built in {result.seconds:.0f}s at {result.path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from builder.spec.model import load_spec

    spec = load_spec(args.spec)  # a SpecError lists every problem (main prints them)
    streams = len(spec.source_sync.streams)
    if args.json:
        print(json.dumps({"spec": str(args.spec), "valid": True, "release": spec.release,
                          "streams": streams}))  # fmt: skip
    else:
        print(f"{args.spec}: valid ({streams} streams)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from builder.spec.schema import schema_text

    text = schema_text()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    from builder.render.tree import atomic_write

    atomic_write(args.out, text.encode())
    print(json.dumps({"wrote": str(args.out)}) if args.json else f"wrote {args.out}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from builder.image.store import human_size, list_images

    store = args.paths.images
    images = list_images(store)
    if args.quiet:
        for image in images:
            print(image.tag)
        return 0
    if args.json:
        print(json.dumps({"store": str(store), "images": [i.to_json() for i in images]}))
        return 0
    if not images:
        print(f"no images in {store}")
        return 0
    width = max(len(i.tag) for i in images)
    print(f"{'TAG':<{width}}  {'BUILT (UTC)':<16}  {'SIZE':>9}  ATTESTED")
    for image in images:
        built = time.strftime("%Y-%m-%d %H:%M", time.gmtime(image.built_at))
        size = human_size(image.size_bytes)
        print(f"{image.tag:<{width}}  {built:<16}  {size:>9}  {_verdict(image)}")
    return 0


def _verdict(image: ImageRecord) -> str:
    record = image.attestation
    if record is None:
        return "no (not tested)"
    if image.attested:
        return f"yes ({record.counts.get('total', '?')} tests, {record.finished})"
    if record.passed:
        return "no (disk differs from the one tested)"
    return f"no (smoke suite failed {record.finished})"


def cmd_prune(args: argparse.Namespace) -> int:
    from builder.image.prune import execute_prune, plan_prune
    from builder.image.store import list_images

    store = args.paths.images
    plan = plan_prune(args.keep, set(args.live), store=store)
    if args.dry_run:
        if args.json:
            print(json.dumps(plan.to_json(args.keep)))
        else:
            sys.stdout.write(plan.to_plan(args.keep).format_text())
        return 0
    removed = execute_prune(plan)
    kept = [i.tag for i in list_images(store)]
    if args.json:
        print(json.dumps({"store": str(store), "removed": removed, "kept": kept}))
        return 0
    for name in removed:
        print(f"removed {name}")
    print(f"kept {len(kept)} image{'s' if len(kept) != 1 else ''} in {store}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    import tempfile

    from builder.image.diff import diff_images, format_text, to_json
    from builder.release.overlay import diff_extras

    with tempfile.TemporaryDirectory(prefix="aurora-diff-") as scratch:
        finder = cli_release.image_finder(args, Path(scratch))
        a, b = finder.resolve(args.a), finder.resolve(args.b)
        diff = diff_images(a.path, b.path, origins=(a.origin, b.origin))
        extras = diff_extras(diff, args.overlay)  # change categories; --overlay's proof
    if args.json:
        print(json.dumps(to_json(diff) | extras.to_json()))
    else:
        sys.stdout.write(format_text(diff) + extras.format_text())
    return 0 if extras.ok else 1


def cmd_verify(args: argparse.Namespace) -> int:
    from builder.image.verify import format_text, verify

    result = verify(args.tag, args.paths, progress=args.progress)
    print(json.dumps(result.to_json(), indent=2) if args.json else format_text(result))
    return 0 if result.identical else 1


def version() -> str:
    """The installed package's version (pyproject.toml), as `--version` prints it."""
    from importlib import metadata

    try:
        return metadata.version("aurora-image")
    except metadata.PackageNotFoundError:
        return "unknown"


def cmd_completion(args: argparse.Namespace) -> int:
    from builder.cli.completion import bash_script

    sys.stdout.write(bash_script(build_parser()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser, made from the command table (builder.cli.commands)."""
    from builder.cli.commands import build_parser as from_table

    return from_table()


def print_error(exc: AuroraError, *, as_json: bool) -> None:
    """One line per problem on stderr; a spec error with --json as JSON on stdout."""
    if as_json and isinstance(exc, SpecError):
        print(json.dumps(exc.to_json()))
    lines = [str(p) for p in getattr(exc, "problems", ())] or str(exc).splitlines() or [""]
    for line in lines:
        print(f"aurora-image: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    from builder.paths import Paths

    parser = build_parser()
    args = parser.parse_args(argv)
    # The edge: the image store and caches are resolved here, once, and handed down.
    args.paths = Paths.from_env()
    try:
        return int(args.func(args))
    except AuroraError as exc:
        if args.debug:
            raise
        print_error(exc, as_json=getattr(args, "json", False))
        return exc.exit_code
    except KeyboardInterrupt:
        print("aurora-image: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
