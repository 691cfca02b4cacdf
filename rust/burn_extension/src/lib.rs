//! Prototype 8: attention as a Burn backend extension.
//!
//! [`AttentionBackend`] extends Burn's `Backend` with a flash-attention forward (output and
//! logsumexp) and its backward. `#[backend_extension]` (Burn 0.22's form) generates the `Dispatch`
//! routing, so the user-facing [`attention`] takes Burn's backend-free `Tensor`s and runs on whichever
//! backend their device selects: Flex (native CPU, [`cpu`]), `Autodiff` over it ([`autodiff`]), and,
//! with the `cube` feature, Burn's CubeCL backend (`cube`, the path to Metal).
//!
//! Conventions (the lab's): q `[B, Hq, Nq, D]`, k `[B, Hkv, Nk, D]`, v `[B, Hkv, Nk, Dv]`; query head
//! `h` reads kv head `h / (Hq / Hkv)`; causal masks are bottom-right aligned (query i sees keys
//! `j <= i + Nk - Nq`); the score is `scale * q.k`, then softcap `c * tanh(s / c)`, then ALiBi
//! `slope_h * (j - (i + Nk - Nq))`. A row that sees no key has output 0 and logsumexp `-inf`.

use burn::backend::{Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;

pub mod autodiff;
pub mod cpu;
#[cfg(feature = "cube")]
pub mod cube;
mod flex;

/// What an attention call computes besides `softmax(scale * Q K^T) V`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttentionOptions {
    /// Bottom-right aligned causal mask.
    pub causal: bool,
    /// Softmax scale; `1 / sqrt(D)` when `None`.
    pub scale: Option<f32>,
    /// Gemma-2 style logit cap `c`: scores become `c * tanh(s / c)` (before ALiBi).
    pub softcap: Option<f32>,
    /// One ALiBi slope per query head.
    pub alibi_slopes: Option<Vec<f32>>,
    /// Also return the logsumexp `[B, Hq, Nq]` (natural log, float32).
    pub return_lse: bool,
}

/// Attention as an extension of Burn's `Backend`. Inputs are valid by contract: [`attention`]
/// checks them. Gradients flow through `out` only; the logsumexp is returned detached.
#[backend_extension(Flex, Autodiff)]
pub trait AttentionBackend: burn::backend::Backend {
    /// Returns `(out [B, Hq, Nq, Dv], lse [B, Hq, Nq] float32)`.
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        options: AttentionOptions,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients `(dq, dk, dv)` from the forward's `out`, `lse` and the output gradient,
    /// recomputing the probabilities from `lse` (flash attention's backward).
    #[allow(clippy::too_many_arguments)]
    fn flash_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        options: AttentionOptions,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// A rejected call: which argument and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttentionError {
    pub argument: &'static str,
    pub message: String,
}

impl std::fmt::Display for AttentionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[burn_extension] {}: {}", self.argument, self.message)
    }
}

impl std::error::Error for AttentionError {}

fn reject<T>(argument: &'static str, message: String) -> Result<T, AttentionError> {
    Err(AttentionError { argument, message })
}

/// Checks shapes and options before anything runs; returns the call's sizes.
pub fn check(
    q: [usize; 4],
    k: [usize; 4],
    v: [usize; 4],
    options: &AttentionOptions,
) -> Result<cpu::Dims, AttentionError> {
    let [batch, q_heads, q_len, head_dim] = q;
    let [kb, kv_heads, kv_len, kd] = k;
    if q.contains(&0) {
        return reject("q", format!("every dimension must be >= 1, got {q:?}"));
    }
    if k.contains(&0) || v.contains(&0) {
        return reject("k", format!("k {k:?} and v {v:?} need every dimension >= 1"));
    }
    if kb != batch || kd != head_dim {
        return reject("k", format!("shape {k:?} must be [B={batch}, Hkv, Nk, D={head_dim}]"));
    }
    if v[..3] != k[..3] {
        return reject("v", format!("shape {v:?} must be [B, Hkv, Nk, Dv] matching k {k:?}"));
    }
    if q_heads % kv_heads != 0 {
        return reject("k", format!("{kv_heads} kv heads do not divide {q_heads} query heads"));
    }
    if let Some(scale) = options.scale
        && !(scale.is_finite() && scale != 0.0)
    {
        return reject("scale", format!("must be finite and non-zero, got {scale}"));
    }
    if let Some(cap) = options.softcap
        && !(cap.is_finite() && cap > 0.0)
    {
        return reject("softcap", format!("must be finite and > 0, got {cap}"));
    }
    if let Some(slopes) = &options.alibi_slopes {
        if slopes.len() != q_heads {
            return reject("alibi_slopes", format!("needs one slope per query head ({q_heads}), got {}", slopes.len()));
        }
        if let Some(bad) = slopes.iter().find(|s| !s.is_finite()) {
            return reject("alibi_slopes", format!("slopes must be finite, got {bad}"));
        }
    }
    Ok(cpu::Dims { batch, q_heads, kv_heads, q_len, kv_len, head_dim, value_dim: v[3] })
}

/// Attention on Burn tensors of any backend that implements [`AttentionBackend`]: the output
/// `[B, Hq, Nq, Dv]`, and the logsumexp `[B, Hq, Nq]` when `options.return_lse`.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    options: &AttentionOptions,
) -> Result<(Tensor<4>, Option<Tensor<3>>), AttentionError> {
    check(q.dims(), k.dims(), v.dims(), options)?;
    let (out, lse) =
        Dispatch::flash_attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch(), options.clone());
    let lse = options.return_lse.then(|| Tensor::from_dispatch(lse));
    Ok((Tensor::from_dispatch(out), lse))
}
