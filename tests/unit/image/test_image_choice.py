"""The smoke and release suites test the image this run built and attested: a
newer, untested image in the store changes nothing (it once made the release
suite error)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.errors import UnknownTag
from builder.image.inputs import REPO
from builder.image.store import newest_image, write_attestation
from tests.fake_images import make_image
from tests.image_choice import IMAGE_ENV, SINCE_ENV, attestation_problem, chosen_image

BUILT = "2026.11-aaaa"  # what this run's `make image` built
NEWER = "2026.11-ffff"  # built later by someone else, never tested


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    monkeypatch.setenv("AURORA_IMAGES", str(root))
    now = time.time()
    for tag, age in ((BUILT, 600), (NEWER, 0)):
        path = make_image(root, tag, built_at=now - age)
        os.utime(path / "manifest.json", (now - age, now - age))
    assert newest_image(root) == root / NEWER  # the trap: "the newest" is the untested one
    return root


def attest(image: Path, started: float) -> None:
    tests = {"tests/vm/test_smoke.py::test_boots": "passed"}
    write_attestation(image, passed=True, tests=tests, started=started, finished=started + 60)


def test_the_tag_make_image_recorded_is_tested_not_the_newest(store: Path, tmp_path: Path) -> None:
    last_tag = tmp_path / "last-tag"
    last_tag.write_text(f"{BUILT}\n")
    assert chosen_image({}, last_tag) == store / BUILT
    assert chosen_image({IMAGE_ENV: BUILT}, tmp_path / "absent") == store / BUILT
    assert chosen_image({IMAGE_ENV: str(store / BUILT)}, last_tag) == store / BUILT


def test_no_recorded_tag_is_an_error_not_the_newest(store: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownTag, match=r"no image to test: set AURORA_IMAGE=.*make image"):
        chosen_image({}, tmp_path / "absent")


def test_release_suite_refuses_an_image_this_run_did_not_attest(store: Path) -> None:
    image = store / BUILT
    problem = attestation_problem(image, {})
    assert problem and "has no passing smoke attestation" in problem
    run_started = time.time()
    attest(image, started=run_started - 3600)  # an earlier run's smoke suite
    problem = attestation_problem(image, {SINCE_ENV: str(int(run_started))})
    assert problem and "before this run" in problem
    assert attestation_problem(image, {}) is None  # by hand, any passing attestation does
    attest(image, started=run_started + 1)
    assert attestation_problem(image, {SINCE_ENV: str(int(run_started))}) is None


FAKE_RUN = """\
#!{python}
# Stands in for `uv run`: `aurora-image build` records a tag as the real one does;
# `pytest` records which image the suites' own chooser resolves in this env.
import json, os, sys
sys.path.insert(0, {repo!r})
args = sys.argv[1:]
if args[:2] == ["aurora-image", "build"]:
    tag_file = args[args.index("--tag-file") + 1]
    os.makedirs(os.path.dirname(tag_file), exist_ok=True)
    open(tag_file, "w").write({built!r} + "\\n")
elif args[0] == "pytest":
    from tests.image_choice import chosen_image
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps({{"suites": args[1:-1], "image": str(chosen_image()),
                              "since": os.environ.get("AURORA_ATTESTED_SINCE")}}) + "\\n")
"""


def test_make_test_hands_both_suites_the_image_make_image_built(
    store: Path, tmp_path: Path
) -> None:
    fake = tmp_path / "run"
    fake.write_text(FAKE_RUN.format(python=sys.executable, repo=str(REPO), built=BUILT))
    fake.chmod(0o755)
    log = tmp_path / "suites.jsonl"
    last_tag = tmp_path / "build" / "last-tag"
    done = subprocess.run(
        ["make", "-s", "-C", str(REPO), "-o", "setup", "test",
         f"RUN={fake}", f"LAST_TAG={last_tag}"],
        env={**os.environ, "FAKE_LOG": str(log)}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert last_tag.read_text() == f"{BUILT}\n"
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["suites"] for r in runs] == [
        ["tests/unit", "tests/container", "tests/vm"],
        ["tests/release"],
    ]
    assert {r["image"] for r in runs} == {str(store / BUILT)}
    assert runs[0]["since"] is None and runs[1]["since"] is not None
    assert f"testing image {BUILT}" in done.stdout
