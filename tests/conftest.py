"""Shared fixtures: the backends to run on and fresh random inputs."""
from __future__ import annotations

import os
import secrets
import zlib

import numpy as np
import pytest

import attention_proto as ap

# Fresh inputs every session; APROTO_TEST_SEED=<n> replays a session (the header line prints it).
SESSION_SEED = int(os.environ.get("APROTO_TEST_SEED") or secrets.randbits(32))


def pytest_report_header() -> str:
    return f"attention_proto: backends {ap.backends()}, random inputs from APROTO_TEST_SEED={SESSION_SEED}"


@pytest.fixture(params=ap.backends())
def backend(request: pytest.FixtureRequest) -> str:
    """Every backend available here (host everywhere; metal too on a Mac)."""
    return request.param


@pytest.fixture
def host_only() -> str:
    """The host backend, for tests of its own emulation machinery (deadlock reports, checked mode)."""
    return "host"


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator for this test: fresh per session, replayable with the session's APROTO_TEST_SEED."""
    return np.random.default_rng([SESSION_SEED, zlib.crc32(request.node.nodeid.encode())])
