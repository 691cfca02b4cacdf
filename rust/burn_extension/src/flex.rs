//! [`AttentionBackend`] for Burn's Flex backend (native CPU): the tensors' f32 storage goes to the
//! tiled algorithm of [`crate::cpu`] directly; other float dtypes are cast to f32 and back.

use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::{DType, Flex, TensorMetadata, tensor::FloatTensor};
use burn::tensor::{FloatDType, Shape, TensorData};

use crate::{AttentionBackend, AttentionOptions, cpu};

fn as_f32(t: FlexTensor) -> FlexTensor {
    let t = if t.dtype() == DType::F32 { t } else { Flex::float_cast(t, FloatDType::F32) };
    t.to_contiguous()
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 after as_f32")
}

fn tensor(data: Vec<f32>, shape: Vec<usize>, dtype: DType) -> FlexTensor {
    let t = FlexTensor::from_data(TensorData::new(data, Shape::from(shape)));
    match dtype {
        DType::F32 => t,
        other => Flex::float_cast(t, other.into()),
    }
}

fn dims(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, options: &AttentionOptions) -> cpu::Dims {
    crate::check(q.shape().dims(), k.shape().dims(), v.shape().dims(), options).unwrap_or_else(|e| panic!("{e}"))
}

impl AttentionBackend for Flex {
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        options: AttentionOptions,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let d = dims(&q, &k, &v, &options);
        let dtype = q.dtype();
        let (q, k, v) = (as_f32(q), as_f32(k), as_f32(v));
        let (out, lse) = cpu::forward(f32s(&q), f32s(&k), f32s(&v), d, &options);
        let rows = vec![d.batch, d.q_heads, d.q_len];
        let out_shape = vec![d.batch, d.q_heads, d.q_len, d.value_dim];
        (tensor(out, out_shape, dtype), tensor(lse, rows, DType::F32))
    }

    fn flash_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        options: AttentionOptions,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let d = dims(&q, &k, &v, &options);
        let (qs, ks, vs) = (q.shape().to_vec(), k.shape().to_vec(), v.shape().to_vec());
        let (dtq, dtk, dtv) = (q.dtype(), k.dtype(), v.dtype());
        let [q, k, v, out, lse, grad_out] = [q, k, v, out, lse, grad_out].map(as_f32);
        let (dq, dk, dv) =
            cpu::backward(f32s(&q), f32s(&k), f32s(&v), f32s(&out), f32s(&lse), f32s(&grad_out), d, &options);
        (tensor(dq, qs, dtq), tensor(dk, ks, dtk), tensor(dv, vs, dtv))
    }
}
