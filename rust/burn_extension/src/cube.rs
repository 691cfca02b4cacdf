//! The CubeCL kernel: the same online-softmax forward as [`crate::cpu`], written once in `#[cube]` Rust
//! for every CubeCL runtime (wgpu/Metal, cubecl-metal, CUDA, ROCm, the CPU runtime).
//!
//! One unit computes one query row: it walks the keys the row sees with a running max and sum and
//! keeps the `Dv` accumulator in registers (a comptime-sized array). This is the portable baseline;
//! an 8x8 `cmma` tile version (simdgroup_matrix on Metal) is future work (rust/README.md). It is
//! compiled on every build; it runs where a CubeCL runtime runs (none on the Linux CI machine:
//! cubecl-cpu needs a downloaded LLVM, wgpu needs a GPU adapter).

use cubecl::prelude::*;

/// Units per cube: 32 rows, one SIMD-group on Apple GPUs.
pub const ROWS_PER_CUBE: u32 = 32;

/// q, out `[B, Hq, Nq, D|Dv]`, k, v `[B, Hkv, Nk, D|Dv]`, contiguous; `slopes` one per query head (any
/// length-1 buffer without ALiBi); lse `[B, Hq, Nq]`; `group` = Hq / Hkv.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_rows<F: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    slopes: &[f32],
    out: &mut [F],
    lse: &mut [f32],
    q_heads: usize,
    group: usize,
    q_len: usize,
    kv_len: usize,
    scale: f32,
    softcap: f32,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] causal: bool,
    #[comptime] use_softcap: bool,
    #[comptime] use_alibi: bool,
) {
    let row = ABSOLUTE_POS;
    if row >= lse.len() {
        terminate!();
    }
    let i = row % q_len;
    let bh = row / q_len;
    let h = bh % q_heads;
    let kv = bh / q_heads * (q_heads / group) + h / group;
    // Bottom-right aligned mask: query i sees keys j < i + 1 + Nk - Nq (none when that is <= 0).
    let mut end = kv_len;
    if causal {
        end = if i + kv_len < q_len { 0usize } else { (i + 1 + kv_len - q_len).min(kv_len) };
    }
    let mut acc = Array::<f32>::new(value_dim);
    for x in 0..value_dim {
        acc[x] = 0.0f32;
    }
    let mut m = f32::cast_from(f32::NEG_INFINITY);
    let mut l = f32::cast_from(0.0f32);
    for j in 0..end {
        let mut dot = 0.0f32;
        for x in 0..head_dim {
            dot += f32::cast_from(q[row * head_dim + x]) * f32::cast_from(k[(kv * kv_len + j) * head_dim + x]);
        }
        let mut s = scale * dot;
        if use_softcap {
            s = softcap * (s / softcap).tanh();
        }
        if use_alibi {
            s += slopes[h] * (f32::cast_from(j) - f32::cast_from(i + kv_len) + f32::cast_from(q_len));
        }
        let new_m = if s > m { s } else { m };
        let correction = (m - new_m).exp();
        let p = (s - new_m).exp();
        l = l * correction + p;
        for x in 0..value_dim {
            acc[x] = acc[x] * correction + p * f32::cast_from(v[(kv * kv_len + j) * value_dim + x]);
        }
        m = new_m;
    }
    let inv = if l > 0.0f32 { 1.0f32 / l } else { 0.0f32 };
    for x in 0..value_dim {
        out[row * value_dim + x] = F::cast_from(acc[x] * inv);
    }
    lse[row] = if l > 0.0f32 { m + l.ln() } else { f32::cast_from(f32::NEG_INFINITY) };
}

/// Cubes for `rows` query rows.
pub fn cube_count(rows: usize) -> CubeCount {
    CubeCount::Static(rows.div_ceil(ROWS_PER_CUBE as usize) as u32, 1, 1)
}
