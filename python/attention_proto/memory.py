"""Page-aligned numpy arrays that the Metal backend wraps without copying.

Metal can use a caller's memory directly as a GPU buffer (``newBufferWithBytesNoCopy``) only when the
memory starts on a page boundary and covers whole pages; Apple Silicon pages are 16 KB. An ordinary
numpy array rarely starts on one, so the backend copies it into a GPU buffer (and back, for outputs) and
counts the copy in the dispatch timing's ``bytes_copied``. Arrays made here start on a 16 KB boundary and
own the padding up to the next 16 KB boundary after their last byte, so the backend wraps them as they are.

On the host backend these arrays are ordinary arrays; nothing changes there.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, SupportsIndex, Union

import numpy as np

#: Alignment and length granule in bytes: the page size of Apple Silicon (a multiple of x86's 4 KB).
PAGE_SIZE = 16384

ShapeLike = Union[SupportsIndex, Sequence[SupportsIndex]]


def _shape(shape: ShapeLike) -> tuple[int, ...]:
    if hasattr(shape, "__index__"):  # a single int (Python or numpy)
        dims: tuple[int, ...] = (operator.index(shape),)
    else:
        dims = tuple(operator.index(d) for d in shape)  # TypeError for floats, like numpy
    if any(d < 0 for d in dims):
        raise ValueError(f"shape must not have negative dimensions, got {dims}")
    return dims


def _padded(nbytes: int) -> int:
    """``nbytes`` rounded up to whole pages (at least one page, so even an empty array has its own page)."""
    return max(PAGE_SIZE, -(-nbytes // PAGE_SIZE) * PAGE_SIZE)


def _allocate(shape: ShapeLike, dtype: Any, fill_zero: bool) -> np.ndarray:
    dims = _shape(shape)
    dt = np.dtype(dtype)
    nbytes = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    padded = _padded(nbytes)
    # One page more than needed, so a page boundary lies within the first page of the raw block.
    raw = (np.zeros if fill_zero else np.empty)(padded + PAGE_SIZE, dtype=np.uint8)
    offset = -raw.ctypes.data % PAGE_SIZE
    # The array's base is `raw`, so the whole block (padding included) lives as long as the array.
    return np.ndarray(dims, dtype=dt, buffer=raw, offset=offset)


def empty(shape: ShapeLike, dtype: Any = np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 16 KB boundary, padded to whole pages.

    ``dtype`` is anything numpy accepts, including ``ml_dtypes.bfloat16``.
    """
    return _allocate(shape, dtype, fill_zero=False)


def zeros(shape: ShapeLike, dtype: Any = np.float32) -> np.ndarray:
    """Like :func:`empty`, filled with zeros."""
    return _allocate(shape, dtype, fill_zero=True)


def aligned(array: np.ndarray) -> np.ndarray:
    """``array`` itself when it is already page-aligned and C-contiguous, else a page-aligned copy of it.

    The copy has the same shape, dtype and values. (An already aligned array is returned as is: its last
    page is mapped memory whatever follows the array, which is all the backend relies on.)
    """
    array = np.asarray(array)
    if is_page_aligned(array):
        return array
    out = empty(array.shape, array.dtype)
    np.copyto(out, array)
    return out


def is_page_aligned(array: np.ndarray) -> bool:
    """True when ``array`` is C-contiguous and its data starts on a 16 KB boundary (wrapped without a copy)."""
    return bool(array.flags.c_contiguous) and array.ctypes.data % PAGE_SIZE == 0
