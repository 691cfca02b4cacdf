// Flash attention forward: O = softmax(scale * Q K^T + mask) V in one pass over the keys
// (online softmax), never materialising the Nq x Nk score matrix.
//
// Tensors (C-contiguous): q, o [B, Hq, Nq, D]; k, v [B, Hkv, Nk, D]; lse [B, Hq, Nq] (float, natural log).
// GQA/MQA: query head h reads key/value head h / (Hq / Hkv).
// Causal masks are bottom-right aligned: query i sees keys j <= i + Nk - Nq. When Nq > Nk the first
// Nq - Nk query rows see no key at all; they output 0 and their logsumexp is -inf.
//
// Work split. One threadgroup owns BLOCK_Q query rows of one (batch, head); it runs BLOCK_Q / 8
// SIMD-groups and each SIMD-group owns 8 of those rows from the first key to the output store, so the
// softmax statistics never leave a SIMD-group and the only threadgroup barriers guard the shared K/V
// tiles. Per step of BLOCK_K keys:
//   S = Q K^T          8x8 simdgroup_matrix MMAs, float accumulation
//   m, l, P            online softmax in the exp2 domain on the S registers (thread_elements)
//   O = O * alpha + P V
//
// Where data lives, and why (M4: 32 KB threadgroup memory, 8x8 MMAs fed from registers):
//   Q tile   threadgroup, [BLOCK_Q][ROW]   staged once (edge rows zeroed), reread every step: keeping
//            D/8 Q fragments in registers as well as the D/8 output fragments would not fit D = 256.
//   K, V     threadgroup, [BLOCK_K][ROW]   each loaded once per step by the whole threadgroup and read
//            by every SIMD-group; separate tiles so both loads share one barrier pair.
//   S, P     registers: each lane holds 2 elements of every 8x8 fragment, all in one query row.
//   O        registers: D/8 float fragments per SIMD-group, rescaled in place.
//   m, l     registers: one float each per lane (the lane's query row), the same in the 4 lanes of a row.
// ROW = D + 16 bytes of padding: with rows exactly D*sizeof(T) apart (a multiple of 128 bytes for most
// D) the 8 rows of an 8x8 fragment load fall on the same threadgroup-memory banks; 16 bytes shift each
// row by 4 banks.
//
// Threadgroup memory is one dynamic buffer, [[threadgroup(0)]], whose length the host sets at dispatch
// (setThreadgroupMemoryLength:atIndex:0): Metal compiles the library before the function constants
// have values, so BLOCK_Q, BLOCK_K and HEAD_DIM cannot size a `threadgroup` array (nor any array). The
// buffer is carved, in this order, into
//   q_tile  BLOCK_Q rows of ROW    at byte 0
//   k_tile  BLOCK_K rows of ROW    at byte BLOCK_Q * ROW_BYTES
//   v_tile  BLOCK_K rows of ROW    at byte (BLOCK_Q + BLOCK_K) * ROW_BYTES
// with ROW_BYTES = D * sizeof(T) + 16, a multiple of 16 for every supported D (D % 8 == 0), so every
// tile starts 16-byte aligned and the total, (BLOCK_Q + 2 * BLOCK_K) * (D * sizeof(T) + 16), is the
// multiple of 16 Metal requires of a threadgroup-memory length. That total is
// attention_proto.flash_attention.threadgroup_bytes() and threadgroup_bytes() in
// src/protos/flash_attention.cpp, which dispatch exactly that many bytes at index 0.
//
// Layout switches (function constants 9..15; all false = the layout above, "separate"; the Python
// table LAYOUTS names the combinations the sweep measures):
//   KV_ALIAS   K and V share one tile of BLOCK_K rows (MLX): V is loaded while the softmax runs.
//   KV_DEVICE  full K/V blocks are read by simdgroup_load straight from device memory (MFA on Apple9);
//              the last, partial block is staged through one shared tile (rows past Nk must read 0).
//   Q_REGS     Q fragments are loaded once into registers (MFA for small D, D <= 128); the Q tile is
//              only staging, overlaid on the K/V tiles.
//   Q_SCALED   Q is multiplied by scale * log2(e) once at load (MLX) instead of every score.
//   FAST_EXP   fast::exp2 with finite sentinels instead of precise exp2 on -inf (MLX).
//   VEC16      16-byte loads into the tiles (K, V; Q unless Q_SCALED) and 2-element output stores.
//   P_FLOAT    P stays float32 for the P V product (V fragments converted; MLX) instead of T (MFA).
// Defines FA_SIZED_HEAD_DIM / FA_SIZED_BLOCK_K (the "library per variant" build) size the register
// arrays exactly and bound their loops at compile time instead of by the function constants.
// Threadgroup bytes per layout, with R = ROW_BYTES and kv = BLOCK_K if K and V share a tile (KV_ALIAS
// or KV_DEVICE), else 2 * BLOCK_K: Q_REGS ? max(BLOCK_Q, kv) * R : (BLOCK_Q + kv) * R.
//
// Register arrays have literal sizes for the same reason: MAX_HEAD_DIM / 8 output fragments and
// MAX_BLOCK_K / 8 score fragments. Every loop over them is bounded by D_FRAGS / K_FRAGS and marked for
// full unrolling, so after specialisation the elements past those counts are never touched (dead).
// Whether Apple's compiler does unroll once the constants are known, keeping the used fragments in
// registers rather than spilling a dynamically indexed array, is to be checked on an M4.
#include <metal_stdlib>
#include "attention_params.h"
#include "rope.h"
using namespace metal;

