//! The extension against an FP64 reference written here, against Burn's own attention op, and its
//! gradients against finite differences of the reference and against Burn's autodiff of its own op.
//! Inputs are fresh random numbers each run (`APROTO_TEST_SEED` replays a run; the seed is printed).

use burn::backend::ops::AttentionModuleOptions;
use burn::backend::{DispatchKindConversion, DispatchTensor};
use burn::tensor::{Device, Tensor, TensorData, module};
use burn_extension::{AttentionBackend, AttentionOptions, attention};

/// `[B, Hq, Hkv, Nq, Nk, D, Dv]`
type Case = [usize; 7];

struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Self {
        let seed = std::env::var("APROTO_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        println!("APROTO_TEST_SEED={seed} (salt {salt})");
        Rng(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in [-1, 1) with a random sign bias: never all zeros, never trivial.
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }
}

/// The FP64 reference: `(out, lse)` with the crate's conventions, one row at a time.
fn reference(q: &[f32], k: &[f32], v: &[f32], c: Case, o: &AttentionOptions) -> (Vec<f64>, Vec<f64>) {
    let [b, hq, hkv, nq, nk, d, dv] = c;
    let scale = o.scale.map_or(1.0 / (d as f64).sqrt(), f64::from);
    let shift = nk as i64 - nq as i64;
    let (mut out, mut lse) = (vec![0.0; b * hq * nq * dv], vec![f64::NEG_INFINITY; b * hq * nq]);
    for bh in 0..b * hq {
        let kv = bh / hq * hkv + bh % hq / (hq / hkv);
        for i in 0..nq {
            let row = bh * nq + i;
            let mut s: Vec<f64> = (0..nk)
                .map(|j| {
                    if o.causal && j as i64 > i as i64 + shift {
                        return f64::NEG_INFINITY;
                    }
                    let dot: f64 = (0..d).map(|x| q[row * d + x] as f64 * k[(kv * nk + j) * d + x] as f64).sum();
                    let mut s = scale * dot;
                    if let Some(cap) = o.softcap {
                        s = cap as f64 * (s / cap as f64).tanh();
                    }
                    if let Some(slopes) = &o.alibi_slopes {
                        s += slopes[bh % hq] as f64 * (j as i64 - (i as i64 + shift)) as f64;
                    }
                    s
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            s.iter_mut().for_each(|x| *x = (*x - m).exp());
            let l: f64 = s.iter().sum();
            lse[row] = m + l.ln();
            for (j, p) in s.iter().enumerate() {
                for x in 0..dv {
                    out[row * dv + x] += p / l * v[(kv * nk + j) * dv + x] as f64;
                }
            }
        }
    }
    (out, lse)
}

fn tensor(data: &[f32], shape: &[usize], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape.to_vec()), device)
}

fn values<const N: usize>(t: Tensor<N>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// The lab's two bounds: relative Frobenius norm, and MLX's element-wise `|a - r| <= atol (1 + |r|)`.
/// Infinities must match exactly; every element must be finite or a matching infinity (written).
fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut err, mut norm) = (0.0, 0.0);
    for (i, (&g, &r)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        if r.is_infinite() {
            assert_eq!(g, r, "{what}[{i}]: want {r}, got {g}");
            continue;
        }
        assert!(g.is_finite(), "{what}[{i}]: got {g}, want {r}");
        assert!((g - r).abs() <= atol * (1.0 + r.abs()), "{what}[{i}]: got {g}, want {r}");
        err += (g - r) * (g - r);
        norm += r * r;
    }
    assert!(err.sqrt() <= atol * norm.sqrt().max(1.0), "{what}: norm error {} vs {}", err.sqrt(), norm.sqrt());
}

fn run(c: Case, o: &AttentionOptions, salt: u64) {
    let [b, hq, hkv, nq, nk, d, dv] = c;
    let mut rng = Rng::new(salt);
    let (q, k, v) = (rng.vec(b * hq * nq * d), rng.vec(b * hkv * nk * d), rng.vec(b * hkv * nk * dv));
    let device = Device::flex();
    let (out, lse) = attention(
        tensor(&q, &[b, hq, nq, d], &device),
        tensor(&k, &[b, hkv, nk, d], &device),
        tensor(&v, &[b, hkv, nk, dv], &device),
        &AttentionOptions { return_lse: true, ..o.clone() },
    )
    .unwrap();
    assert_eq!(out.dims(), [b, hq, nq, dv]);
    let (want_out, want_lse) = reference(&q, &k, &v, c, o);
    assert_close(&format!("out {c:?} {o:?}"), &values(out), &want_out, 2e-5);
    assert_close(&format!("lse {c:?} {o:?}"), &values(lse.unwrap()), &want_lse, 2e-5);
}

