// Linear attention with a scalar decay gate per head and step (simple GLA; RetNet and Lightning
// attention are fixed-decay special cases; no gate is plain causal linear attention):
//   S_t = exp(g_t) S_{t-1} + k_t v_t^T      (state [K, V], float)
//   o_t = scale * q_t S_t
// computed two ways:
//   * chunked, as flash-linear-attention (FLA) does for NVIDIA GPUs in Triton (fla/ops/common/chunk_h.py,
//     chunk_o.py, used by fla/ops/simple_gla/chunk.py): chunk_h walks the chunks of CHUNK steps in order
//     and stores the state entering each one; chunk_o then computes every chunk independently from
//     that state plus the chunk's own causal attention;
//   * fused_recurrent: the recurrence itself, one step after another (the decode path, and the baseline).
//
// With G the cumulative sum of g inside a chunk (G_i = g_0 + ... + g_i, restarting at every chunk) and
// L the chunk's last step, the chunked form is (FLA's, same algebra):
//   h_{n+1} = exp(G_L) h_n + sum_j k_j (exp(G_L - G_j) v_j)^T                               (chunk_h)
//   o_i     = scale * exp(G_i) q_i h_n + scale * sum_{j <= i} (q_i . k_j) exp(G_i - G_j) v_j   (chunk_o)
// Every exponent is <= 0 (g <= 0; j <= i), so nothing overflows however strong the decay; the decay
// factors are applied element by element after the products (exp(G_i) exp(-G_j) as two factors would
// overflow for strong decay).
//
// Tensors: FLA's layout, see linear_attention_params.h. K and V are any value in 8..128: the kernels
// work on K and V rounded up to a multiple of 8 (the 8x8 fragments), zero-filling the padding as they
// load tiles and masking it when they store; inputs are never copied. A partial last chunk is zero
// past T (its g counts as 0, so its G stays that of the last real step).
//
// Numerics: every product runs on float32 fragments (inputs converted exactly as they are loaded), the
// state and the decays are float32, and the output is rounded to the input type once at the end. FLA
// instead rounds the decayed v and the masked scores to the input type before their products (and
// keeps the per-chunk states in the input type); the M4 runs float and half simdgroup MMAs at the same
// rate (docs/architecture.md), so float costs registers, not throughput. The chunk-local G is kept as two
// floats (chunk_cumsum), so strong decay does not cost accuracy.
//
// Threadgroup memory is one [[threadgroup(0)]] buffer per kernel whose length the C++ plan computes
// and the dispatch sets (Metal compiles the library before the function constants exist, so they cannot
// size threadgroup or register arrays; register arrays have literal maxima instead). Tiles are rows of
// their width plus PAD_BYTES, which shift the 8 rows of a fragment load onto different banks (the same
// choice as flash_attention.metal). The layouts, in bytes (s = sizeof(T), ROW(n, s) = n * s + PAD_BYTES):
//   chunk_h      k tile CHUNK x ROW(BLOCK_K, s), v tile CHUNK x ROW(BLOCK_V, s), G CHUNK x 8 (two floats)
//   chunk_o      q tile, k tile CHUNK x ROW(BLOCK_K, s), v tile CHUNK x ROW(BLOCK_V, s),
//                h tile BLOCK_K x ROW(BLOCK_V, 4), G CHUNK x 8
//   recurrent    q_t and k_t (float, K rounded up to 4), 4 x 32 partial sums (float)
// = threadgroup_bytes() in src/protos/linear_attention.cpp. Every part is a multiple of 16 bytes.
#include <metal_stdlib>
#include "linear_attention_params.h"
using namespace metal;