// Prototype 4 (src/protos/function_constants.cpp) builds this kernel three ways; the default is the
// function constants. APROTO_SPECIALISE_BY_DEFINES: the same values as literal defines, a library per
// variant, register arrays sized exactly (FA_SIZED_*). APROTO_RUNTIME_ARGS: no specialisation, the values
// read from the params `p` in scope (every helper takes it), register arrays at the maxima
// APROTO_MAX_HEAD_DIM / APROTO_MAX_BLOCK_K. The layout and variant switches stay function constants.
#if defined(APROTO_SPECIALISE_BY_DEFINES)
constant constexpr uint BLOCK_Q = APROTO_BLOCK_Q;
constant constexpr uint BLOCK_K = APROTO_BLOCK_K;
constant constexpr uint HEAD_DIM = APROTO_HEAD_DIM;
constant constexpr bool CAUSAL = APROTO_CAUSAL;
constant constexpr bool WRITE_LSE = APROTO_WRITE_LSE;
#ifndef FA_SIZED_HEAD_DIM
#define FA_SIZED_HEAD_DIM APROTO_HEAD_DIM
#define FA_SIZED_BLOCK_K APROTO_BLOCK_K
#endif
#elif defined(APROTO_RUNTIME_ARGS)
#define BLOCK_Q (p.block_q)
#define BLOCK_K (p.block_k)
#define HEAD_DIM (p.head_dim)
#define CAUSAL (p.causal != 0)
#define WRITE_LSE (p.write_lse != 0)
#else
constant uint BLOCK_Q   [[function_constant(0)]];  // query rows per threadgroup, multiple of 8
constant uint BLOCK_K   [[function_constant(1)]];  // keys per step, multiple of 8
constant uint HEAD_DIM  [[function_constant(2)]];  // D: 32, 64, 80, 96, 128 or 256
constant bool CAUSAL    [[function_constant(3)]];
constant bool WRITE_LSE [[function_constant(4)]];
#endif
// Variants (prototype 7), each off in the base kernel so it compiles to exactly what it was. Their
// arguments: alibi slopes (buffer 6) and FlashVariantParams (buffer 7, attention_params.h).
constant bool USE_ALIBI   [[function_constant(5)]];  // + slope_h * (j - (i + Nk - Nq)) on the scaled score
constant bool USE_SOFTCAP [[function_constant(6)]];  // score -> softcap * tanh(score / softcap), before bias, mask
constant bool USE_ROPE    [[function_constant(7)]];  // Q and K rotated (rope.h) as their tiles are loaded
constant bool ROPE_NEOX   [[function_constant(8)]];  // USE_ROPE: neox pairs, else gptj
constant bool KV_ALIAS  [[function_constant(9)]];  // layout switches: see the header comment
constant bool KV_DEVICE [[function_constant(10)]];
constant bool Q_REGS    [[function_constant(11)]];
constant bool Q_SCALED  [[function_constant(12)]];
constant bool FAST_EXP  [[function_constant(13)]];
constant bool VEC16     [[function_constant(14)]];
constant bool P_FLOAT   [[function_constant(15)]];

