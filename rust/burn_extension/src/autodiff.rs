//! [`AttentionBackend`] for `Autodiff<B>` over any backend that implements it: the forward runs the
//! inner backend's kernel and registers one backward step that calls the inner backend's
//! `flash_attention_backward` (recompute from the logsumexp; nothing `[Nq, Nk]`-sized is kept).

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{AutodiffBackend, tensor::FloatTensor};

use crate::{AttentionBackend, AttentionOptions};

/// The backward step's state: the inner backend's q, k, v, out, lse, and the options.
type Saved<B> = ([FloatTensor<B>; 5], AttentionOptions);

#[derive(Debug)]
struct FlashAttentionBackward;

impl<B: AttentionBackend> Backward<B, 3> for FlashAttentionBackward {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let ([q, k, v, out, lse], options) = ops.state;
        let grad_out = grads.consume::<B>(&ops.node);
        let (dq, dk, dv) = B::flash_attention_backward(q, k, v, out, lse, grad_out, options);
        for (parent, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: AttentionBackend, C: CheckpointStrategy> AttentionBackend for Autodiff<B, C> {
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        options: AttentionOptions,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let prep = FlashAttentionBackward.prepare::<C>([q.node(), k.node(), v.node()]);
        let [q, k, v] = [q, k, v].map(|t| t.into_primitive());
        let detached = |lse| <Self as AutodiffBackend>::from_inner(lse);
        match prep.compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, lse) = B::flash_attention(q.clone(), k.clone(), v.clone(), options.clone());
                let saved = ([q, k, v, out.clone(), lse.clone()], options);
                (prep.finish(saved, out), detached(lse))
            }
            OpsKind::UnTracked(prep) => {
                let (out, lse) = B::flash_attention(q, k, v, options);
                (prep.finish(out), detached(lse))
            }
        }
    }

    /// First-order only: the gradients of the backward pass itself are not tracked.
    fn flash_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        options: AttentionOptions,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [q, k, v, out, lse, grad_out] = [q, k, v, out, lse, grad_out].map(|t| t.into_primitive());
        let (dq, dk, dv) = B::flash_attention_backward(q, k, v, out, lse, grad_out, options);
        let [dq, dk, dv] = [dq, dk, dv].map(<Self as AutodiffBackend>::from_inner);
        (dq, dk, dv)
    }
}
