"""A pytest plugin for `attention-proto lab` (loaded with ``-p attention_proto._lab_pytest``): one line per
collected suite and finished test on stdout, which the lab reads to advance its progress bar."""
from __future__ import annotations

from typing import Any

PREFIX = "@@aproto-lab"


def pytest_collection_finish(session: Any) -> None:
    print(f"\n{PREFIX} collected {len(session.items)}", flush=True)


def pytest_runtest_logreport(report: Any) -> None:
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = "skipped" if report.skipped else "failed" if report.failed else "passed"
        print(f"\n{PREFIX} {outcome} {report.nodeid}", flush=True)
