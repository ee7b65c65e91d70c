"""builder.vm.accel: KVM only when a probe boot proves it, an override, a cached answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.vm import accel


@pytest.fixture
def fresh_accel(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    accel.reset_cache()
    monkeypatch.delenv(accel.ENV_VAR, raising=False)
    yield
    accel.reset_cache()


def _no_probe(*_: object, **__: object) -> bool:
    raise AssertionError("KVM probe must not run")


@pytest.mark.usefixtures("fresh_accel")
@pytest.mark.parametrize("value", ["kvm", "tcg", " TCG "])
def test_env_forces_accel_without_probe(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(accel.ENV_VAR, value)
    monkeypatch.setattr(accel, "probe_kvm", _no_probe)
    assert accel.choose_accel(Path("k"), Path("i")) == value.strip().lower()


@pytest.mark.usefixtures("fresh_accel")
def test_env_rejects_unknown_accel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(accel.ENV_VAR, "hvf")
    with pytest.raises(ValueError, match="AURORA_ACCEL"):
        accel.choose_accel(Path("k"), Path("i"))


@pytest.mark.usefixtures("fresh_accel")
def test_probe_result_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def probe(kernel: Path, initrd: Path, timeout: float = 20.0) -> bool:
        calls.append(kernel)
        return True

    monkeypatch.setattr(accel, "kvm_device_usable", lambda: True)
    monkeypatch.setattr(accel, "probe_kvm", probe)
    assert accel.choose_accel(Path("k"), Path("i")) == "kvm"
    assert accel.choose_accel(Path("k"), Path("i")) == "kvm"
    assert len(calls) == 1


@pytest.mark.usefixtures("fresh_accel")
def test_no_kvm_device_means_tcg_without_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_device_usable", lambda: False)
    monkeypatch.setattr(accel, "probe_kvm", _no_probe)
    assert accel.choose_accel(Path("k"), Path("i")) == "tcg"


def test_accel_args() -> None:
    assert accel.accel_args("tcg") == ["-accel", "tcg,thread=multi", "-cpu", "max"]
    assert accel.accel_args("kvm") == ["-accel", "kvm", "-cpu", "host"]
    with pytest.raises(ValueError):
        accel.accel_args("xen")
