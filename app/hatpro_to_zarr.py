"""Sample HATPRO append job: fails on an empty input tree as the production job does.

The production app's processing jobs exit 1 when there is nothing to read
(its HATPRO append prints "No datasets loaded; nothing to write"), so a host
whose instrument is down always shows this unit failed. The sample keeps that
behaviour so the image's health probe is tested against it (a pipeline failure
that was there before a rebuild does not count against the new image).

With input files it records which ones it has loaded in `<zarr>/loaded.txt`
(a stand-in for the Zarr store; the sample app reads no science data).
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

PATTERN = "HATPROG5-AURORA-ICELAND_*"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--zarr", type=Path, required=True)
    parser.add_argument("--chunk-time", type=int, default=600)
    parser.add_argument("--chunk-range", type=int, default=48)
    args = parser.parse_args()
    files = sorted(p.name for p in args.root.rglob(PATTERN) if p.is_file())
    if not files:
        print("No datasets loaded; nothing to write", file=sys.stderr)
        return 1
    args.zarr.mkdir(parents=True, exist_ok=True)
    index = args.zarr / "loaded.txt"
    fd, tmp = tempfile.mkstemp(prefix=".loaded.", dir=args.zarr)
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(f"{name}\n" for name in files))
    os.replace(tmp, index)
    print(f"loaded {len(files)} dataset(s) into {args.zarr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
