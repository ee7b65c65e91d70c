"""builder.retry: polling with a deadline that says what it waited for and why."""

from __future__ import annotations

import time

import pytest

from builder.retry import RetryTimeout, retry


def test_retry_returns_first_truthy_value() -> None:
    results = iter([None, 0, "ready"])
    assert retry(lambda: next(results), timeout=5, interval=0, what="x") == "ready"


def test_retry_timeout_names_what_and_last_error() -> None:
    calls = 0

    def boom() -> bool:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError(f"attempt {calls}")

    with pytest.raises(RetryTimeout) as info:
        retry(boom, timeout=0.2, interval=0.05, what="the frobnicator")
    err = info.value
    assert isinstance(err, TimeoutError)
    assert "the frobnicator" in str(err)
    assert "ConnectionRefusedError" in str(err)
    assert f"attempt {calls}" in str(err)  # the *last* error, not the first
    assert err.attempts == calls >= 2


def test_retry_tries_once_even_with_zero_timeout() -> None:
    assert retry(lambda: True, timeout=0, what="x") is True
    with pytest.raises(RetryTimeout, match=r"\(1 attempts\)"):
        retry(lambda: False, timeout=0, what="x")


def test_retry_propagates_exceptions_outside_retry_on() -> None:
    start = time.monotonic()
    with pytest.raises(KeyError):
        retry(lambda: {}["x"], timeout=10, what="x", retry_on=(OSError,))
    assert time.monotonic() - start < 1