fn slopes(n: usize) -> Vec<f32> {
    (1..=n).map(|h| 2f32.powf(-8.0 * h as f32 / n as f32)).collect()
}

#[test]
fn forward_shapes_against_fp64() {
    let plain = AttentionOptions::default();
    let causal = AttentionOptions { causal: true, ..Default::default() };
    // Odd lengths around the 32-row / 64-key tiles, Nq != Nk both ways, GQA, MQA, Dv != D.
    let cases: [Case; 9] = [
        [1, 1, 1, 1, 1, 8, 8],
        [2, 3, 3, 7, 33, 16, 16],
        [1, 4, 2, 33, 65, 32, 32],
        [1, 8, 1, 100, 129, 64, 64],
        [1, 2, 2, 65, 31, 24, 40],
        [1, 6, 3, 1, 200, 16, 8],
        [1, 2, 1, 130, 64, 8, 8],
        [2, 2, 2, 64, 64, 128, 128],
        [1, 3, 1, 31, 777, 8, 8],
    ];
    for (n, c) in cases.iter().enumerate() {
        run(*c, &plain, n as u64);
        run(*c, &causal, 100 + n as u64);
    }
}

#[test]
fn forward_each_option_against_fp64() {
    let c = [2, 4, 2, 37, 70, 32, 32];
    let all = [
        AttentionOptions { scale: Some(0.37), ..Default::default() },
        AttentionOptions { scale: Some(-0.2), causal: true, ..Default::default() },
        AttentionOptions { softcap: Some(1.5), scale: Some(2.0), ..Default::default() },
        AttentionOptions { alibi_slopes: Some(slopes(4)), ..Default::default() },
        AttentionOptions { alibi_slopes: Some(slopes(4)), causal: true, ..Default::default() },
        AttentionOptions {
            causal: true,
            scale: Some(0.5),
            softcap: Some(3.0),
            alibi_slopes: Some(slopes(4)),
            ..Default::default()
        },
    ];
    for (n, o) in all.iter().enumerate() {
        run(c, o, 200 + n as u64);
        run([1, 4, 4, 70, 37, 16, 16], o, 300 + n as u64); // Nq > Nk: rows that see no key
    }
}

#[test]
fn lse_only_when_asked_and_f16_inputs() {
    let device = Device::flex();
    let mut rng = Rng::new(400);
    let [q, k, v] = [0, 1, 2].map(|_| rng.vec(2 * 9 * 16));
    let t = |x: &[f32]| tensor(x, &[1, 2, 9, 16], &device);
    let (_, lse) = attention(t(&q), t(&k), t(&v), &AttentionOptions::default()).unwrap();
    assert!(lse.is_none());
    // float16 tensors: computed in f32, output back in float16.
    let half = |x: &[f32]| t(x).cast(burn::tensor::DType::F16);
    let (out, _) = attention(half(&q), half(&k), half(&v), &AttentionOptions::default()).unwrap();
    assert_eq!(out.dtype(), burn::tensor::DType::F16);
    let round = |x: &[f32]| values(half(x));
    let (want, _) =
        reference(&round(&q), &round(&k), &round(&v), [1, 2, 2, 9, 9, 16, 16], &AttentionOptions::default());
    assert_close("f16 out", &values(out), &want, 2e-3);
}

/// Burn's own `attention` op (Flex backend) on the cases it expresses: no GQA, ALiBi as a bias tensor.
#[test]
fn agrees_with_burns_attention_op() {
    let device = Device::flex();
    let cases = [
        (33, 100, AttentionOptions { causal: true, ..Default::default() }),
        (100, 33, AttentionOptions { causal: true, ..Default::default() }),
        (70, 600, AttentionOptions { scale: Some(0.3), softcap: Some(2.0), ..Default::default() }),
        (45, 45, AttentionOptions { alibi_slopes: Some(slopes(3)), causal: true, ..Default::default() }),
    ];
    for (n, (nq, nk, o)) in cases.into_iter().enumerate() {
        let (h, d) = (3, 32);
        let mut rng = Rng::new(500 + n as u64);
        let q = tensor(&rng.vec(h * nq * d), &[1, h, nq, d], &device);
        let k = tensor(&rng.vec(h * nk * d), &[1, h, nk, d], &device);
        let v = tensor(&rng.vec(h * nk * d), &[1, h, nk, d], &device);
        let bias = o.alibi_slopes.as_ref().map(|s| {
            let shift = nk as f32 - nq as f32;
            let b: Vec<f32> = (0..h * nq * nk)
                .map(|x| s[x / (nq * nk)] * ((x % nk) as f32 - ((x / nk % nq) as f32 + shift)))
                .collect();
            tensor(&b, &[1, h, nq, nk], &device)
        });
        let burn_options = AttentionModuleOptions {
            scale: o.scale.map(f64::from),
            softcap: o.softcap.map(f64::from),
            is_causal: o.causal,
        };
        let theirs = module::attention(q.clone(), k.clone(), v.clone(), None, bias, burn_options);
        let (ours, _) = attention(q, k, v, &o).unwrap();
        let theirs: Vec<f64> = values(theirs).into_iter().map(f64::from).collect();
        assert_close(&format!("vs burn {nq}x{nk} {o:?}"), &values(ours), &theirs, 2e-5);
    }
}