constant uint CHUNK   [[function_constant(0)]];  // chunk length: 16, 32 or 64
constant uint K_DIM   [[function_constant(1)]];  // K, 8..128
constant uint V_DIM   [[function_constant(2)]];  // V, 8..128
constant uint BLOCK_K [[function_constant(3)]];  // state rows per chunk_h threadgroup; K step of chunk_o
constant uint BLOCK_V [[function_constant(4)]];  // state / output columns per threadgroup
constant bool USE_G   [[function_constant(5)]];  // g given (otherwise no decay)
constant bool USE_INITIAL_STATE [[function_constant(6)]];
constant bool STORE_FINAL_STATE [[function_constant(7)]];

constant uint PAD_BYTES = 16;
constant uint V_FRAGS = BLOCK_V / 8;
constant uint RECURRENT_ROWS = (K_DIM + 3) / 4;  // state rows per recurrent thread (4 SIMD-groups)

// Literal maxima of the register arrays; the C++ entry point rejects anything larger.
constant constexpr uint MAX_BLOCK = 128;  // BLOCK_K, BLOCK_V
constant constexpr uint MAX_CHUNK = 64;
constant constexpr uint MAX_DIM = 128;    // K, V

#ifdef __METAL_VERSION__
#define UNROLL _Pragma("clang loop unroll(full)")
#else
#define UNROLL
#endif

// Apple's 8x8 fragment layout: this lane holds row frag_row(), columns frag_col() and frag_col() + 1.
inline ushort frag_row(ushort lane) { return ((lane / 4) & 4) + (lane / 2) % 4; }
inline ushort frag_col(ushort lane) { return ((lane / 4) & 2) * 2 + (lane % 2) * 2; }

// Copies a rows x cols block of a row-major device matrix (`src` at its first element, rows
// `src_stride` elements apart) into a tile; elements at or past (rows_valid, cols_valid) become 0:
// the chunk's end, the padding of K and V to a multiple of 8 (never read: they lie past the tensor).
template <typename T>
void load_tile(threadgroup T* tile, uint tile_stride, device const T* src, ulong src_stride, uint rows,
               uint cols, uint rows_valid, uint cols_valid, uint tid, uint threads)
{
    for (uint i = tid; i < rows * cols; i += threads) {
        const uint r = i / cols, c = i % cols;
        tile[r * tile_stride + c] = (r < rows_valid && c < cols_valid) ? src[r * src_stride + c] : T(0);
    }
}

// One 8x8 fragment of a tile as float (exact for half and bfloat): every product here runs in float.
template <typename T>
simdgroup_float8x8 load_fragment(threadgroup const T* tile, uint stride, bool transpose)
{
    simdgroup_matrix<T, 8, 8> m;
    simdgroup_load(m, tile, stride, ulong2(0), transpose);
    simdgroup_float8x8 f;
    thread auto& e = m.thread_elements();
    thread auto& fe = f.thread_elements();
    fe[0] = float(e[0]);
    fe[1] = float(e[1]);
    return f;
}

// G, the cumulative sum of g over the chunk's steps, as an unevaluated sum of two floats: G_i = hi[i] + lo[i]
// with hi = g_cum[0, CHUNK) and lo = g_cum[CHUNK, 2 CHUNK). Past the chunk's `len` steps G stays at that of
// the last one. Why two floats: strong decay takes G to hundreds or thousands inside a chunk, where one
// float ulp is 1e-4 or more, and a plain float sum would carry that absolute error into exponents
// G_i - G_j near 0 whose weights are near 1. TwoSum (Knuth) keeps each addition's rounding error in lo,
// so decay_exponent() is accurate to the size of G_i - G_j itself, whatever the size of G.
inline void chunk_cumsum(threadgroup float* g_cum, device const float* g, uint heads, uint len, uint tid,
                         uint threads)
{
    for (uint i = tid; i < CHUNK; i += threads) {
        float hi = 0.0f, lo = 0.0f;
        for (uint s = 0; s <= i && s < len; s++) {  // each thread its own prefix, in step order
            const float x = g[ulong(s) * heads];
            const float sum = hi + x;
            const float x_part = sum - hi;
            lo += (hi - (sum - x_part)) + (x - x_part);
            hi = sum;
        }
        g_cum[i] = hi;
        g_cum[CHUNK + i] = lo;
    }
}

