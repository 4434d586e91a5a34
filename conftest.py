"""Test tiers: unit (no root), integration (root, netns, servers), vm (QEMU).

With SSI_REQUIRE_ALL=1 (as `make test` and CI set it) a skipped test is a
failure: nothing may pass CI by quietly not running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

REQUIRE_ALL = os.environ.get("SSI_REQUIRE_ALL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under SSI_REQUIRE_ALL=1: {reason}"


@pytest.fixture
def ssi_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """What the admin commands log at INFO (-v): the "ssi" logger does not propagate
    to the root logger caplog listens on, so its handler is added to it directly."""
    logger = logging.getLogger("ssi")
    logger.addHandler(caplog.handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield caplog
    logger.setLevel(old)
    logger.removeHandler(caplog.handler)