/// `d/dx sum(W * out)` of the FP64 reference by central differences, for every element of x.
fn finite_differences(x: &mut [f32], loss: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            let h = 1e-2f32;
            x[i] = x0 + h;
            let up = loss(x);
            x[i] = x0 - h;
            let down = loss(x);
            x[i] = x0;
            (up - down) / (2.0 * h as f64)
        })
        .collect()
}

#[test]
fn gradients_against_finite_differences() {
    let options = [
        AttentionOptions { causal: true, ..Default::default() },
        AttentionOptions {
            softcap: Some(0.8),
            scale: Some(1.3),
            alibi_slopes: Some(vec![0.5, 0.25, 0.125, 0.0625]),
            ..Default::default()
        },
        AttentionOptions {
            causal: true,
            softcap: Some(2.0),
            alibi_slopes: Some(vec![0.3, 0.1, 0.7, 0.2]),
            ..Default::default()
        },
    ];
    for (n, o) in options.iter().enumerate() {
        // GQA 4:2, Nq > Nk so some rows see no key under the causal mask, keys across a 64-key tile edge.
        let c = [1, 4, 2, 7 + n, 66, 8, 8];
        let [b, hq, hkv, nq, nk, d, dv] = c;
        let mut rng = Rng::new(600 + n as u64);
        let (mut q, mut k, mut v) = (rng.vec(b * hq * nq * d), rng.vec(b * hkv * nk * d), rng.vec(b * hkv * nk * dv));
        let w = rng.vec(b * hq * nq * dv);
        let device = Device::flex().autodiff();
        let [tq, tk, tv] = [(&q, [b, hq, nq, d]), (&k, [b, hkv, nk, d]), (&v, [b, hkv, nk, dv])]
            .map(|(x, s)| tensor(x, &s, &device).require_grad());
        let (out, _) = attention(tq.clone(), tk.clone(), tv.clone(), o).unwrap();
        let grads = (out * tensor(&w, &[b, hq, nq, dv], &device)).sum().backward();
        let got = [&tq, &tk, &tv].map(|t| values(t.grad(&grads).expect("tracked input has a gradient")));
        let loss = |q: &[f32], k: &[f32], v: &[f32]| {
            reference(q, k, v, c, o).0.iter().zip(&w).map(|(o, w)| o * *w as f64).sum::<f64>()
        };
        let (q0, k0, v0) = (q.clone(), k.clone(), v.clone());
        let want = [
            finite_differences(&mut q, |x| loss(x, &k0, &v0)),
            finite_differences(&mut k, |x| loss(&q0, x, &v0)),
            finite_differences(&mut v, |x| loss(&q0, &k0, x)),
        ];
        for (name, (g, r)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
            assert_close(&format!("{name} {o:?}"), g, r, 2e-3);
        }
    }
}

/// Burn's autodiff through its own attention op (GQA expanded by repeating kv heads) gives the same
/// gradients as the extension's backward at a size finite differences would be slow for.
#[test]
fn gradients_against_burn_autodiff() {
    let [b, hq, hkv, nq, nk, d] = [2, 4, 2, 50, 130, 32];
    let o = AttentionOptions { causal: true, softcap: Some(4.0), ..Default::default() };
    let device = Device::flex().autodiff();
    let mut rng = Rng::new(700);
    let w = tensor(&rng.vec(b * hq * nq * d), &[b, hq, nq, d], &device);
    let [q, k, v] =
        [(hq, nq), (hkv, nk), (hkv, nk)].map(|(h, n)| tensor(&rng.vec(b * h * n * d), &[b, h, n, d], &device));
    let grads_of = |ours: bool| {
        let [q, k, v] = [&q, &k, &v].map(|t| t.clone().detach().require_grad());
        let out = if ours {
            attention(q.clone(), k.clone(), v.clone(), &o).unwrap().0
        } else {
            let expand = |t: Tensor<4>| t.unsqueeze_dim::<5>(2).repeat_dim(2, hq / hkv).reshape([b, hq, nk, d]);
            let options = AttentionModuleOptions { scale: None, softcap: o.softcap.map(f64::from), is_causal: true };
            module::attention(q.clone(), expand(k.clone()), expand(v.clone()), None, None, options)
        };
        let grads = (out * w.clone()).sum().backward();
        [&q, &k, &v].map(|t| values(t.grad(&grads).unwrap()))
    };
    let (ours, theirs) = (grads_of(true), grads_of(false));
    for (name, (g, r)) in ["dq", "dk", "dv"].iter().zip(ours.iter().zip(&theirs)) {
        let r: Vec<f64> = r.iter().map(|x| *x as f64).collect();
        assert_close(name, g, &r, 1e-4);
    }
}