// G_i - G_j (<= 0 for j <= i) and G_i, from chunk_cumsum's two floats.
inline float decay_exponent(threadgroup const float* g_cum, uint i, uint j)
{
    return (g_cum[i] - g_cum[j]) + (g_cum[CHUNK + i] - g_cum[CHUNK + j]);
}

inline float cumulative(threadgroup const float* g_cum, uint i) { return g_cum[i] + g_cum[CHUNK + i]; }

// Reads (load) or writes (store) this lane's elements of a [K, V] float state held as fragments:
// rows row0 + 8 * sg.., columns col0 + 8 * j.., within K_DIM x V_DIM (the padding stays 0 / unwritten).
inline void load_state(thread simdgroup_float8x8* state, device const float* src, uint row, uint col0, ushort lane)
{
    UNROLL
    for (uint j = 0; j < V_FRAGS; j++) {
        thread auto& e = state[j].thread_elements();
        UNROLL
        for (uint c = 0; c < 2; c++) {
            const uint col = col0 + j * 8 + frag_col(lane) + c;
            e[c] = (row < K_DIM && col < V_DIM) ? src[ulong(row) * V_DIM + col] : 0.0f;
        }
    }
}

inline void store_state(thread simdgroup_float8x8* state, device float* dst, uint row, uint col0, ushort lane)
{
    UNROLL
    for (uint j = 0; j < V_FRAGS; j++) {
        thread auto& e = state[j].thread_elements();
        UNROLL
        for (uint c = 0; c < 2; c++) {
            const uint col = col0 + j * 8 + frag_col(lane) + c;
            if (row < K_DIM && col < V_DIM) {
                dst[ulong(row) * V_DIM + col] = e[c];
            }
        }
    }
}

