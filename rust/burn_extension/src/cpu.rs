//! The CPU algorithm on plain `f32` slices: a tiled online-softmax forward (flash attention's) and a
//! backward pass that recomputes the probabilities from the saved logsumexp instead of storing them.
//!
//! Layouts are contiguous `[B, H, N, D]`; every `(batch, head)` pair (forward) or `(batch, kv head)`
//! group (backward) owns disjoint output rows, so the work is split across threads by those chunks.

use rayon::prelude::*;

use crate::AttentionOptions;

/// Query rows per tile: one tile's scores are `BLOCK_Q x BLOCK_K` floats (8 KB), L1-resident.
pub const BLOCK_Q: usize = 32;
/// Keys per tile.
pub const BLOCK_K: usize = 64;

/// Sizes of one call, read from the tensors' shapes.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
    pub value_dim: usize,
}

/// The score rule shared by forward and backward: scale, softcap, ALiBi, causal mask.
struct Scores<'a> {
    scale: f32,
    softcap: Option<f32>,
    slopes: Option<&'a [f32]>,
    causal: bool,
    /// Bottom-right alignment: query i sees keys `j <= i + shift`.
    shift: isize,
}

impl<'a> Scores<'a> {
    fn new(d: &Dims, options: &'a AttentionOptions) -> Self {
        Scores {
            scale: options.scale.unwrap_or(1.0 / (d.head_dim as f32).sqrt()),
            softcap: options.softcap,
            slopes: options.alibi_slopes.as_deref(),
            causal: options.causal,
            shift: d.kv_len as isize - d.q_len as isize,
        }
    }

    /// The last key query `i` sees plus one (`kv_len` without a causal mask).
    fn key_end(&self, i: usize, kv_len: usize) -> usize {
        if self.causal { (i as isize + self.shift + 1).clamp(0, kv_len as isize) as usize } else { kv_len }
    }

    /// The final score of query `i` (of head `h`) and key `j` from their dot product, and the
    /// derivative of that score with respect to the dot product (softcap's tanh chain rule).
    fn score(&self, dot: f32, h: usize, i: usize, j: usize) -> (f32, f32) {
        let mut s = self.scale * dot;
        let mut ds = self.scale;
        if let Some(cap) = self.softcap {
            let t = (s / cap).tanh();
            s = cap * t;
            ds *= 1.0 - t * t;
        }
        if let Some(slopes) = self.slopes {
            s += slopes[h] * (j as isize - (i as isize + self.shift)) as f32;
        }
        (s, ds)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x);
}

/// Forward: returns the output `[B, Hq, Nq, Dv]` and the natural-log logsumexp `[B, Hq, Nq]` of
/// each row's final scores. A row that sees no key has output 0 and logsumexp `-inf`.
pub fn forward(q: &[f32], k: &[f32], v: &[f32], d: Dims, options: &AttentionOptions) -> (Vec<f32>, Vec<f32>) {
    let rule = Scores::new(&d, options);
    let group = d.q_heads / d.kv_heads;
    let mut out = vec![0.0f32; d.batch * d.q_heads * d.q_len * d.value_dim];
    let mut lse = vec![f32::NEG_INFINITY; d.batch * d.q_heads * d.q_len];
    out.par_chunks_mut(d.q_len * d.value_dim).zip(lse.par_chunks_mut(d.q_len)).enumerate().for_each(
        |(bh, (out, lse))| {
            let (b, h) = (bh / d.q_heads, bh % d.q_heads);
            let kv = b * d.kv_heads + h / group;
            let q = &q[bh * d.q_len * d.head_dim..][..d.q_len * d.head_dim];
            let k = &k[kv * d.kv_len * d.head_dim..][..d.kv_len * d.head_dim];
            let v = &v[kv * d.kv_len * d.value_dim..][..d.kv_len * d.value_dim];
            for i0 in (0..d.q_len).step_by(BLOCK_Q) {
                let rows = BLOCK_Q.min(d.q_len - i0);
                forward_tile(&rule, h, i0, rows, q, k, v, &d, out, lse);
            }
        },
    );
    (out, lse)
}

