"""attention_proto.memory: page-aligned arrays the Metal backend wraps without copying."""
from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest

from attention_proto import memory

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16, np.int32, np.uint8]
SHAPES = [(), (1,), (7,), (33, 100), (2, 3, 777, 7), (0, 5)]


def _owned_bytes_after(array: np.ndarray) -> int:
    """Bytes of the underlying allocation from the array's first byte to its end."""
    base = array
    while isinstance(base.base, np.ndarray):
        base = base.base
    return base.ctypes.data + base.nbytes - array.ctypes.data


@pytest.mark.parametrize("make", [memory.empty, memory.zeros])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_pointer_aligned_and_padding_owned(make, shape, dtype):
    a = make(shape, dtype)
    assert a.shape == shape
    assert a.dtype == np.dtype(dtype)
    assert a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % memory.PAGE_SIZE == 0
    assert memory.is_page_aligned(a)
    # The whole pages the backend wraps belong to this array's own allocation.
    padded = max(memory.PAGE_SIZE, -(-a.nbytes // memory.PAGE_SIZE) * memory.PAGE_SIZE)
    assert _owned_bytes_after(a) >= padded


def test_int_shape_and_default_dtype():
    a = memory.empty(5000)
    assert a.shape == (5000,) and a.dtype == np.float32
    assert memory.empty(np.int64(3)).shape == (3,)


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="negative"):
        memory.empty((3, -1))
    with pytest.raises(TypeError):
        memory.empty((2.5, 3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_zeros_are_zeros(dtype):
    a = memory.zeros((3, 5, 129), dtype)
    assert not np.any(a.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("shape", [(1,), (7, 33), (2, 4, 100, 64)])
def test_aligned_copies_values(shape, dtype, rng):
    src = rng.standard_normal(shape).astype(dtype)
    out = memory.aligned(src)
    assert memory.is_page_aligned(out)
    assert out.dtype == src.dtype and out.shape == src.shape
    assert np.array_equal(out.view(np.uint8), np.ascontiguousarray(src).view(np.uint8))  # bit-exact


def test_aligned_makes_strided_input_contiguous():
    src = np.arange(6 * 40, dtype=np.float32).reshape(6, 40)[:, ::3]
    assert not src.flags.c_contiguous
    out = memory.aligned(src)
    assert memory.is_page_aligned(out)
    np.testing.assert_array_equal(out, src)


def test_aligned_returns_aligned_input_itself():
    a = memory.empty((10, 10))
    assert memory.aligned(a) is a


def test_is_page_aligned_rejects_offset_and_strided_views():
    a = memory.zeros(10000, np.float32)
    assert not memory.is_page_aligned(a[1:])
    assert not memory.is_page_aligned(a.reshape(100, 100)[:, ::2])


def test_package_memory_is_known_to_the_core():
    a = memory.empty((33, 100), np.float16)
    assert memory.in_package_memory(a) and memory.in_package_memory(a[3:7])
    assert not memory.in_package_memory(np.zeros((33, 100), np.float16))  # malloc'd by numpy
    copy = memory.aligned(np.arange(10.0))
    assert memory.in_package_memory(copy) and memory.is_page_aligned(copy)
    assert memory.aligned(copy) is copy


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the resident size from /proc (Linux)")
def test_regions_are_unmapped_when_the_last_view_goes():
    def resident_mb() -> float:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    before = resident_mb()
    for _ in range(100):
        a = memory.empty((8, 1024, 1024), np.uint8)  # 8 MB, touched
        a[...] = 1
        view = a[2:]
        del a
        assert view[0, 0, 0] == 1  # the view keeps the region alive
        del view
    assert resident_mb() - before < 200, "800 MB of regions were not unmapped"
