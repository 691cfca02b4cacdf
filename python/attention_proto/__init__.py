"""attention_proto: attention-kernel prototypes for Apple Silicon GPUs, written in MSL.

Every kernel runs through one of two backends: ``metal`` (an Apple GPU, through metal-cpp) or ``host``
(the same MSL on the CPU, for numerics and CI on any machine). Timings from the host backend are CPU
timings and never stand for an Apple GPU.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._core import (
    ArchiveMissError,
    AttentionProtoError,
    BackendUnavailableError,
    DeadlockError,
    DispatchError,
    OutOfBoundsError,
    ResourceLimitError,
    ShaderCompileError,
)
from ._core import DeviceInfo, LaunchInfo, PipelineInfo
from .kernel import DispatchTiming, FunctionTable, Kernel, StitchingGraph
from .memory import aligned, empty, in_package_memory, is_page_aligned, zeros
from .msl import kernels_in
from .protos.flash_attention import flash_attention, flash_attention_timed
from .protos.paged_attention import paged_attention, paged_attention_timed, paged_kv_write
from .protos.linear_attention import linear_attention, linear_attention_timed
from .protos.score_mod_attention import ScoreMod, score_mod_attention, score_mod_attention_timed, stitch
from .protos.attention_variants import Rotary, alibi_slopes, rope, rope_timed
from .protos import function_constants
from .runtime import backends, device_info, shader_dir

try:
    __version__ = version("attention-proto")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"

__all__ = [
    "ArchiveMissError",
    "AttentionProtoError",
    "BackendUnavailableError",
    "DeadlockError",
    "DeviceInfo",
    "DispatchError",
    "DispatchTiming",
    "Kernel",
    "LaunchInfo",
    "OutOfBoundsError",
    "PipelineInfo",
    "ResourceLimitError",
    "ShaderCompileError",
    "__version__",
    "aligned",
    "backends",
    "device_info",
    "empty",
    "flash_attention",
    "flash_attention_timed",
    "function_constants",
    "in_package_memory",
    "is_page_aligned",
    "kernels_in",
    "linear_attention",
    "linear_attention_timed",
    "paged_attention",
    "paged_attention_timed",
    "paged_kv_write",
    "shader_dir",
    "zeros",
    "FunctionTable",
    "ScoreMod",
    "StitchingGraph",
    "score_mod_attention",
    "score_mod_attention_timed",
    "stitch",
    "Rotary",
    "alibi_slopes",
    "rope",
    "rope_timed",
]
