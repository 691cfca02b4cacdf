"""Page-aligned numpy arrays that the Metal backend wraps without copying.

Metal can use a caller's memory directly as a GPU buffer (``newBufferWithBytesNoCopy``) only when the
memory is one VM region (what ``mmap`` or ``vm_allocate`` returns), starts on a page boundary and
covers whole pages; Apple Silicon pages are 16 KB. Arrays made here live in an anonymous mmap of their
own, start on a 16 KB boundary and own the padding up to the next 16 KB boundary, so the Metal backend
wraps them as they are. It copies any other memory into a GPU buffer (and back, for outputs) and counts
the copy in the timing's ``bytes_copied``.

On the host backend these arrays are ordinary arrays; nothing changes there.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, SupportsIndex, Union

import numpy as np

from . import _core

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


def _allocate(shape: ShapeLike, dtype: Any) -> np.ndarray:
    dims = _shape(shape)
    dt = np.dtype(dtype)
    nbytes = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    raw = _core.allocate(nbytes)  # zero-filled pages of one mmap region, freed with the last view
    return raw[:nbytes].view(dt).reshape(dims)


def empty(shape: ShapeLike, dtype: Any = np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array in memory of its own (an mmap region), starting on a 16 KB
    boundary and padded to whole pages. ``dtype`` is anything numpy accepts, including
    ``ml_dtypes.bfloat16``. (The pages come zero-filled from the OS; do not rely on it.)"""
    return _allocate(shape, dtype)


def zeros(shape: ShapeLike, dtype: Any = np.float32) -> np.ndarray:
    """Like :func:`empty`, filled with zeros."""
    return _allocate(shape, dtype)


def aligned(array: np.ndarray) -> np.ndarray:
    """``array`` itself when the Metal backend can wrap it without a copy (C-contiguous, page-aligned,
    in package memory), else a copy of it in package memory with the same shape, dtype and values."""
    array = np.asarray(array)
    if is_page_aligned(array) and in_package_memory(array):
        return array
    out = empty(array.shape, array.dtype)
    np.copyto(out, array)
    return out


def is_page_aligned(array: np.ndarray) -> bool:
    """True when ``array`` is C-contiguous and its data starts on a 16 KB boundary."""
    return bool(array.flags.c_contiguous) and array.ctypes.data % PAGE_SIZE == 0


def in_package_memory(array: np.ndarray) -> bool:
    """True when every byte of ``array`` lies in one region allocated by :func:`empty` / :func:`zeros`:
    the memory the Metal backend wraps without a copy (when the array also starts on a page)."""
    return bool(_core.in_package_memory(np.asarray(array)))