/// One tile of `rows` queries from `i0`: walks the key tiles it sees with a running max `m` and
/// running sum `l` per row, rescaling the accumulator whenever the max grows.
#[allow(clippy::too_many_arguments)]
fn forward_tile(
    rule: &Scores,
    h: usize,
    i0: usize,
    rows: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: &Dims,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (hd, vd) = (d.head_dim, d.value_dim);
    let mut m = [f32::NEG_INFINITY; BLOCK_Q];
    let mut l = [0.0f32; BLOCK_Q];
    let mut p = [0.0f32; BLOCK_K];
    let acc = &mut out[i0 * vd..(i0 + rows) * vd];
    let tile_end = rule.key_end(i0 + rows - 1, d.kv_len);
    for j0 in (0..tile_end).step_by(BLOCK_K) {
        for r in 0..rows {
            let i = i0 + r;
            let end = rule.key_end(i, d.kv_len).min(j0 + BLOCK_K);
            if end <= j0 {
                continue; // this row sees no key of the tile
            }
            let qi = &q[i * hd..][..hd];
            let mut tile_max = f32::NEG_INFINITY;
            for j in j0..end {
                let s = rule.score(dot(qi, &k[j * hd..][..hd]), h, i, j).0;
                p[j - j0] = s;
                tile_max = tile_max.max(s);
            }
            let new_m = m[r].max(tile_max);
            let correction = (m[r] - new_m).exp(); // 0 on the first tile: m = -inf
            let row = &mut acc[r * vd..][..vd];
            row.iter_mut().for_each(|x| *x *= correction);
            l[r] *= correction;
            for j in j0..end {
                let pj = (p[j - j0] - new_m).exp();
                l[r] += pj;
                axpy(pj, &v[j * vd..][..vd], row);
            }
            m[r] = new_m;
        }
    }
    for r in 0..rows {
        if l[r] > 0.0 {
            acc[r * vd..][..vd].iter_mut().for_each(|x| *x /= l[r]);
            lse[i0 + r] = m[r] + l[r].ln();
        }
    }
}

/// Backward from the saved logsumexp: `P = exp(S - lse)`, `dV = P^T dO`, `dS = P * (dO V^T - rowsum(dO * O))`,
/// then through softcap and the scale to `dQ = dS K`, `dK = dS^T Q`. GQA sums the group's query heads
/// into their shared key/value head. Returns `(dq, dk, dv)` in the layouts of q, k, v.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    grad_out: &[f32],
    d: Dims,
    options: &AttentionOptions,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rule = Scores::new(&d, options);
    let group = d.q_heads / d.kv_heads;
    let (hd, vd) = (d.head_dim, d.value_dim);
    // delta_i = dO_i . O_i, the softmax Jacobian's row term.
    let delta: Vec<f32> = grad_out.chunks(vd).zip(out.chunks(vd)).map(|(g, o)| dot(g, o)).collect();
    let mut dq = vec![0.0f32; q.len()];
    let mut dk = vec![0.0f32; k.len()];
    let mut dv = vec![0.0f32; v.len()];
    let q_rows = d.q_len * hd;
    dq.par_chunks_mut(group * q_rows)
        .zip(dk.par_chunks_mut(d.kv_len * hd))
        .zip(dv.par_chunks_mut(d.kv_len * vd))
        .enumerate()
        .for_each(|(kv, ((dq, dk), dv))| {
            let k = &k[kv * d.kv_len * hd..][..d.kv_len * hd];
            let v = &v[kv * d.kv_len * vd..][..d.kv_len * vd];
            let b = kv / d.kv_heads;
            for g in 0..group {
                let h = (kv % d.kv_heads) * group + g;
                let bh = b * d.q_heads + h;
                let rows = bh * d.q_len;
                let dq = &mut dq[g * q_rows..][..q_rows];
                for j0 in (0..d.kv_len).step_by(BLOCK_K) {
                    let j1 = (j0 + BLOCK_K).min(d.kv_len);
                    for i in 0..d.q_len {
                        let end = rule.key_end(i, d.kv_len).min(j1);
                        let row_lse = lse[rows + i];
                        if end <= j0 || row_lse == f32::NEG_INFINITY {
                            continue;
                        }
                        let qi = &q[(rows + i) * hd..][..hd];
                        let gi = &grad_out[(rows + i) * vd..][..vd];
                        for j in j0..end {
                            let kj = &k[j * hd..][..hd];
                            let (s, ds_ddot) = rule.score(dot(qi, kj), h, i, j);
                            let p = (s - row_lse).exp();
                            axpy(p, gi, &mut dv[j * vd..][..vd]);
                            let dp = dot(gi, &v[j * vd..][..vd]);
                            let ddot = p * (dp - delta[rows + i]) * ds_ddot;
                            axpy(ddot, kj, &mut dq[i * hd..][..hd]);
                            axpy(ddot, qi, &mut dk[j * hd..][..hd]);
                        }
                    }
                }
            }
        });
    (dq, dk, dv)
}
