"""bench/cold.py reads the build's own output: each mkosi run (tools tree, then base)
with its seconds and its steps' start times, as builder.image.mkosi prints them."""

from __future__ import annotations

import importlib.util

from tests.paths import REPO_ROOT

# The shape of a real cold build's stderr (bench run at 03:06 on this machine).
OUTPUT = """\
/var/tmp/c/uvboot/bin/uv run --frozen --no-sync aurora-image build --spec hosts/aurora.yml
  [   3.3s] ‣  Installing Debian
  [  22.5s] ‣  /var/tmp/c/tools/.e79c86f544db73b8.partial/tools size is 218.1M.
mkosi build: done in 22.6 s
aurora-image: fetched 435 of the Debian lock's .debs
  [   1.0s] ‣  Installing Debian
  [  44.8s] ‣  Running postinstall script /var/tmp/c/mkosi.postinst.chroot…
  [  70.5s] ‣  Generating disk image
mkosi build: done in 94.2 s
aurora-image: base built by mkosi; config layer made in 4.3 s
"""


def _cold():
    spec = importlib.util.spec_from_file_location("bench_cold", REPO_ROOT / "bench" / "cold.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_mkosi_run_with_its_steps() -> None:
    runs = _cold().mkosi_runs(OUTPUT)
    assert [r["seconds"] for r in runs] == [22.6, 94.2]
    assert runs[0]["steps"][0] == (3.3, "Installing Debian")
    assert [at for at, _ in runs[1]["steps"]] == [1.0, 44.8, 70.5]
    assert runs[1]["steps"][2][1] == "Generating disk image"
