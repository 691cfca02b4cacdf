"""Shared fixtures: the backends to run on and fresh random inputs."""
from __future__ import annotations

import numpy as np
import pytest

import attention_proto as ap


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
    """A generator seeded from the test's name: fresh values per test, reproducible per test."""
    return np.random.default_rng(abs(hash(request.node.nodeid)) % (2**32))