#if defined(APROTO_RUNTIME_ARGS)
#define SIMDGROUPS (BLOCK_Q / 8)
#define THREADS (SIMDGROUPS * 32)
#define D_FRAGS (HEAD_DIM / 8)
#define K_FRAGS (BLOCK_K / 8)
#else
constant uint SIMDGROUPS = BLOCK_Q / 8;      // one SIMD-group per 8 query rows
constant uint THREADS = SIMDGROUPS * 32;
constant uint D_FRAGS = HEAD_DIM / 8;        // 8x8 fragments across the head dimension
constant uint K_FRAGS = BLOCK_K / 8;         // 8x8 fragments across one step of keys
#endif
constant uint ROW_PAD_BYTES = 16;
constant bool SHARED_KV = KV_ALIAS || KV_DEVICE;  // one tile holds K, then V

// Literal maxima for the register arrays (array sizes must be compile-time constants in MSL; function
// constants are not). src/protos/flash_attention.cpp (supported_head_dims, kMaxBlockK, kMaxQRegsDim) and
// the Python API (HEAD_DIMS, MAX_BLOCK_K) reject head dims and block_k above them.
#ifndef APROTO_MAX_HEAD_DIM
#define APROTO_MAX_HEAD_DIM 256u  // largest supported D
#define APROTO_MAX_BLOCK_K 128u   // largest block_k, the sweep's largest tile
#endif
constant constexpr uint MAX_HEAD_DIM = APROTO_MAX_HEAD_DIM;
constant constexpr uint MAX_BLOCK_K = APROTO_MAX_BLOCK_K;
constant constexpr uint MAX_Q_REGS_DIM = 128;  // largest D with Q_REGS
#ifdef FA_SIZED_HEAD_DIM
// Library per variant: arrays of exactly the fragments used, loops bounded at compile time.
constant constexpr uint ACC_FRAGS = FA_SIZED_HEAD_DIM / 8, S_FRAGS = FA_SIZED_BLOCK_K / 8, Q_FRAGS = ACC_FRAGS;
#define D_LOOP ACC_FRAGS
#define K_LOOP S_FRAGS
#else
constant constexpr uint ACC_FRAGS = MAX_HEAD_DIM / 8, S_FRAGS = MAX_BLOCK_K / 8, Q_FRAGS = MAX_Q_REGS_DIM / 8;
#define D_LOOP D_FRAGS
#define K_LOOP K_FRAGS
#endif
// FAST_EXP sentinels, finite so fast::exp2 never sees an infinity: the running max starts at NO_KEY,
// masked scores are MASKED < NO_KEY, so exp2(MASKED - max) = exp2(<= -1e30) = 0 even before the first
// visible key, and a row with none keeps row_sum = 0 (output 0, lse -inf) as with -inf. Real scaled
// scores are assumed above -1e30.
constant constexpr float NO_KEY = -1e30f, MASKED = -2e30f;

// Loops over the 8x8 fragments index register arrays (acc, s, p_frag); unrolled once the function
// constants fix their trip counts, the arrays stay in registers instead of spilling. (The host
// backend's C++ compiler decides for itself; unrolling there only costs compile time.)
#if defined(__METAL_VERSION__) && !defined(APROTO_RUNTIME_ARGS)  // runtime trip counts cannot unroll fully
#define UNROLL _Pragma("clang loop unroll(full)")
#else
#define UNROLL
#endif

// Fused RoPE: elements col .. col + 3 of a row at position `pos`, rotated in float as rope.metal does
// and rounded to T, as the separate pass stores them. Each partner element is read from device memory
// (the same row; for neox usually another thread's chunk).
template <typename T>
vec<T, 4> rotate_chunk(vec<T, 4> x, device const T* row, uint col, int pos, constant FlashVariantParams& vp)
{
    for (uint c = 0; c < 4; c++) {
        if (col + c < vp.rope_dim) {
            const RopeElement e = rope_element(col + c, vp.rope_dim, ROPE_NEOX);
            const float angle = rope_angle(float(pos), e.pair, vp.rope_freq_exp);
            x[c] = T(float(x[c]) * cos(angle) + e.sign * float(row[e.partner]) * sin(angle));
        }
    }
    return x;
}
template <typename T>
uint4 rotate_chunk(uint4 x, device const T*, uint, int, constant FlashVariantParams&) { return x; }  // never called

