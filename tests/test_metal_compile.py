"""The Metal build compile-checked for macOS against Apple's metal-cpp headers (works on Linux; see metal_check).

A failure here is a real API misuse in what a Mac build compiles with APROTO_WITH_METAL (misspelt method,
wrong argument type): the same code would not build on a Mac. The tests skip, saying why, only when the
headers cannot be downloaded or no compiler is available.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from attention_proto import metal_check

SRC = Path(__file__).resolve().parents[1] / "src"  # the checkout's sources, also when the package is installed


def _run(paths=None) -> metal_check.CheckResult:
    result = metal_check.check_metal_sources(paths, src_root=SRC)
    if result.skipped:
        print(f"metal-cpp compile check skipped: {result.reason}")
        pytest.skip(result.reason)
    return result


def test_metal_build_compiles_for_macos_against_metal_cpp():
    result = _run()
    print(result.output)
    print(f"{result.reason} with {' '.join(result.compiler)} in {result.seconds:.1f} s")
    assert result.ok, result.output
    assert "warning:" not in result.output, result.output  # -Wall -Wextra, as a Mac build would warn
    checked = {p.resolve() for p in result.files}
    assert {p.name for p in checked} >= {"metal_backend.cpp", "binary_archive.cpp", "metal_cpp_impl.cpp",
                                         "registry.cpp"}
    # every file a Mac build compiles (all with APROTO_WITH_METAL) is checked, the bindings included
    everything = {p.resolve() for p in SRC.rglob("*.cpp")}
    assert everything == checked, f"not checked: {sorted(str(p) for p in everything - checked)}"


# Each case edits one line of a copy of a real source file; the check must fail and name the culprit.
MISUSES = {
    "misspelt-method": ("metal_backend.cpp", "->dispatchThreadgroups(", "->dispatchThreadgroupz(",
                        "dispatchThreadgroupz"),
    "wrong-argument-type": ("metal_backend.cpp", "enc->setBuffer(runs_[slot.run].buffer.get(), slot.offset, i)",
                            "enc->setBuffer(runs_[slot.run].buffer, slot.offset, i)", "setBuffer"),
}


@pytest.fixture(scope="module")
def misuse_results(tmp_path_factory) -> dict[str, metal_check.FileResult]:
    """Every misuse compiled in one check, so the compiles run in parallel."""
    paths = {}
    for case, (name, old, new, _) in MISUSES.items():
        text = (SRC / "metal" / name).read_text()
        assert old in text, f"{name} no longer contains {old!r}; update this test"
        bad = tmp_path_factory.mktemp(case) / name
        bad.write_text(text.replace(old, new, 1))
        paths[case] = bad
    result = _run(list(paths.values()))
    by_path = {r.path: r for r in result.per_file}
    return {case: by_path[path] for case, path in paths.items()}


@pytest.mark.parametrize("case", MISUSES)
def test_check_fails_on_api_misuse(misuse_results, case):
    result = misuse_results[case]
    assert not result.ok, f"the check accepted {MISUSES[case][2]!r}:\n{result.output}"
    assert not result.cached
    assert MISUSES[case][3] in result.output
    assert "error" in result.output


def test_result_cache_notices_a_changed_input(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    header = tmp_path / "a b.hpp"  # a space, escaped in the depfile
    header.write_text("int a;\n")
    depfile = tmp_path / "x.d"
    depfile.write_text(f"x.o: {tmp_path}/x.cpp \\\n  {str(header).replace(' ', chr(92) + ' ')}\n")
    assert metal_check._depfile_inputs(depfile) == [f"{tmp_path}/x.cpp", str(header)]
    command = ["clang++", "-c", str(tmp_path / "x.cpp")]
    metal_check._store(command, depfile, "warning: kept\n", {})
    assert metal_check._cached(command, {}) == "warning: kept\n"
    header.write_text("int b;\n")
    assert metal_check._cached(command, {}) is None
