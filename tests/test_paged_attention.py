"""PagedAttention decode V1 / V2 and the cache writer against the FP64 reference.

Every case runs on a hostile cache: blocks handed out in random order (non-contiguous, non-monotonic
tables), spare blocks and the slots past each sequence's length filled with NaN, and table entries past
each sequence's blocks holding wild ids. Any of those reaching the result makes it NaN or reads out of
bounds, so every numerics test also checks that they never do. Outputs are poisoned with NaN before the
call (package arrays, plain and misaligned numpy arrays) and every element is checked.

Bounds. The kernels compute in float32 (scores, softmax, P V) and round the output to its dtype once,
so the error is that rounding plus float32 sums: relative Frobenius error 1e-5 (float32), 1e-3 (float16,
unit roundoff 2^-11 = 4.9e-4) and 8e-3 (bfloat16, 2^-8 = 3.9e-3); and MLX's element-wise bound
max(|o - r| - atol |r|) <= atol with atol 1e-5, 1e-3 and 8e-3, about 2u of headroom per element.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import attention_proto as ap
from attention_proto import _core, reference
from attention_proto.protos.paged_attention import (
    HEAD_DIMS, choose_partition_size, kv_cache, max_v1_context, paged_attention_timed, paged_kv_write,
    random_block_tables, threadgroup_bytes, to_vllm_layout,
)
from conftest import poisoned

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
TOLERANCE = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}
ATOL = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}
VARIANTS = {"v1": 0, "v2": 32}  # partition_size; 32 is a multiple of every block size


def make_case(rng: np.random.Generator, dtype: str, seq_lens: list[int], q_heads: int, kv_heads: int,
              head_dim: int, block_size: int, *, q_gain: float = 1.0) -> dict[str, np.ndarray]:
    """q, a NaN-poisoned blocked cache holding random keys and values in the used slots only, shuffled
    block tables with wild ids past each sequence's blocks, and seq_lens."""
    t = DTYPES[dtype]
    lens = np.array(seq_lens, np.int32)
    tables, num_blocks = random_block_tables(rng, lens, block_size, max_blocks_per_seq=max(
        -(-n // block_size) for n in seq_lens) + 2, spare_blocks=3)
    unused = tables < 0
    tables[unused] = rng.choice([np.iinfo(np.int32).min, -1, num_blocks, np.iinfo(np.int32).max], unused.sum())
    shape = (num_blocks, kv_heads, block_size, head_dim)
    k_cache, v_cache = np.full(shape, np.nan, t), np.full(shape, np.nan, t)
    for row, n in zip(tables, lens):
        blocks = row[: -(-n // block_size)]
        for cache in (k_cache, v_cache):
            cache[blocks] = rng.standard_normal((len(blocks), *shape[1:])).astype(t)
            cache[blocks[-1], :, n - (len(blocks) - 1) * block_size:] = np.nan  # slots past the sequence
    q = (q_gain * rng.standard_normal((len(lens), q_heads, head_dim))).astype(t)
    return {"q": q, "k_cache": k_cache, "v_cache": v_cache, "block_tables": tables, "seq_lens": lens}


def assert_close(got: np.ndarray, expected: np.ndarray, dtype: str) -> None:
    got64 = got.astype(np.float64)
    assert not np.isnan(got64).any(), "NaN in the output: an unwritten element, or a poisoned slot was read"
    err = np.linalg.norm(got64 - expected) / np.linalg.norm(expected)
    assert err < TOLERANCE[dtype], f"relative error {err:.3g} over {TOLERANCE[dtype]} ({dtype})"
    excess = np.abs(got64 - expected) - ATOL[dtype] * np.abs(expected)
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess[worst] <= ATOL[dtype], f"element {worst}: got {got64[worst]:.6g}, expected {expected[worst]:.6g}"


def check(case: dict[str, np.ndarray], backend: str, partition_size: int | None, *, layout: str = "blocked",
          alibi_slopes: np.ndarray | None = None, scale: float | None = None, memory: str = "package") -> np.ndarray:
    """Runs the kernel into a poisoned output and compares every element with the FP64 reference."""
    q = case["q"]
    k_cache, v_cache = case["k_cache"], case["v_cache"]
    if layout == "vllm":
        k_cache, v_cache = to_vllm_layout(k_cache, v_cache)
    out = poisoned(q.shape, q.dtype, memory)
    got, timing = paged_attention_timed(q, k_cache, v_cache, case["block_tables"], case["seq_lens"], scale=scale,
                                        alibi_slopes=alibi_slopes, partition_size=partition_size, layout=layout,
                                        backend=backend, out=out)
    assert got is out
    if partition_size is not None:
        assert len(timing.launches) == (2 if partition_size else 1)
    expected = reference.paged_attention(q, k_cache, v_cache, case["block_tables"], case["seq_lens"], scale=scale,
                                         alibi_slopes=alibi_slopes, layout=layout)
    assert_close(out, expected, q.dtype.name)
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_every_head_dim_and_dtype(backend: str, rng: np.random.Generator, head_dim: int, dtype: str,
                                  variant: str) -> None:
    case = make_case(rng, dtype, [1, 37, 50], 4, 2, head_dim, 16)
    check(case, backend, VARIANTS[variant])


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_block_sizes(backend: str, rng: np.random.Generator, block_size: int, variant: str) -> None:
    case = make_case(rng, "float16", [5, 33, 70], 2, 1, 64, block_size, q_gain=3.0)
    check(case, backend, VARIANTS[variant])


@pytest.mark.parametrize("layout", ["blocked", "vllm"])
@pytest.mark.parametrize("partition_size", [0, 64])
def test_lengths_at_partition_edges(backend: str, rng: np.random.Generator, partition_size: int, layout: str) -> None:
    # seq_len 1, off the block grid (63, 65), exactly on a partition boundary (64, 128), one partition
    # plus one token (65, 129), with partitions of 64 tokens and blocks of 16.
    case = make_case(rng, "float32", [1, 63, 64, 65, 128, 129], 2, 2, 80, 16, q_gain=3.0)
    check(case, backend, partition_size, layout=layout)


@pytest.mark.parametrize("partition_size", [16, 48, 512])
def test_partition_sizes(backend: str, rng: np.random.Generator, partition_size: int) -> None:
    # one block per partition (49 partitions at 777 tokens), a multiple of the block size that is no
    # power of two, and a partition longer than every sequence
    case = make_case(rng, "float32", [100, 777, 3], 1, 1, 128, 16, q_gain=3.0)
    check(case, backend, partition_size)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("q_heads, kv_heads", [(8, 2), (8, 1), (3, 3)])
def test_grouped_query_heads(backend: str, rng: np.random.Generator, q_heads: int, kv_heads: int, variant: str) -> None:
    case = make_case(rng, "float16", [19, 40], q_heads, kv_heads, 96, 8)
    check(case, backend, VARIANTS[variant])


@pytest.mark.parametrize("layout", ["blocked", "vllm"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_alibi_12_heads(backend: str, rng: np.random.Generator, variant: str, layout: str) -> None:
    # 12 heads: the slopes of 8 heads, then 4 interleaved ones (non-power-of-two ALiBi); GQA 12 / 4.
    slopes = reference.alibi_slopes(12).astype(np.float32)
    case = make_case(rng, "float16", [1, 45, 96], 12, 4, 64, 16)
    with_alibi = check(case, backend, VARIANTS[variant], layout=layout, alibi_slopes=slopes)
    without = check(case, backend, VARIANTS[variant], layout=layout)
    assert np.abs(with_alibi.astype(np.float32) - without.astype(np.float32)).max() > 0.05  # the bias matters


def test_custom_scale(backend: str, rng: np.random.Generator) -> None:
    case = make_case(rng, "float32", [30, 9], 2, 1, 112, 32)
    check(case, backend, 0, scale=0.3)
    check(case, backend, 32, scale=0.3)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_layouts_agree(backend: str, rng: np.random.Generator, dtype: str) -> None:
    # vLLM's layout (x = 16 / itemsize: 4 for float32, 8 for the halves) against the blocked one
    case = make_case(rng, dtype, [7, 100], 4, 4, 128, 16)
    for partition_size in (0, 32):
        blocked = check(case, backend, partition_size).astype(np.float64)
        vllm = check(case, backend, partition_size, layout="vllm").astype(np.float64)
        assert np.abs(blocked - vllm).max() <= 2 * ATOL[dtype] * (1 + np.abs(blocked).max())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_what_lies_past_a_sequence_never_reaches_the_result(backend: str, rng: np.random.Generator,
                                                            variant: str) -> None:
    # The same case with other garbage in the unused slots (inf, huge values) and unused table entries:
    # bit-identical output.
    case = make_case(rng, "float16", [3, 50], 2, 1, 64, 16)
    first = check(case, backend, VARIANTS[variant]).copy()
    for cache in (case["k_cache"], case["v_cache"]):
        cache[np.isnan(cache)] = np.float16(60000.0)
    case["block_tables"][case["block_tables"] == -1] = 7
    again = check(case, backend, VARIANTS[variant])
    assert np.array_equal(first.view(np.uint16), again.view(np.uint16))


@pytest.mark.parametrize("memory", ["plain", "offset"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_plain_and_misaligned_outputs(backend: str, rng: np.random.Generator, variant: str, memory: str) -> None:
    case = make_case(rng, "bfloat16", [21, 5], 2, 1, 64, 8)
    check(case, backend, VARIANTS[variant], memory=memory)


def test_v2_runs_what_v1_cannot_hold(backend: str, rng: np.random.Generator) -> None:
    case = make_case(rng, "float16", [max_v1_context(128, block_size=16) + 1], 1, 1, 128, 16)
    out = poisoned(case["q"].shape, np.float16)
    with pytest.raises(ap.ResourceLimitError, match=r"\[paged_attention\] V1 \(partition_size=0\) holds all scores of "
                                                    r"a sequence in threadgroup memory: 8049 tokens need 32800 bytes, "
                                                    r"over the limit of 32768 .*use V2"):
        paged_attention_timed(*case.values(), partition_size=0, backend=backend, out=out)
    assert np.isnan(out.astype(np.float32)).all()  # nothing ran
    check(case, backend, None)  # the rule picks V2


# ------------------------------------------------------------------------------------- cache writer


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("layout", ["blocked", "vllm"])
def test_cache_writer_round_trip(backend: str, rng: np.random.Generator, layout: str, dtype: str) -> None:
    # Two sequences' tokens, interleaved with padding tokens (slot -1), written into a NaN cache through
    # shuffled blocks; then paged attention over the cache equals dense attention over the tokens.
    t, head_dim, block_size, kv_heads = DTYPES[dtype], 64, 16, 2
    lens = np.array([45, 20], np.int32)
    tables, num_blocks = random_block_tables(rng, lens, block_size, spare_blocks=2)
    k_cache, v_cache = kv_cache(num_blocks, kv_heads, block_size, head_dim, t, layout)
    k_cache[...] = np.nan
    v_cache[...] = np.nan
    slots = [tables[s, j // block_size] * block_size + j % block_size for s, n in enumerate(lens) for j in range(n)]
    slots = np.array(slots + [-1] * 7, np.int32)
    order = rng.permutation(len(slots))
    k = rng.standard_normal((len(slots), kv_heads, head_dim)).astype(t)
    v = rng.standard_normal((len(slots), kv_heads, head_dim)).astype(t)
    timing = paged_kv_write(k[order], v[order], k_cache, v_cache, slots[order], layout=layout, backend=backend)
    assert timing.launches[0].function == f"paged_kv_write_{ {'float32': 'f32', 'float16': 'f16'}[dtype]}"
    gathered = reference.gather_kv(k_cache, v_cache, tables, lens, layout=layout)
    start = 0
    for (gk, gv), n in zip(gathered, lens):  # every written slot holds its token exactly
        assert np.array_equal(gk, k[start:start + n].transpose(1, 0, 2))
        assert np.array_equal(gv, v[start:start + n].transpose(1, 0, 2))
        start += n
    assert np.isnan(k_cache.astype(np.float32)).sum() == (num_blocks * block_size - lens.sum()) * kv_heads * head_dim
    q = rng.standard_normal((2, 4, head_dim)).astype(t)
    for partition_size in (0, 32):
        out, _ = paged_attention_timed(q, k_cache, v_cache, tables, lens, partition_size=partition_size, layout=layout,
                                       backend=backend)
        start = 0
        for s, n in enumerate(lens):
            dense = reference.attention(q[s][None, :, None], k[start:start + n].transpose(1, 0, 2)[None],
                                        v[start:start + n].transpose(1, 0, 2)[None])[0, :, 0]
            assert_close(out[s], dense, dtype)
            start += n


def test_cache_writer_errors(backend: str, rng: np.random.Generator) -> None:
    k_cache, v_cache = kv_cache(4, 2, 16, 64, np.float16)
    k = rng.standard_normal((3, 2, 64)).astype(np.float16)
    before = k_cache.copy()
    with pytest.raises(ValueError, match=r"\[paged_kv_write\] slot_mapping\[1\] = 64 must be -1 \(skip\) or a slot in "
                                         r"\[0, num_blocks x block_size = 64\)"):
        paged_kv_write(k, k, k_cache, v_cache, np.array([0, 64, 1], np.int32), backend=backend)
    with pytest.raises(ValueError, match=r"slot_mapping\[2\] = -2 must be -1"):
        paged_kv_write(k, k, k_cache, v_cache, np.array([0, 1, -2], np.int32), backend=backend)
    with pytest.raises(ValueError, match=r"slot_mapping writes slot 5 twice"):
        paged_kv_write(k, k, k_cache, v_cache, np.array([5, -1, 5], np.int32), backend=backend)
    assert np.array_equal(k_cache.view(np.uint16), before.view(np.uint16))  # nothing ran
    with pytest.raises(TypeError, match=r"\[paged_kv_write\] slot_mapping must be int32, got int64"):
        paged_kv_write(k, k, k_cache, v_cache, np.array([0, 1, 2]), backend=backend)
    with pytest.raises(TypeError, match=r"k_cache must have the dtype of k \(float16\), got float32"):
        paged_kv_write(k, k, k_cache.astype(np.float32), v_cache, np.array([0, 1, 2], np.int32), backend=backend)
    with pytest.raises(ValueError, match=r"k_cache has shape \(4, 2, 16, 64\), expected \[N, Hkv, BS, D\] with D = 32 "
                                         r"\(from k\)"):
        paged_kv_write(k[..., :32].copy(), k[..., :32].copy(), k_cache, v_cache, np.array([0, 1, 2], np.int32))
    with pytest.raises(ValueError, match=r"k_cache must not overlap v_cache"):
        paged_kv_write(k, k, k_cache, k_cache, np.array([0, 1, 2], np.int32))


# ------------------------------------------------------------------------------------ launches, memory


def test_timing_launches_and_threadgroup_memory(backend: str, rng: np.random.Generator) -> None:
    case = make_case(rng, "float16", [33, 300], 4, 2, 64, 16)
    _, v1 = paged_attention_timed(*case.values(), partition_size=0, backend=backend, repeat=3)
    assert v1.repeat == 3 and v1.seconds > 0 and v1.backend == backend
    (launch,) = v1.launches
    assert launch.function == "paged_attention_v1_f16" and tuple(launch.grid) == (4, 2, 1)
    assert tuple(launch.threadgroup) == (128, 1, 1)
    # 4 * (D + 2 x 4 reductions + max(scores, 4 x D partial outputs)): 300 tokens -> 304 scores (blocks of 16)
    assert launch.threadgroup_memory == {0: 4 * (64 + 8 + 304)}
    _, v2 = paged_attention_timed(*case.values(), partition_size=48, backend=backend)
    first, reduce = v2.launches
    assert first.function == "paged_attention_v2_f16" and tuple(first.grid) == (4, 2, 7)  # ceil(300 / 48) = 7
    assert first.threadgroup_memory == {0: 4 * (64 + 8 + 256)}  # 48 scores < 4 x 64 partial outputs
    assert reduce.function == "paged_attention_reduce_f16" and tuple(reduce.grid) == (4, 2, 1)
    assert reduce.threadgroup_memory == {0: 4 * (8 + 8)}  # 7 weights, rounded up to 8
    assert "PARTITION_SIZE=48u" in first.key and first.pipeline.key == first.key


def test_v1_capacity_per_head_dim() -> None:
    # 32768 bytes = 8192 floats, less D + 8 for q and the reductions, rounded down to whole blocks
    assert threadgroup_bytes(8048, 128) == 4 * (128 + 8 + 8048) == 32736
    assert [max_v1_context(d) for d in (64, 128, 256)] == [8112, 8048, 7920]
    assert max_v1_context(128, block_size=32) == 8032 and max_v1_context(128, block_size=8) == 8056
    assert {max_v1_context(80, dtype) for dtype in DTYPES} == {8096}  # scores are float for every dtype
    assert threadgroup_bytes(100, 64, partition_size=512) == 4 * (64 + 8 + 512)


def test_partition_rule(backend: str, rng: np.random.Generator) -> None:
    assert choose_partition_size(512, 1, 8, 128, backend=backend) == 0  # one partition: V1
    assert choose_partition_size(2000, 1, 8, 128, backend=backend) == 512  # few threadgroups: V2
    assert choose_partition_size(2000, 64, 16, 128, backend=backend) == 0  # 1024 threadgroups: V1
    assert choose_partition_size(9000, 64, 16, 128, backend=backend) == 512  # V1 does not fit
    case = make_case(rng, "float16", [600, 3], 2, 1, 64, 16)
    _, timing = paged_attention_timed(*case.values(), backend=backend)
    assert [launch.function for launch in timing.launches] == ["paged_attention_v2_f16", "paged_attention_reduce_f16"]


# ------------------------------------------------------------------------------------------- errors


@pytest.fixture
def case(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return make_case(rng, "float32", [20, 40], 4, 2, 64, 16)


def call(case: dict[str, np.ndarray], **changes: object) -> np.ndarray:
    args = {**case, **changes}
    extra = {k: args.pop(k) for k in ("partition_size", "layout", "alibi_slopes", "out") if k in args}
    return paged_attention_timed(*args.values(), **extra)[0]


def test_block_table_errors_name_sequence_and_position(case: dict[str, np.ndarray]) -> None:
    num_blocks = case["k_cache"].shape[0]
    for bad in (-1, num_blocks):
        tables = case["block_tables"].copy()
        tables[1, 2] = bad
        out = poisoned(case["q"].shape, np.float32)
        with pytest.raises(ValueError, match=rf"\[paged_attention\] block_tables\[1, 2\] = {bad} \(sequence 1, position 2\) "
                                             rf"is not a block id in \[0, num_blocks = {num_blocks}\)"):
            call(case, block_tables=tables, out=out, partition_size=32)
        assert np.isnan(out).all()
    width = case["block_tables"].shape[1]
    for bad in (0, width * 16 + 1, -5):
        with pytest.raises(ValueError, match=rf"seq_lens\[1\] = {bad} must be in \[1, {width * 16}\] "
                                             rf"\(max_blocks_per_seq {width} x block_size 16\)"):
            call(case, seq_lens=np.array([20, bad], np.int32))


def test_shape_and_dtype_errors(case: dict[str, np.ndarray]) -> None:
    q, k_cache = case["q"], case["k_cache"]
    with pytest.raises(TypeError, match=r"\[paged_attention\] k_cache must have the dtype of q \(float32\), got float16"):
        call(case, k_cache=k_cache.astype(np.float16))
    with pytest.raises(TypeError, match=r"seq_lens must be int32, got int64"):
        call(case, seq_lens=case["seq_lens"].astype(np.int64))
    with pytest.raises(TypeError, match=r"block_tables must be int32, got float32"):
        call(case, block_tables=case["block_tables"].astype(np.float32))
    with pytest.raises(TypeError, match=r"alibi_slopes must be float32, got float64"):
        call(case, alibi_slopes=reference.alibi_slopes(4))
    with pytest.raises(ValueError, match=r"alibi_slopes has shape \(3,\), expected \[Hq\] with Hq = 4 \(from q\)"):
        call(case, alibi_slopes=np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"seq_lens has shape \(3,\), expected \[S\] with S = 2 \(from q\)"):
        call(case, seq_lens=np.array([1, 2, 3], np.int32))
    with pytest.raises(ValueError, match=r"k_cache has shape .* with D = 128 \(from q\)"):
        call(case, q=np.ones((2, 4, 128), np.float32))
    with pytest.raises(ValueError, match=r"v_cache has shape \(\d+, 2, 8, 64\), expected \[N, Hkv, BS, D\] with BS = 16"):
        call(case, v_cache=case["v_cache"][:, :, :8].copy())
    with pytest.raises(ValueError, match=r"q heads \(3\) must be a multiple of kv heads \(2\)"):
        call(case, q=q[:, :3].copy())
    with pytest.raises(ValueError, match=r"partition_size must be a multiple of 16 in 0..1048576, got 40"):
        call(case, partition_size=40)
    with pytest.raises(ValueError, match=r"layout must be one of 'blocked', 'vllm', got 'paged'"):
        call(case, layout="paged")
    with pytest.raises(ValueError, match=r"q must be C-contiguous"):
        call(case, q=np.ones((4, 2, 64), np.float32).transpose(1, 0, 2))
    with pytest.raises(ValueError, match=r"out must not overlap q"):
        call(case, out=q)


@pytest.mark.parametrize("head_dim, block_size, message", [
    (72, 16, r"head_dim 72 not supported \(supported: 64, 80, 96, 112, 128, 256\)"),
    (64, 24, r"block_size 24 not supported \(supported: 8, 16, 32\)")])
def test_unsupported_head_dim_and_block_size(rng: np.random.Generator, head_dim: int, block_size: int,
                                             message: str) -> None:
    q = np.ones((1, 1, head_dim), np.float32)
    cache = np.ones((2, 1, block_size, head_dim), np.float32)
    with pytest.raises(ValueError, match=message):
        paged_attention_timed(q, cache, cache, np.zeros((1, 2), np.int32), np.array([3], np.int32))


def test_vllm_layout_errors(case: dict[str, np.ndarray]) -> None:
    k_vllm, v_vllm = to_vllm_layout(case["k_cache"], case["v_cache"])  # float32: x = 4
    n, h, dx, bs, x = k_vllm.shape
    with pytest.raises(ValueError, match=r"k_cache_vllm must be \[num_blocks, Hkv, D / x, block_size, x\] with x = 16 / "
                                         r"itemsize = 4 \(vLLM's layout\)"):
        call(case, k_cache=np.ascontiguousarray(k_vllm.reshape(n, h, dx // 2, bs, 2 * x)), v_cache=v_vllm, layout="vllm")
    with pytest.raises(ValueError, match=r"v_cache_vllm has shape .*expected \[N, Hkv, D, BS\]"):
        call(case, k_cache=k_vllm, v_cache=case["v_cache"], layout="vllm")
    with pytest.raises(ValueError, match=r"k_cache_vllm must have 5 dimensions"):
        call(case, layout="vllm")


def test_the_entry_point_validates_on_its_own(backend: str, case: dict[str, np.ndarray]) -> None:
    """The binding trusts nothing from Python: each bad call is an error before any memory is read."""
    out = poisoned(case["q"].shape, np.float32)
    arrays = {**case, "out": out}
    parts = (2, 4, 2)
    scratch = {"tmp_out": np.empty((*parts, 64), np.float32), "max_logits": np.empty(parts, np.float32),
               "exp_sums": np.empty(parts, np.float32)}
    options = {"scale": 0.125, "partition_size": 32}
    _core.paged_attention({**arrays, **scratch}, options, backend)
    assert not np.isnan(out).any()
    with pytest.raises(ValueError, match=r"tmp_out is required by V2 \(partition_size > 0\)"):
        _core.paged_attention(arrays, options, backend)
    with pytest.raises(ValueError, match=r"tmp_out is only used by V2"):
        _core.paged_attention({**arrays, **scratch}, {**options, "partition_size": 0}, backend)
    with pytest.raises(ValueError, match=r"need ceil\(max\(seq_lens\) / partition_size\) = 2 partitions, got 1"):
        small = {"tmp_out": np.empty((2, 4, 1, 64), np.float32), "max_logits": np.empty((2, 4, 1), np.float32),
                 "exp_sums": np.empty((2, 4, 1), np.float32)}
        _core.paged_attention({**arrays, **small}, options, backend)
    with pytest.raises(ValueError, match=r"give k_cache and v_cache \(layout 'blocked'\) or k_cache_vllm and v_cache_vllm"):
        k_vllm = to_vllm_layout(case["k_cache"], case["v_cache"])[0]
        _core.paged_attention({**arrays, "k_cache_vllm": k_vllm}, {**options, "partition_size": 0}, backend)
    with pytest.raises(TypeError, match=r"option 'scale' is required"):
        _core.paged_attention(arrays, {"partition_size": 0}, backend)


# -------------------------------------------------------------------------------------------- bench


def test_bench_smoke(host_only: str, tmp_path) -> None:
    """The quick bench on a tiny problem: tables, the crossover plot, findings labelled as CPU results."""
    from attention_proto import kb
    from attention_proto.benches import paged_attention as pa_bench

    findings = tmp_path / "findings.jsonl"
    args = ["--quick", "--backend", host_only, "--findings", str(findings), "--samples", "1", "--head-dim", "64", "--heads", "2", "--context", "64", "--contexts", "32", "96"]
    assert pa_bench.main(args) == 0
    out = tmp_path / "paged_attention"
    for name in ("v1_capacity.json", "crossover.json", "crossover.png", "batch.json", "partitions.json",
                 "block_sizes.json", "paging.json", "layouts.json", "numerics.json"):
        assert (out / name).is_file(), name
    loaded = kb.load(findings)
    assert {f.question for f in loaded} == {q.id for q in pa_bench.SPEC.questions}
    assert len(loaded) == len(pa_bench.SPEC.questions)  # one finding per question
    for f in loaded:
        assert f.device["backend"] == "host"
        if f.kind == "performance":
            assert f.claim.startswith("CPU result"), f.claim
