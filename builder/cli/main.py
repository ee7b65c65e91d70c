"""`aurora-image`: parse, call, print. The work happens in the modules."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from builder.cli import ops as cli_ops
from builder.cli import release as cli_release
from builder.cli import status as cli_status
from builder.cli.options import global_options
from builder.errors import AuroraError, SpecError
from builder.image.inputs import REPO

if TYPE_CHECKING:
    from builder.image.store import ImageRecord
    from builder.render.engine import Tree

Handler = Callable[[argparse.Namespace], int]
"""A command: takes the parsed arguments, prints, returns the exit code."""

DEFAULT_SPEC = REPO / "hosts" / "aurora.yml"
DEFAULT_RENDER_DIR = REPO / "build" / "render"


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

    from builder.image.build import newest_image
    from builder.image.store import MANIFEST
    from builder.render.diff import diff_tree, directory_base, format_text, image_base

    against = args.against
    with tempfile.TemporaryDirectory(prefix="aurora-against-") as scratch:
        if against and Path(against).is_dir() and not (Path(against) / MANIFEST).is_file():
            base = directory_base(Path(against))
        elif against:
            found = cli_release.image_finder(args, Path(scratch)).resolve(against)
            base = image_base(found.path, found.origin)
        else:
            base = image_base(newest_image())
    diff = diff_tree(tree, base)
    if args.json:
        print(json.dumps(diff.to_json()))
    else:
        sys.stdout.write(format_text(diff))
    # --exit-code: as `git diff --exit-code`, 1 when the spec changes rendered files.
    return 1 if args.exit_code and not diff.empty else 0


def cmd_lock(args: argparse.Namespace) -> int:
    if args.debian is not None:
        from builder.image.build import newest_image
        from builder.image.debian_lock import write_debian_lock
        from builder.image.store import resolve_image

        image = resolve_image(args.debian) if args.debian else newest_image()
        path = write_debian_lock(image)
        print(
            json.dumps({"wrote": str(path), "image": image.name})
            if args.json
            else (f"wrote {path} from {image.name}")
        )
        return 0
    from builder.image.app_lock import write_lock
    from builder.spec.model import load_spec

    path = write_lock(load_spec(args.spec))
    print(json.dumps({"wrote": str(path)}) if args.json else f"wrote {path}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from builder.image.build import build
    from builder.spec.model import load_spec

    progress = (not args.json and sys.stderr.isatty()) or args.progress
    result = build(load_spec(args.spec), progress=progress)
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
    from builder.image.build import images_dir
    from builder.image.store import human_size, list_images

    images = list_images()
    if args.quiet:
        for image in images:
            print(image.tag)
        return 0
    if args.json:
        print(json.dumps({"store": str(images_dir()), "images": [i.to_json() for i in images]}))
        return 0
    if not images:
        print(f"no images in {images_dir()}")
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
        return f"yes ({record.get('counts', {}).get('total', '?')} tests, {record.get('finished')})"
    if record.get("passed"):
        return "no (disk differs from the one tested)"
    return f"no (smoke suite failed {record.get('finished')})"


def cmd_prune(args: argparse.Namespace) -> int:
    from builder.image.build import images_dir
    from builder.image.store import execute_prune, list_images, plan_prune

    plan = plan_prune(args.keep, set(args.live))
    if args.dry_run:
        if args.json:
            print(json.dumps(plan.to_json(args.keep)))
        else:
            sys.stdout.write(plan.to_plan(args.keep).format_text())
        return 0
    removed = execute_prune(plan)
    kept = [i.tag for i in list_images()]
    if args.json:
        print(json.dumps({"store": str(images_dir()), "removed": removed, "kept": kept}))
        return 0
    for name in removed:
        print(f"removed {name}")
    print(f"kept {len(kept)} image{'s' if len(kept) != 1 else ''} in {images_dir()}")
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

    result = verify(args.tag, progress=args.progress)
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
    parser = argparse.ArgumentParser(
        prog="aurora-image",
        description="Build, test and release immutable images of the Aurora dashboard host.",
    )
    parser.add_argument("--version", action="version", version=f"aurora-image {version()}")
    global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Handler, summary: str, spec: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=summary)
        if spec:
            p.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="host spec (YAML)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        global_options(p, top=False)
        p.set_defaults(func=func)
        return p

    add("validate", cmd_validate, "check a host spec and list every problem in it")
    p = add("schema", cmd_schema, "print the host spec's JSON Schema (for editors)", False)
    p.add_argument("--out", type=Path, help="write it to this file instead (atomically)")
    p = add("completion", cmd_completion, "print the shell completion script", False)
    p.add_argument("shell", choices=["bash"], help="the shell (bash)")
    p = add("render", cmd_render, "render units and configs into a directory")
    p.add_argument("--out", type=Path, default=DEFAULT_RENDER_DIR, help="output directory")
    p.add_argument(
        "--diff",
        action="store_true",
        help="show what changes against the newest image instead of writing (unified diff)",
    )
    p.add_argument(
        "--against",
        metavar="REF",
        help="with --diff: an image tag or directory, `live` (what the server runs; its "
        "files from Glance if not built here), or a directory `render` wrote",
    )
    p.add_argument(
        "--exit-code", action="store_true", help="with --diff: exit 1 when files would change"
    )
    cli_release.live_options(p)
    p = add("lock", cmd_lock, "resolve the dashboard's Python pins into locks/ (with hashes)")
    p.add_argument(
        "--debian",
        nargs="?",
        const="",
        metavar="TAG",
        help="instead record the Debian package set of image TAG (default: newest)",
    )
    p = add("verify", cmd_verify, "rebuild TAG in an empty cache and compare bit for bit")
    p.add_argument("tag", help="image tag in the store (or an image directory)")
    p.add_argument("--progress", action="store_true", help="show mkosi steps")
    p = add("build", cmd_build, "build the image (render + mkosi) into images/<tag>/")
    p.add_argument("--progress", action="store_true", help="show mkosi steps even without a TTY")
    p.add_argument(
        "--tag-file", type=Path, metavar="PATH", help="also write the built tag into PATH"
    )
    p = add("list", cmd_list, "list stored images, newest first, with size and attestation", False)
    p.add_argument("-q", "--quiet", action="store_true", help="only the tags, one a line")
    p = add("prune", cmd_prune, "remove old images, never live ones or their rollback", False)
    p.add_argument("--keep", type=int, required=True, metavar="N", help="newest images to keep")
    p.add_argument(
        "--live",
        action="append",
        default=[],
        metavar="TAG",
        help="an image that is running somewhere (repeatable); never removed",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    p = add("diff", cmd_diff, "show what image B changes against image A")
    p.add_argument("a", metavar="A", help="base image: a tag, a directory, or `live`")
    p.add_argument("b", metavar="B", help="candidate image: a tag, a directory, or `live`")
    cli_release.live_options(p)
    p.add_argument(
        "--overlay",
        type=Path,
        metavar="SPEC",
        help="prove B differs from A only in this overlay spec's keys (exit 1 if not)",
    )
    cli_ops.register(add)
    cli_status.register(add)
    cli_release.register(add)
    return parser


def print_error(exc: AuroraError, *, as_json: bool) -> None:
    """One line per problem on stderr; a spec error with --json as JSON on stdout."""
    if as_json and isinstance(exc, SpecError):
        print(json.dumps(exc.to_json()))
    lines = [str(p) for p in getattr(exc, "problems", ())] or str(exc).splitlines() or [""]
    for line in lines:
        print(f"aurora-image: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except AuroraError as exc:
        if args.debug:
            raise
        print_error(exc, as_json=getattr(args, "json", False))
        return exc.exit_code
    except KeyboardInterrupt:
        print("aurora-image: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