// ------------------------------------------------------------------------------------------ chunk_h
// Grid (ceil(K / BLOCK_K), ceil(V / BLOCK_V), B * H) threadgroups of BLOCK_K / 8 SIMD-groups. The
// threadgroup owns a BLOCK_K x BLOCK_V block of the state for the whole sequence, in registers: SIMD-group
// sg holds rows 8 sg..8 sg + 7 as V_FRAGS float fragments. Per chunk it stores the block (the state
// entering the chunk) to h, then h = exp(G_L) h + K^T (exp(G_L - G) * V) from k and v tiles.
template <typename T>
void chunk_h(device const T* k, device const T* v, device const float* g, device const float* h0,
             device float* h, device float* ht, constant LinearAttentionParams& p, threadgroup T* smem,
             uint3 group, ushort sg, ushort lane, ushort tid)
{
    const uint threads = BLOCK_K / 8 * 32;
    const uint k_stride = BLOCK_K + PAD_BYTES / sizeof(T), v_stride = BLOCK_V + PAD_BYTES / sizeof(T);
    threadgroup T* k_tile = smem;
    threadgroup T* v_tile = k_tile + CHUNK * k_stride;
    threadgroup float* g_cum = (threadgroup float*)(v_tile + CHUNK * v_stride);
    const uint k0 = group.x * BLOCK_K, v0 = group.y * BLOCK_V;
    const uint head = group.z % p.heads, batch = group.z / p.heads;
    const uint row = k0 + sg * 8 + frag_row(lane);  // this lane's state row
    const ulong state_offset = ulong(group.z) * K_DIM * V_DIM;  // [B, H, K, V]: (batch, head) = group.z

    simdgroup_float8x8 state[MAX_BLOCK / 8];  // V_FRAGS used
    if (USE_INITIAL_STATE) {
        load_state(state, h0 + state_offset, row, v0, lane);
    } else {
        UNROLL
        for (uint j = 0; j < V_FRAGS; j++) {
            state[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        }
    }

    for (uint n = 0; n < p.chunks; n++) {
        const uint t0 = n * CHUNK, len = min(CHUNK, p.seq_len - t0);
        store_state(state, h + ((ulong(batch) * p.chunks + n) * p.heads + head) * K_DIM * V_DIM, row, v0, lane);

        threadgroup_barrier(mem_flags::mem_threadgroup);  // the last chunk's tiles are read
        const ulong step0 = ulong(batch) * p.seq_len + t0;  // first step of the chunk, in [B, T]
        load_tile(k_tile, k_stride, k + (step0 * p.heads + head) * K_DIM + k0, ulong(p.heads) * K_DIM, CHUNK,
                  BLOCK_K, len, K_DIM - k0, tid, threads);
        load_tile(v_tile, v_stride, v + (step0 * p.heads + head) * V_DIM + v0, ulong(p.heads) * V_DIM, CHUNK,
                  BLOCK_V, len, min(BLOCK_V, V_DIM - v0), tid, threads);
        if (USE_G) {
            chunk_cumsum(g_cum, g + step0 * p.heads + head, p.heads, len, tid, threads);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);

        if (USE_G) {
            const float decay = exp(cumulative(g_cum, len - 1));
            UNROLL
            for (uint j = 0; j < V_FRAGS; j++) {
                thread auto& e = state[j].thread_elements();
                e[0] *= decay;
                e[1] *= decay;
            }
        }
        for (uint tb = 0; tb < CHUNK / 8; tb++) {
            // K^T: rows = this SIMD-group's 8 state rows, columns = 8 steps (a transposed load).
            const simdgroup_float8x8 kt = load_fragment(k_tile + tb * 8 * k_stride + sg * 8, k_stride, true);
            // This lane's rows of a v fragment are step tb * 8 + frag_row: one decay factor.
            const float w = USE_G ? exp(decay_exponent(g_cum, len - 1, tb * 8 + frag_row(lane))) : 1.0f;
            UNROLL
            for (uint j = 0; j < V_FRAGS; j++) {
                simdgroup_float8x8 vd = load_fragment(v_tile + tb * 8 * v_stride + j * 8, v_stride, false);
                thread auto& e = vd.thread_elements();
                e[0] *= w;
                e[1] *= w;
                simdgroup_multiply_accumulate(state[j], kt, vd, state[j]);
            }
        }
    }
    if (STORE_FINAL_STATE) {
        store_state(state, ht + state_offset, row, v0, lane);
    }
}

// ------------------------------------------------------------------------------------------ chunk_o
// Grid (ceil(V / BLOCK_V), chunks, B * H) threadgroups of CHUNK / 8 SIMD-groups; SIMD-group sg owns the
// chunk's query rows 8 sg..8 sg + 7. Over K in steps of BLOCK_K it accumulates the scores S = Q K^T (only
// the fragments on or below the diagonal: the rest is masked) and O = Q h_n; then
//   O = scale * (exp(G_i) O + (S * exp(G_i - G_j), j <= i) V).
template <typename T>
void chunk_o(device const T* q, device const T* k, device const T* v, device const float* h,
             device const float* g, device T* o, constant LinearAttentionParams& p, threadgroup T* smem,
             uint3 group, ushort sg, ushort lane, ushort tid)
{
    const uint threads = CHUNK / 8 * 32;
    const uint qk_stride = BLOCK_K + PAD_BYTES / sizeof(T), v_stride = BLOCK_V + PAD_BYTES / sizeof(T);
    const uint h_stride = BLOCK_V + PAD_BYTES / 4;
    threadgroup T* q_tile = smem;
    threadgroup T* k_tile = q_tile + CHUNK * qk_stride;
    threadgroup T* v_tile = k_tile + CHUNK * qk_stride;
    threadgroup float* h_tile = (threadgroup float*)(v_tile + CHUNK * v_stride);
    threadgroup float* g_cum = h_tile + BLOCK_K * h_stride;
    const uint v0 = group.x * BLOCK_V, n = group.y;
    const uint head = group.z % p.heads, batch = group.z / p.heads;
    const uint t0 = n * CHUNK, len = min(CHUNK, p.seq_len - t0);
    const ulong step0 = ulong(batch) * p.seq_len + t0;
    device const float* state = h + ((ulong(batch) * p.chunks + n) * p.heads + head) * K_DIM * V_DIM + v0;

    // The v tile and G are read only after the K loop, whose barriers order these writes.
    load_tile(v_tile, v_stride, v + (step0 * p.heads + head) * V_DIM + v0, ulong(p.heads) * V_DIM, CHUNK, BLOCK_V,
              len, min(BLOCK_V, V_DIM - v0), tid, threads);
    if (USE_G) {
        chunk_cumsum(g_cum, g + step0 * p.heads + head, p.heads, len, tid, threads);
    }

    simdgroup_float8x8 s[MAX_CHUNK / 8];  // CHUNK / 8 zeroed; products only for key blocks 0..sg (the diagonal)
    simdgroup_float8x8 acc[MAX_BLOCK / 8];  // V_FRAGS used
    UNROLL
    for (uint j = 0; j < CHUNK / 8; j++) {
        s[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
    UNROLL
    for (uint j = 0; j < V_FRAGS; j++) {
        acc[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }

    for (uint k0 = 0; k0 < K_DIM; k0 += BLOCK_K) {
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the last step's tiles are read
        const uint k_valid = min(BLOCK_K, K_DIM - k0);
        load_tile(q_tile, qk_stride, q + (step0 * p.heads + head) * K_DIM + k0, ulong(p.heads) * K_DIM, CHUNK,
                  BLOCK_K, len, k_valid, tid, threads);
        load_tile(k_tile, qk_stride, k + (step0 * p.heads + head) * K_DIM + k0, ulong(p.heads) * K_DIM, CHUNK,
                  BLOCK_K, len, k_valid, tid, threads);
        load_tile(h_tile, h_stride, state + ulong(k0) * V_DIM, V_DIM, BLOCK_K, BLOCK_V, k_valid,
                  min(BLOCK_V, V_DIM - v0), tid, threads);
        threadgroup_barrier(mem_flags::mem_threadgroup);

        for (uint d = 0; d < BLOCK_K / 8; d++) {
            const simdgroup_float8x8 qf = load_fragment(q_tile + sg * 8 * qk_stride + d * 8, qk_stride, false);
            UNROLL
            for (uint j = 0; j < CHUNK / 8; j++) {
                if (j <= sg) {  // the same for the whole SIMD-group
                    const simdgroup_float8x8 kt = load_fragment(k_tile + j * 8 * qk_stride + d * 8, qk_stride, true);
                    simdgroup_multiply_accumulate(s[j], qf, kt, s[j]);
                }
            }
            UNROLL
            for (uint jv = 0; jv < V_FRAGS; jv++) {
                simdgroup_float8x8 hf;
                simdgroup_load(hf, h_tile + d * 8 * h_stride + jv * 8, h_stride);
                simdgroup_multiply_accumulate(acc[jv], qf, hf, acc[jv]);
            }
        }
    }

    // Decay and causal mask, on this lane's elements (row i of the chunk). Masked scores are selected
    // away, not multiplied: exp(G_i - G_j) for j > i may be inf.
    const uint i = sg * 8 + frag_row(lane);
    if (USE_G) {
        const float decay = exp(cumulative(g_cum, i));
        UNROLL
        for (uint jv = 0; jv < V_FRAGS; jv++) {
            thread auto& e = acc[jv].thread_elements();
            e[0] *= decay;
            e[1] *= decay;
        }
    }
    UNROLL
    for (uint j = 0; j < CHUNK / 8; j++) {
        thread auto& e = s[j].thread_elements();
        UNROLL
        for (uint c = 0; c < 2; c++) {
            const uint jj = j * 8 + frag_col(lane) + c;
            const float decayed = USE_G ? e[c] * exp(decay_exponent(g_cum, i, jj)) : e[c];
            e[c] = jj <= i ? decayed : 0.0f;
        }
    }
    UNROLL
    for (uint jv = 0; jv < V_FRAGS; jv++) {
        UNROLL
        for (uint j = 0; j < CHUNK / 8; j++) {
            if (j <= sg) {
                const simdgroup_float8x8 vf = load_fragment(v_tile + j * 8 * v_stride + jv * 8, v_stride, false);
                simdgroup_multiply_accumulate(acc[jv], s[j], vf, acc[jv]);
            }
        }
    }

    // Each lane stores its own elements; rows past T and columns past V are skipped.
    if (i < len) {
        device T* out = o + ((step0 + i) * p.heads + head) * V_DIM;
        UNROLL
        for (uint jv = 0; jv < V_FRAGS; jv++) {
            thread auto& e = acc[jv].thread_elements();
            UNROLL
            for (uint c = 0; c < 2; c++) {
                const uint col = v0 + jv * 8 + frag_col(lane) + c;
                if (col < V_DIM) {
                    out[col] = T(p.scale * e[c]);
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------------- fused_recurrent
// Grid (ceil(V / 32), H, B) threadgroups of 4 SIMD-groups. Lane l owns state column 32 x + l; SIMD-group
// sg owns rows sg, sg + 4, sg + 8, ... (RECURRENT_ROWS of them, in registers). Per step: q_t and k_t go to
// threadgroup memory, each thread updates its state elements and sums q . S over its rows, and the
// four partial sums of a column are added by SIMD-group 0. Two barriers per step.
template <typename T>
void fused_recurrent(device const T* q, device const T* k, device const T* v, device const float* g,
                     device const float* h0, device T* o, device float* ht, constant LinearAttentionParams& p,
                     threadgroup float* smem, uint3 group, ushort sg, ushort lane, ushort tid)
{
    const uint padded = RECURRENT_ROWS * 4;
    threadgroup float* q_t = smem;
    threadgroup float* k_t = q_t + padded;
    threadgroup float* partial = k_t + padded;  // [4][32]
    const uint col = group.x * 32 + lane, head = group.y, batch = group.z;
    const ulong state_offset = (ulong(batch) * p.heads + head) * K_DIM * V_DIM;

    float state[MAX_DIM / 4];  // RECURRENT_ROWS used; row sg + 4 r
    UNROLL
    for (uint r = 0; r < RECURRENT_ROWS; r++) {
        const uint row = sg + 4 * r;
        state[r] = (USE_INITIAL_STATE && row < K_DIM && col < V_DIM) ? h0[state_offset + ulong(row) * V_DIM + col]
                                                                     : 0.0f;
    }
    for (uint t = 0; t < p.seq_len; t++) {
        const ulong step = (ulong(batch) * p.seq_len + t) * p.heads + head;
        for (uint i = tid; i < padded; i += 128) {  // rows past K are 0: they add nothing
            q_t[i] = i < K_DIM ? float(q[step * K_DIM + i]) : 0.0f;
            k_t[i] = i < K_DIM ? float(k[step * K_DIM + i]) : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        const float decay = USE_G ? exp(g[step]) : 1.0f;
        const float v_t = col < V_DIM ? float(v[step * V_DIM + col]) : 0.0f;
        float sum = 0.0f;
        UNROLL
        for (uint r = 0; r < RECURRENT_ROWS; r++) {
            state[r] = fma(state[r], decay, k_t[sg + 4 * r] * v_t);
            sum = fma(q_t[sg + 4 * r], state[r], sum);
        }
        partial[sg * 32 + lane] = sum;
        threadgroup_barrier(mem_flags::mem_threadgroup);  // also: every thread is done with q_t, k_t
        if (sg == 0 && col < V_DIM) {
            o[step * V_DIM + col] = T(p.scale * (partial[lane] + partial[32 + lane] + partial[64 + lane] +
                                                 partial[96 + lane]));
        }
    }
    if (STORE_FINAL_STATE) {
        UNROLL
        for (uint r = 0; r < RECURRENT_ROWS; r++) {
            const uint row = sg + 4 * r;
            if (row < K_DIM && col < V_DIM) {
                ht[state_offset + ulong(row) * V_DIM + col] = state[r];
            }
        }
    }
}

// --------------------------------------------------------------------------------- kernels per type
// Buffers: chunk_h (k, v, g, h0, h, ht, params); chunk_o (q, k, v, h, g, o, params); fused_recurrent
// (q, k, v, g, h0, o, ht, params). An absent optional buffer (g, h0, ht) is bound to another array and
// never touched: USE_G, USE_INITIAL_STATE and STORE_FINAL_STATE are false. Threadgroups: chunk_h
// BLOCK_K / 8 SIMD-groups, chunk_o CHUNK / 8, fused_recurrent 4 (see each body).
kernel void linear_attention_chunk_h_f32(
    device const float* k [[buffer(0)]], device const float* v [[buffer(1)]], device const float* g [[buffer(2)]],
    device const float* h0 [[buffer(3)]], device float* h [[buffer(4)]], device float* ht [[buffer(5)]],
    constant LinearAttentionParams& p [[buffer(6)]], threadgroup float* smem [[threadgroup(0)]],
    uint3 group [[threadgroup_position_in_grid]], ushort sg [[simdgroup_index_in_threadgroup]],
    ushort lane [[thread_index_in_simdgroup]], ushort tid [[thread_index_in_threadgroup]])
{
    chunk_h(k, v, g, h0, h, ht, p, smem, group, sg, lane, tid);
}

kernel void linear_attention_chunk_o_f32(
    device const float* q [[buffer(0)]], device const float* k [[buffer(1)]], device const float* v [[buffer(2)]],
    device const float* h [[buffer(3)]], device const float* g [[buffer(4)]], device float* o [[buffer(5)]],
    constant LinearAttentionParams& p [[buffer(6)]], threadgroup float* smem [[threadgroup(0)]],
    uint3 group [[threadgroup_position_in_grid]], ushort sg [[simdgroup_index_in_threadgroup]],
    ushort lane [[thread_index_in_simdgroup]], ushort tid [[thread_index_in_threadgroup]])
{
    chunk_o(q, k, v, h, g, o, p, smem, group, sg, lane, tid);
}

kernel void linear_attention_recurrent_f32(
    device const float* q [[buffer(0)]], device const float* k [[buffer(1)]], device const float* v [[buffer(2)]],
    device const float* g [[buffer(3)]], device const float* h0 [[buffer(4)]], device float* o [[buffer(5)]],
    device float* ht [[buffer(6)]], constant LinearAttentionParams& p [[buffer(7)]],
    threadgroup float* smem [[threadgroup(0)]], uint3 group [[threadgroup_position_in_grid]],
    ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]],
    ushort tid [[thread_index_in_threadgroup]])
{
    fused_recurrent(q, k, v, g, h0, o, ht, p, smem, group, sg, lane, tid);
}

kernel void linear_attention_chunk_h_f16(
    device const half* k [[buffer(0)]], device const half* v [[buffer(1)]], device const float* g [[buffer(2)]],
    device const float* h0 [[buffer(3)]], device float* h [[buffer(4)]], device float* ht [[buffer(5)]],
    constant LinearAttentionParams& p [[buffer(6)]], threadgroup half* smem [[threadgroup(0)]],
    uint3 group [[threadgroup_position_in_grid]], ushort sg [[simdgroup_index_in_threadgroup]],
    ushort lane [[thread_index_in_simdgroup]], ushort tid [[thread_index_in_threadgroup]])
{
    chunk_h(k, v, g, h0, h, ht, p, smem, group, sg, lane, tid);
}

kernel void linear_attention_chunk_o_f16(
    device const half* q [[buffer(0)]], device const half* k [[buffer(1)]], device const half* v [[buffer(2)]],
    device const float* h [[buffer(3)]], device const float* g [[buffer(4)]], device half* o [[buffer(5)]],
    constant LinearAttentionParams& p [[buffer(6)]], threadgroup half* smem [[threadgroup(0)]],
    uint3 group [[threadgroup_position_in_grid]], ushort sg [[simdgroup_index_in_threadgroup]],
    ushort lane [[thread_index_in_simdgroup]], ushort tid [[thread_index_in_threadgroup]])
{
    chunk_o(q, k, v, h, g, o, p, smem, group, sg, lane, tid);
}

kernel void linear_attention_recurrent_f16(
    device const half* q [[buffer(0)]], device const half* k [[buffer(1)]], device const half* v [[buffer(2)]],
    device const float* g [[buffer(3)]], device const float* h0 [[buffer(4)]], device half* o [[buffer(5)]],
    device float* ht [[buffer(6)]], constant LinearAttentionParams& p [[buffer(7)]],
    threadgroup float* smem [[threadgroup(0)]], uint3 group [[threadgroup_position_in_grid]],
    ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]],
    ushort tid [[thread_index_in_threadgroup]])
{
    fused_recurrent(q, k, v, g, h0, o, ht, p, smem, group, sg, lane, tid);
}

kernel void linear_attention_chunk_h_bf16(
    device const bfloat* k [[buffer(0)]], device const bfloat* v [[buffer(1)]], device const float* g [[buffer(2)]],
    device const float* h0 [[buffer(3)]], device float* h [[buffer(4)]], device float* ht [[buffer(5)]],
    constant LinearAttentionParams& p [[buffer(6)]], threadgroup bfloat* smem [[threadgroup(0)]],
    uint3 group [[threadgroup_position_in_grid]], ushort sg [[simdgroup_index_in_threadgroup]],
    ushort lane [[thread_index_in_simdgroup]], ushort tid [[thread_index_in_threadgroup]])
{
    chunk_h(k, v, g, h0, h, ht, p, smem, group, sg, lane, tid);
}

kernel void linear_attention_chunk_o_bf16(
    device const bfloat* q [[buffer(0)]], device const bfloat* k [[buffer(1)]], device const bfloat* v [[buffer(2)]],
    device const float* h [[buffer(3)]], device const float* g [[buffer(4)]], device bfloat* o [[buffer(5)]],
    constant LinearAttentionParams& p [[buffer(6)]], threadgroup bfloat* smem [[threadgroup(0)]],
    uint3 group [[threadgroup_position_in_grid]], ushort sg [[simdgroup_index_in_threadgroup]],
    ushort lane [[thread_index_in_simdgroup]], ushort tid [[thread_index_in_threadgroup]])
{
    chunk_o(q, k, v, h, g, o, p, smem, group, sg, lane, tid);
}

kernel void linear_attention_recurrent_bf16(
    device const bfloat* q [[buffer(0)]], device const bfloat* k [[buffer(1)]], device const bfloat* v [[buffer(2)]],
    device const float* g [[buffer(3)]], device const float* h0 [[buffer(4)]], device bfloat* o [[buffer(5)]],
    device float* ht [[buffer(6)]], constant LinearAttentionParams& p [[buffer(7)]],
    threadgroup float* smem [[threadgroup(0)]], uint3 group [[threadgroup_position_in_grid]],
    ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]],
    ushort tid [[thread_index_in_threadgroup]])
{
    fused_recurrent(q, k, v, g, h0, o, ht, p, smem, group, sg, lane, tid);
}