// Copies rows [first, first + rows) of a [len, HEAD_DIM] matrix into a tile with `row_stride`, rotated
// (with `rotate`, Q and K when USE_ROPE: row first + r at position pos0 + first + r), then times `mul`
// when `scaled`; rows at or past `len` become 0 (not NaN or stale data: the kernel multiplies
// them, and 0 * NaN is NaN). One chunk V per thread per step: vec<T, 4>, or with VEC16 a 16-byte uint4
// bit copy (MSL vectors stop at 4 elements, so 8 halves travel as a uint4; all-zero bits are +0 in
// every float type; rotated or scaled rows take vec<T, 4>). The entry point aligns q, k and v to 16 bytes; a chunk never crosses a row since
// HEAD_DIM % 8 == 0, and tile rows are 16-byte multiples.
template <typename T>
vec<T, 4> times(vec<T, 4> x, float mul)
{
    for (uint i = 0; i < 4; i++) {
        x[i] = T(float(x[i]) * mul);
    }
    return x;
}
inline uint4 times(uint4 x, float) { return x; }  // never scaled: Q_SCALED loads Q as vec<T, 4>

template <typename T, typename V>
void load_chunks(threadgroup T* tile, uint row_stride, device const T* src, uint first, uint len, uint rows,
                 ushort tid, bool scaled, float mul, bool rotate, int pos0, constant FlashAttentionParams& p,
                 constant FlashVariantParams& vp)
{
    const uint width = sizeof(V) / sizeof(T);
    const uint chunks_per_row = HEAD_DIM / width;
    for (uint c = tid; c < rows * chunks_per_row; c += THREADS) {
        const uint r = c / chunks_per_row;
        const uint col = (c % chunks_per_row) * width;
        V x = V(0);
        if (first + r < len) {
            device const T* row = src + ulong(first + r) * HEAD_DIM;
            x = *(device const V*)(row + col);
            if (USE_ROPE && rotate) {
                x = rotate_chunk(x, row, col, pos0 + int(first + r), vp);
            }
            if (scaled) {
                x = times(x, mul);
            }
        }
        *(threadgroup V*)(tile + r * row_stride + col) = x;
    }
}

template <typename T>
void load_rows(threadgroup T* tile, uint row_stride, device const T* src, uint first, uint len, uint rows,
               ushort tid, bool rotate, int pos0, constant FlashAttentionParams& p, constant FlashVariantParams& vp,
               bool scaled = false,
               float mul = 1.0f)
{
    if (VEC16 && !scaled && !(USE_ROPE && rotate)) {
        load_chunks<T, uint4>(tile, row_stride, src, first, len, rows, tid, false, 1.0f, false, 0, p, vp);
    } else {
        load_chunks<T, vec<T, 4>>(tile, row_stride, src, first, len, rows, tid, scaled, mul, rotate, pos0, p, vp);
    }
}

