"""The Metal backend compile-checked against Apple's metal-cpp headers (works on Linux; see metal_check).

A failure here is a real API misuse in src/metal/ (misspelt method, wrong argument type): the same code
would not build on a Mac. The tests skip, saying why, only when the headers cannot be downloaded or no
clang is available.
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


def test_metal_backend_compiles_against_metal_cpp():
    result = _run()
    print(result.output)
    print(f"{result.reason} with {' '.join(result.compiler)} in {result.seconds:.1f} s")
    assert result.ok, result.output
    assert {p.name for p in result.files} >= {"metal_backend.cpp", "binary_archive.cpp", "metal_cpp_impl.cpp"}
    assert any(p.parent.name == "bindings" for p in result.files), "the Metal bindings are checked too"


# Each case edits one line of a copy of a real source file; the check must fail and name the culprit.
MISUSES = [
    pytest.param("metal_backend.cpp", "->dispatchThreadgroups(", "->dispatchThreadgroupz(", "dispatchThreadgroupz",
                 id="misspelt-method"),
    pytest.param("metal_backend.cpp", "enc->setBuffer(bound[i].buffer.get(), 0, i)",
                 "enc->setBuffer(bound[i].buffer, 0, i)", "setBuffer", id="wrong-argument-type"),
]


@pytest.mark.parametrize("name, old, new, expected", MISUSES)
def test_check_fails_on_api_misuse(tmp_path, name, old, new, expected):
    text = (SRC / "metal" / name).read_text()
    assert old in text, f"{name} no longer contains {old!r}; update this test"
    bad = tmp_path / name
    bad.write_text(text.replace(old, new, 1))
    result = _run([bad])
    assert not result.ok, f"the check accepted {new!r}:\n{result.output}"
    assert expected in result.output
    assert "error" in result.output
