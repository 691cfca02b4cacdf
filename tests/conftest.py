"""Shared fixtures: the backends to run on and fresh random inputs."""
from __future__ import annotations

import os
import secrets
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

import attention_proto as ap
from attention_proto import benches

# Fresh inputs every session; APROTO_TEST_SEED=<n> replays a session (the header line prints it).
SESSION_SEED = int(os.environ.get("APROTO_TEST_SEED") or secrets.randbits(32))


def pytest_report_header() -> str:
    return f"attention_proto: backends {ap.backends()}, random inputs from APROTO_TEST_SEED={SESSION_SEED}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--aproto-backend", default=None, metavar="NAME",
                     help="run only the backend-parametrised tests, on this backend (what `attention-proto lab` "
                          "runs as its numerics stage)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`backend`: every backend available here (host everywhere; metal too on a Mac), or the one asked for."""
    if "backend" in metafunc.fixturenames:
        only = metafunc.config.getoption("--aproto-backend")
        metafunc.parametrize("backend", [only] if only else ap.backends())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--aproto-backend"):
        keep = [item for item in items if "backend" in getattr(item, "fixturenames", ())]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


@pytest.fixture
def host_only() -> str:
    """The host backend, for tests of its own emulation machinery (deadlock reports, checked mode)."""
    return "host"


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator for this test: fresh per session, replayable with the session's APROTO_TEST_SEED."""
    return np.random.default_rng([SESSION_SEED, zlib.crc32(request.node.nodeid.encode())])


def poisoned(shape: tuple[int, ...], dtype: object, memory: str = "package") -> np.ndarray:
    """An array full of NaN, for outputs a test checks were written everywhere: in package memory (Metal
    writes into it directly), a plain numpy array (Metal copies it), or a plain array one element off its
    allocation's start (not 16-byte aligned). Test modules import it (`from conftest import poisoned`)."""
    if memory == "package":
        a = ap.empty(shape, dtype)
    elif memory == "plain":
        a = np.empty(shape, dtype)
    else:
        a = np.empty(int(np.prod(shape)) + 1, dtype)[1:].reshape(shape)
    a[...] = np.nan
    return a


# A tiny bench with a SPEC, for tests of the CLI and the lab: one derived-size table, one question it
# answers and one it never does.
FAKE_BENCH = textwrap.dedent("""
    from attention_proto import kb
    from attention_proto.benchspec import BenchSpec, Question, TableSpec, run_bench

    def options(p):
        p.add_argument("--tile", type=int, default=8, help="the tile to try (a fake option)")

    def findings(ctx, tables):
        row = tables["sizes"].rows[-1]
        return [ctx.finding("biggest", "memory", "tile", row["bytes"], "B", {"tile": ctx.args.tile},
                            f"a tile of {ctx.args.tile} takes {row['bytes']} bytes", {"table": ctx.table_path("sizes")})]

    SPEC = BenchSpec(
        proto="fake_proto", description="A fake bench: tile sizes.",
        questions=(Question("biggest", "How many bytes does the tile take?", ("memory",), False),
                   Question("speed", "How fast is it?", ("performance",), True)),
        tables=(TableSpec("sizes", "tile bytes", lambda ctx: [{"tile": ctx.args.tile, "mode": ctx.mode}],
                          lambda ctx, c: {"bytes": 4 * c["tile"] ** 2}, timed=False),),
        findings=findings, options=options, examples=("--quick --tile 16",))

    def main(argv):
        return run_bench(SPEC, argv)
""")


@pytest.fixture
def fake_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A bench module ``fake_proto`` with a SPEC on the benches package path."""
    directory = tmp_path / "benches_extra"
    directory.mkdir()
    (directory / "fake_proto.py").write_text(FAKE_BENCH)
    monkeypatch.setattr(benches, "__path__", [*benches.__path__, str(directory)])
    monkeypatch.delitem(sys.modules, "attention_proto.benches.fake_proto", raising=False)
    yield
    sys.modules.pop("attention_proto.benches.fake_proto", None)