// S = Q K^T for one SIMD-group's 8 rows and one step of keys: K^T fragments are transposed loads of
// K rows, from a tile or (KV_DEVICE) from device memory; Q from its tile or from registers.
template <typename T, typename KPtr>
void qk(thread simdgroup_matrix<float, 8, 8>* s, thread simdgroup_matrix<T, 8, 8>* q_regs,
        threadgroup const T* q_rows, uint q_stride, KPtr k, uint k_stride, constant FlashAttentionParams& p)
{
    UNROLL
    for (uint j = 0; j < K_LOOP; j++) {
        s[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
    UNROLL
    for (uint d = 0; d < D_LOOP; d++) {
        simdgroup_matrix<T, 8, 8> q_frag;
        if (Q_REGS) {
            q_frag = q_regs[d];
        } else {
            simdgroup_load(q_frag, q_rows + d * 8, q_stride);
        }
        UNROLL
        for (uint j = 0; j < K_LOOP; j++) {
            simdgroup_matrix<T, 8, 8> kt_frag;
            simdgroup_load(kt_frag, k + j * 8 * k_stride + d * 8, k_stride, ulong2(0), true);
            simdgroup_multiply_accumulate(s[j], q_frag, kt_frag, s[j]);
        }
    }
}

// A V fragment as the operand type of P: itself when P is in T, converted element-wise for float P.
template <typename P, typename T>
struct operand {
    static simdgroup_matrix<P, 8, 8> of(simdgroup_matrix<T, 8, 8> x)
    {
        simdgroup_matrix<P, 8, 8> y;
        thread auto& ye = y.thread_elements();
        thread auto& xe = x.thread_elements();
        ye[0] = P(xe[0]);
        ye[1] = P(xe[1]);
        return y;
    }
};
template <typename T>
struct operand<T, T> {
    static simdgroup_matrix<T, 8, 8> of(simdgroup_matrix<T, 8, 8> x) { return x; }
};

// O = O * alpha + P V over one step, P in PT (T or float), V from a tile or device memory.
template <typename T, typename PT, typename VPtr>
void pv(thread simdgroup_matrix<float, 8, 8>* acc, thread simdgroup_matrix<PT, 8, 8>* p_frag, float alpha,
        VPtr v, uint v_stride, constant FlashAttentionParams& p)
{
    UNROLL
    for (uint d = 0; d < D_LOOP; d++) {
        thread auto& oe = acc[d].thread_elements();
        oe[0] *= alpha;
        oe[1] *= alpha;
        UNROLL
        for (uint j = 0; j < K_LOOP; j++) {
            simdgroup_matrix<T, 8, 8> v_frag;
            simdgroup_load(v_frag, v + j * 8 * v_stride + d * 8, v_stride);
            simdgroup_multiply_accumulate(acc[d], p_frag[j], operand<PT, T>::of(v_frag), acc[d]);
        }
    }
}

// `smem` is the [[threadgroup(0)]] buffer of threadgroup_bytes() / sizeof(T) elements, carved into the
// Q, K and V tiles of the layout (see the header comment).
template <typename T>
void attention_forward(device const T* q, device const T* k, device const T* v, device T* o,
                       device float* lse, constant FlashAttentionParams& p, device const float* alibi_slopes,
                       constant FlashVariantParams& vp, threadgroup T* smem, uint3 group, ushort sg,
                       ushort lane, ushort tid)
{
    const uint row_stride = HEAD_DIM + ROW_PAD_BYTES / sizeof(T);  // elements; ROW_BYTES / sizeof(T)
    threadgroup T* q_tile = smem;
    // Q_REGS: the Q tile is staging only, and the K/V tiles overlay it once Q is in registers.
    threadgroup T* k_tile = Q_REGS ? smem : q_tile + BLOCK_Q * row_stride;
    threadgroup T* v_tile = SHARED_KV ? k_tile : k_tile + BLOCK_K * row_stride;
    const uint q_start = group.x * BLOCK_Q;
    const uint head = group.y, batch = group.z;
    const uint kv_head = head / p.q_per_kv;
    // 64-bit offsets: B * H * N * D may pass 2^32 elements.
    const ulong q_offset = (ulong(batch) * p.q_heads + head) * p.q_len * HEAD_DIM;
    const ulong kv_offset = (ulong(batch) * p.kv_heads + kv_head) * p.kv_len * HEAD_DIM;
    q += q_offset;
    o += q_offset;
    k += kv_offset;
    v += kv_offset;

    load_rows(q_tile, row_stride, q, q_start, p.q_len, BLOCK_Q, tid, true, vp.rope_q_offset, p, vp, Q_SCALED,
              p.scale_log2);

    // Keys this query block needs: all of them, or with the causal mask those up to what its last
    // row sees. 0 blocks when no row of the block sees a key (Nq > Nk); the loop then never runs.
    uint kv_end = p.kv_len;
    if (CAUSAL) {
        const int last_visible = int(min(q_start + BLOCK_Q, p.q_len)) + int(p.kv_len) - int(p.q_len);
        kv_end = uint(clamp(last_visible, 0, int(p.kv_len)));
    }

    // Apple's 8x8 fragment layout: this lane holds row `frag_row`, columns frag_col and frag_col + 1 of
    // every fragment. The lanes sharing a row differ in lane bits 0 and 3 (shuffle_xor 1 and 8).
    const ushort frag_row = ((lane / 4) & 4) + (lane / 2) % 4;
    const ushort frag_col = ((lane / 4) & 2) * 2 + (lane % 2) * 2;
    const uint row = q_start + sg * 8 + frag_row;          // this lane's query row (may be >= Nq)
    const int last_key = int(row) + int(p.kv_len) - int(p.q_len);  // causal: last key the row sees
    threadgroup const T* q_rows = q_tile + sg * 8 * row_stride;

    if (Q_REGS || KV_DEVICE) {
        // The Q tile is written by every thread before any SIMD-group reads it (the other layouts'
        // first step starts with a barrier; these may read Q before any).
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    simdgroup_matrix<T, 8, 8> q_regs[Q_FRAGS];  // Q_REGS: D_FRAGS used
    if (Q_REGS) {
        UNROLL
        for (uint d = 0; d < D_LOOP; d++) {
            simdgroup_load(q_regs[d], q_rows + d * 8, row_stride);
        }
        // The first K load overwrites the staging rows only after the loop's first barrier, which
        // every SIMD-group reaches once its Q fragments are loaded.
    }

    simdgroup_matrix<float, 8, 8> acc[ACC_FRAGS];  // D_FRAGS used
    UNROLL
    for (uint d = 0; d < D_LOOP; d++) {
        acc[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
    const float masked = FAST_EXP ? MASKED : -INFINITY;
    float row_max = FAST_EXP ? NO_KEY : -INFINITY;  // running max of the row's scores, log2 domain
    const float slope_log2 = USE_ALIBI ? alibi_slopes[head] * M_LOG2E_F : 0.0f;  // the bias in the exp2 domain
    float row_sum = 0.0f;       // running sum of exp2(score - row_max)

    for (uint key_start = 0; key_start < kv_end; key_start += BLOCK_K) {
        const bool past_end = key_start + BLOCK_K > p.kv_len;
        // KV_DEVICE reads full blocks from device memory (unless K must be rotated); uniform over the
        // threadgroup, so the barriers below are reached by all threads or by none.
        const bool direct = KV_DEVICE && !USE_ROPE && !past_end;  // fused RoPE rotates K as it stages
        simdgroup_matrix<float, 8, 8> s[S_FRAGS];  // K_FRAGS used
        if (direct) {
            qk(s, q_regs, q_rows, row_stride, k + ulong(key_start) * HEAD_DIM, HEAD_DIM, p);
        } else {
            // Every SIMD-group is done with the last step's K/V tiles (and the Q staging rows under
            // Q_REGS), and the Q tile is written, before the loads below overwrite or read them.
            threadgroup_barrier(mem_flags::mem_threadgroup);
            load_rows(k_tile, row_stride, k, key_start, p.kv_len, BLOCK_K, tid, true, vp.rope_k_offset, p, vp);
            if (!SHARED_KV) {
                load_rows(v_tile, row_stride, v, key_start, p.kv_len, BLOCK_K, tid, false, 0, p, vp);
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);  // K (and V) written before any read
            qk(s, q_regs, q_rows, row_stride, k_tile, row_stride, p);
            if (SHARED_KV) {
                // V overwrites K in the shared tile: every SIMD-group must have finished reading K.
                threadgroup_barrier(mem_flags::mem_threadgroup);
                load_rows(v_tile, row_stride, v, key_start, p.kv_len, BLOCK_K, tid, false, 0, p, vp);
                // No barrier yet: the softmax below runs on registers while the V stores land.
            }
        }

        // Scale into the log2 domain (unless Q_SCALED did at load), cap, add the bias and mask. Only
        // blocks that reach past Nk or cross the causal diagonal test each element; the condition is the
        // same for the whole threadgroup. Softcap and ALiBi are defined on the scaled score in natural
        // units: the cap takes x ln 2 and returns to the log2 domain times log2(e), the bias is
        // slope * log2(e) per key.
        const bool on_diagonal = CAUSAL && int(key_start + BLOCK_K) - 1 > int(q_start) + int(p.kv_len) - int(p.q_len);
        float step_max = masked;
        UNROLL
        for (uint j = 0; j < K_LOOP; j++) {
            thread auto& e = s[j].thread_elements();
            UNROLL
            for (uint c = 0; c < 2; c++) {
                float x = Q_SCALED ? e[c] : e[c] * p.scale_log2;
                if (USE_SOFTCAP) {  // natural units: x ln2 is the scaled score; capped, back times log2(e)
                    x = vp.softcap_log2 * tanh(x * vp.softcap_scale);
                }
                const int key = int(key_start + j * 8 + frag_col + c);
                if (USE_ALIBI) {  // slope * (key - last_key), before the mask
                    x += slope_log2 * float(key - last_key);
                }
                if (past_end || on_diagonal) {
                    if (key >= int(p.kv_len) || (CAUSAL && key > last_key)) {
                        x = masked;
                    }
                }
                e[c] = x;
                step_max = max(step_max, x);
            }
        }
        step_max = max(step_max, simd_shuffle_xor(step_max, 1));
        step_max = max(step_max, simd_shuffle_xor(step_max, 8));

        // Online softmax. Precise path: a row that has seen no visible key keeps max = -inf; shifting
        // by 0 instead keeps exp2(-inf - shift) = 0 and avoids -inf - -inf = NaN.
        //
        // exp2, not fast::exp2, unless FAST_EXP: both arguments below can be -inf (row_max before the
        // first visible key, masked scores), and Metal's fast:: functions do not promise IEEE handling
        // of infinities, so only the precise exp2 guarantees exp2(-inf) = 0. Plain exp2 is the precise
        // one because the library is compiled without fast math (the Metal backend's default, and
        // -fno-fast-math for prebuilt metallibs; APROTO_METAL_FAST_MATH=1 voids this, and then also the
        // -INFINITY comparisons). FAST_EXP keeps every argument finite (the sentinels above).
        const float new_max = max(row_max, step_max);
        const float shift = (FAST_EXP || new_max != -INFINITY) ? new_max : 0.0f;
        const float alpha = FAST_EXP ? fast::exp2(row_max - shift) : exp2(row_max - shift);  // rescales the past
        row_max = new_max;

        // P = exp2(S - max), in T (the P V product at the input precision, accumulating in float) or,
        // with P_FLOAT, left in float in the S registers.
        simdgroup_matrix<T, 8, 8> p_frag[S_FRAGS];  // K_FRAGS used, unless P_FLOAT
        float step_sum = 0.0f;
        UNROLL
        for (uint j = 0; j < K_LOOP; j++) {
            thread auto& e = s[j].thread_elements();
            thread auto& pe = p_frag[j].thread_elements();
            const float p0 = FAST_EXP ? fast::exp2(e[0] - shift) : exp2(e[0] - shift);  // masked: 0
            const float p1 = FAST_EXP ? fast::exp2(e[1] - shift) : exp2(e[1] - shift);
            if (P_FLOAT) {
                e[0] = p0;
                e[1] = p1;
            } else {
                pe[0] = T(p0);
                pe[1] = T(p1);
            }
            step_sum += p0 + p1;
        }
        step_sum += simd_shuffle_xor(step_sum, 1);
        step_sum += simd_shuffle_xor(step_sum, 8);
        row_sum = row_sum * alpha + step_sum;

        if (direct) {
            device const T* v_block = v + ulong(key_start) * HEAD_DIM;
            if (P_FLOAT) {
                pv<T>(acc, s, alpha, v_block, HEAD_DIM, p);
            } else {
                pv<T>(acc, p_frag, alpha, v_block, HEAD_DIM, p);
            }
        } else {
            if (SHARED_KV) {
                threadgroup_barrier(mem_flags::mem_threadgroup);  // V written before any SIMD-group reads it
            }
            if (P_FLOAT) {
                pv<T>(acc, s, alpha, (threadgroup const T*)v_tile, row_stride, p);
            } else {
                pv<T>(acc, p_frag, alpha, (threadgroup const T*)v_tile, row_stride, p);
            }
        }
    }

    // Each lane stores its own 2 elements per fragment straight from registers: rows past Nq are
    // skipped without a staging tile. A row that saw no key has row_sum = 0 and outputs 0.
    if (row < p.q_len) {
        const float inv_sum = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;
        device T* out = o + ulong(row) * HEAD_DIM + frag_col;
        UNROLL
        for (uint d = 0; d < D_LOOP; d++) {
            thread auto& oe = acc[d].thread_elements();
            if (VEC16) {  // frag_col is even and D % 8 == 0: 2 * sizeof(T) aligned
                vec<T, 2> pair;
                pair[0] = T(oe[0] * inv_sum);
                pair[1] = T(oe[1] * inv_sum);
                *(device vec<T, 2>*)(out + d * 8) = pair;
            } else {
                out[d * 8] = T(oe[0] * inv_sum);
                out[d * 8 + 1] = T(oe[1] * inv_sum);
            }
        }
        if (WRITE_LSE && frag_col == 0) {  // one lane of the row's four
            const ulong index = (ulong(batch) * p.q_heads + head) * p.q_len + row;
            lse[index] = row_sum > 0.0f ? (row_max + log2(row_sum)) * M_LN2_F : -INFINITY;
        }
    }
}

// One kernel per element type over the shared body. Grid: (ceil(Nq / BLOCK_Q), Hq, B) threadgroups of
// BLOCK_Q / 8 * 32 threads. lse (buffer 4) is written only when WRITE_LSE, alibi_slopes (buffer 6) read
// only when USE_ALIBI. smem (threadgroup(0)) must
// be threadgroup_bytes() long (the header comment's formula of the layout).
kernel void flash_attention_f32(device const float* q [[buffer(0)]], device const float* k [[buffer(1)]],
                                device const float* v [[buffer(2)]], device float* o [[buffer(3)]],
                                device float* lse [[buffer(4)]],
                                constant FlashAttentionParams& p [[buffer(5)]],
                                device const float* alibi_slopes [[buffer(6)]],
                                constant FlashVariantParams& vp [[buffer(7)]],
                                threadgroup float* smem [[threadgroup(0)]],
                                uint3 group [[threadgroup_position_in_grid]],
                                ushort sg [[simdgroup_index_in_threadgroup]],
                                ushort lane [[thread_index_in_simdgroup]],
                                ushort tid [[thread_index_in_threadgroup]])
{
    attention_forward(q, k, v, o, lse, p, alibi_slopes, vp, smem, group, sg, lane, tid);
}

kernel void flash_attention_f16(device const half* q [[buffer(0)]], device const half* k [[buffer(1)]],
                                device const half* v [[buffer(2)]], device half* o [[buffer(3)]],
                                device float* lse [[buffer(4)]],
                                constant FlashAttentionParams& p [[buffer(5)]],
                                device const float* alibi_slopes [[buffer(6)]],
                                constant FlashVariantParams& vp [[buffer(7)]],
                                threadgroup half* smem [[threadgroup(0)]],
                                uint3 group [[threadgroup_position_in_grid]],
                                ushort sg [[simdgroup_index_in_threadgroup]],
                                ushort lane [[thread_index_in_simdgroup]],
                                ushort tid [[thread_index_in_threadgroup]])
{
    attention_forward(q, k, v, o, lse, p, alibi_slopes, vp, smem, group, sg, lane, tid);
}

kernel void flash_attention_bf16(device const bfloat* q [[buffer(0)]], device const bfloat* k [[buffer(1)]],
                                 device const bfloat* v [[buffer(2)]], device bfloat* o [[buffer(3)]],
                                 device float* lse [[buffer(4)]],
                                 constant FlashAttentionParams& p [[buffer(5)]],
                                 device const float* alibi_slopes [[buffer(6)]],
                                 constant FlashVariantParams& vp [[buffer(7)]],
                                 threadgroup bfloat* smem [[threadgroup(0)]],
                                 uint3 group [[threadgroup_position_in_grid]],
                                 ushort sg [[simdgroup_index_in_threadgroup]],
                                 ushort lane [[thread_index_in_simdgroup]],
                                 ushort tid [[thread_index_in_threadgroup]])
{
    attention_forward(q, k, v, o, lse, p, alibi_slopes, vp, smem, group, sg, lane, tid);
}
