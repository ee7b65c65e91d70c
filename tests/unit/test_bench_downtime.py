"""bench/downtime.py: which dashboard answer ends an outage, and the bench's own store.

The bench times a release from Nova's rebuild request to the new image's first
answer; a late answer of the old image, or of a poll sent before the outage,
must never count as the new one. Its stand-in attestations go into copies in
the bench's store, never onto the project's image.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

from builder.image.store import ATTESTATION, DISK, is_attested, read_attestation
from builder.release.convert import QCOW
from tests.fake_images import make_image
from tests.paths import REPO_ROOT


def _downtime():
    spec = importlib.util.spec_from_file_location(
        "bench_downtime", REPO_ROOT / "bench" / "downtime.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_downtime", module)
    spec.loader.exec_module(module)
    return module


downtime = _downtime()
Poll = downtime.Poll


def test_outage_ends_at_the_first_answer_sent_after_the_service_went_down() -> None:
    polls = [
        Poll(0.0, 0.1, True, "old"),
        Poll(9.5, 9.6, True, "old, after the rebuild request at 9.0"),
        Poll(10.0, 10.1, False, "refused"),  # powered off
        Poll(10.0, 31.0, True, "sent before the outage was seen: not the new image"),
        Poll(10.5, 30.4, False, "hung on the booting guest"),
        Poll(30.0, 30.2, True, "new"),
        Poll(30.5, 30.6, True, "new"),
    ]
    assert downtime.outage(polls, since=9.0) == (9.6, 30.2)


def test_no_outage_without_a_failure_or_a_recovery() -> None:
    up = [Poll(1.0, 1.1, True, "old"), Poll(1.5, 1.6, True, "old")]
    assert downtime.outage(up, since=0.0) is None
    down = [*up, Poll(2.0, 2.1, False, "refused"), Poll(2.5, 2.6, False, "refused")]
    assert downtime.outage(down, since=0.0) is None


def test_first_boot_has_no_last_answer() -> None:
    polls = [Poll(0.0, 0.1, False, "refused"), Poll(5.0, 5.2, True, "new")]
    last, first = downtime.outage(polls, since=0.0)
    assert math.isnan(last) and first == 5.2


def test_stand_in_links_the_image_and_attests_only_the_copy(tmp_path: Path) -> None:
    original = make_image(tmp_path / "images", "2026.11-aaaaaaaaaaaa", built_at=1.0)
    (original / ATTESTATION).write_text('{"kept": true}\n')
    (original / QCOW).write_bytes(b"cached conversion")
    store = tmp_path / "bench"

    copy = downtime.stand_in(original, store)

    assert copy == store / original.name
    assert (copy / DISK).stat().st_ino == (original / DISK).stat().st_ino
    assert not (copy / QCOW).exists()
    assert is_attested(copy, verify=True)
    assert "stand-in" in next(iter(read_attestation(copy).tests))
    assert (original / ATTESTATION).read_text() == '{"kept": true}\n'
    assert downtime.stand_in(original, store) == copy  # a second run reuses the copy


def test_promotes_skip_the_soak_and_the_rollback_names_a(tmp_path: Path) -> None:
    """The soak (30 min by default) comes after the dashboard is back: timing it
    would hold the machine an hour for no figure; rollback has no soak to skip."""
    a, b = tmp_path / "2026.11-aaaa", tmp_path / "2026.11-bbbb"
    steps = dict(downtime.steps(a, b))
    assert list(steps) == ["first_promote", "promote", "rollback"]
    assert steps["first_promote"] == ["promote", str(a), "--soak", "0"]
    assert steps["promote"] == ["promote", str(b), "--soak", "0"]
    assert steps["rollback"] == ["rollback", a.name]


def test_phases_split_the_gap_into_novas_and_the_guests() -> None:
    nova = {"power_off": 18.0, "fetch": 1.5, "spawn": 16.5}
    split = downtime.phases(112.0, nova)
    assert split == {**nova, "guest_to_dashboard": 76.0}
    assert math.isclose(sum(split.values()), 112.0)
