"""What an MSL source defines, read without compiling it."""
from __future__ import annotations

import os
from typing import Sequence

from . import _core


def kernels_in(source: str, *, path: str | os.PathLike[str] | None = None,
               include_dirs: Sequence[str | os.PathLike[str]] = ()) -> list[str]:
    """The kernel names `source` publishes, in source order: what ``Kernel(source, name)`` accepts.

    Template instances appear under their ``[[host_name("...")]]``; the preprocessor runs first (with
    Metal's predefined macros), so instances made by macros such as MLX's ``instantiate_kernel`` count
    and kernels in inactive ``#if`` branches do not. Quoted includes are resolved next to `path`, then
    in `include_dirs`. Raises ``ShaderCompileError`` for a source the front end cannot read.
    """
    if not isinstance(source, str):
        raise TypeError("source must be the MSL text (a str)")
    return list(_core.kernel_names(source, str(path) if path is not None else "", [str(d) for d in include_dirs]))


def kernel_parameters(source: str, function: str, *, path: str | os.PathLike[str] | None = None,
                      include_dirs: Sequence[str | os.PathLike[str]] = ()) -> list[dict[str, object]]:
    """The parameters of kernel `function` in declaration order: ``type`` (address spaces removed,
    template arguments in), ``name``, ``attr`` ("buffer", "threadgroup" or a position attribute),
    ``arg`` (its index, numbered as Metal numbers parameters that have none), ``address_space`` as
    declared, ``condition`` (the function constant under which it exists, or "") and ``line``."""
    return list(_core.kernel_parameters(source, str(path) if path is not None else "",
                                        [str(d) for d in include_dirs], function))