/// Code generic over the trait: the same function runs on Flex and on Autodiff<Flex> primitives. Burn
/// implements the dispatch conversion per concrete backend, so generic code names that bound.
fn generic_row_sum<B: AttentionBackend>(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Vec<f32>
where
    DispatchTensor: DispatchKindConversion<B>,
{
    let [q, k, v] = [q, k, v].map(|t| t.try_into_primitive::<B>().expect("tensor on backend B"));
    let (out, _) = B::flash_attention(q, k, v, AttentionOptions::default());
    values(Tensor::<4>::from_primitive::<B>(out).sum_dim(3))
}

#[test]
fn generic_code_over_backends_and_dispatch() {
    use burn::backend::{Autodiff, Flex};
    let mut rng = Rng::new(800);
    let data = [0, 1, 2].map(|_| rng.vec(2 * 5 * 8));
    let on = |device: &Device| data.clone().map(|x| tensor(&x, &[1, 2, 5, 8], device));
    let [q, k, v] = on(&Device::flex());
    let plain = generic_row_sum::<Flex>(q, k, v);
    let [q, k, v] = on(&Device::flex().autodiff());
    let tracked = generic_row_sum::<Autodiff<Flex>>(q, k, v);
    assert_eq!(plain, tracked);
    let [q, k, v] = on(&Device::flex());
    let wrong = std::panic::catch_unwind(|| generic_row_sum::<Autodiff<Flex>>(q, k, v));
    assert!(wrong.is_err(), "a Flex tensor is not an Autodiff<Flex> primitive");
}

#[test]
fn clear_errors_for_bad_input() {
    let device = Device::flex();
    let z = |s: [usize; 4]| Tensor::<4>::ones(s, &device);
    let ok = AttentionOptions::default();
    let cases: [(Tensor<4>, Tensor<4>, Tensor<4>, AttentionOptions, &str, &str); 8] = [
        (z([1, 2, 3, 8]), z([2, 2, 3, 8]), z([2, 2, 3, 8]), ok.clone(), "k", "must be [B=1"),
        (z([1, 2, 3, 8]), z([1, 2, 3, 4]), z([1, 2, 3, 8]), ok.clone(), "k", "D=8"),
        (z([1, 2, 3, 8]), z([1, 2, 3, 8]), z([1, 2, 4, 8]), ok.clone(), "v", "matching k"),
        (z([1, 3, 3, 8]), z([1, 2, 3, 8]), z([1, 2, 3, 8]), ok.clone(), "k", "do not divide"),
        (z([1, 2, 0, 8]), z([1, 2, 3, 8]), z([1, 2, 3, 8]), ok.clone(), "q", ">= 1"),
        (
            z([1, 2, 3, 8]),
            z([1, 2, 3, 8]),
            z([1, 2, 3, 8]),
            AttentionOptions { alibi_slopes: Some(vec![1.0]), ..ok.clone() },
            "alibi_slopes",
            "one slope per query head (2)",
        ),
        (
            z([1, 2, 3, 8]),
            z([1, 2, 3, 8]),
            z([1, 2, 3, 8]),
            AttentionOptions { softcap: Some(0.0), ..ok.clone() },
            "softcap",
            "> 0",
        ),
        (
            z([1, 2, 3, 8]),
            z([1, 2, 3, 8]),
            z([1, 2, 3, 8]),
            AttentionOptions { scale: Some(f32::NAN), ..ok.clone() },
            "scale",
            "finite",
        ),
    ];
    for (q, k, v, o, argument, text) in cases {
        let err = attention(q, k, v, &o).unwrap_err();
        assert_eq!(err.argument, argument, "{err}");
        assert!(err.to_string().contains(text), "{err}");
    }
}
