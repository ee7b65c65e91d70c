"""The release unit tests keep the evidence a failed cloud call needs.

keystoneauth swallows why version discovery failed: it logs the cause at DEBUG
("No version document at URL: <refused, reset, a stranger's answer>") and raises
only "Unable to find a version discovery document", which is all a
CloudUnreachable says. At DEBUG here, a failing test's captured log names the
cause, and the Nova double's request log shows whether the request reached it.
"""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _cloud_call_evidence(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="keystoneauth.discover")
    caplog.set_level(logging.DEBUG, logger="tests.release.nova")
