//! The bridge to the Python lab: runs one attention call on the Flex backend (the extension, or
//! Burn's own `attention` op) on inputs read from files, writes the outputs next to them and prints
//! the per-run times as one JSON line.
//!
//! ```text
//! burn_attention --dir D --shape B,Hq,Hkv,Nq,Nk,D,Dv [--impl extension|burn] [--causal]
//!                [--scale S] [--softcap C] [--alibi s0,s1,..] [--grad] [--repeat N] [--warmup W]
//! ```
//! Reads `D/q.f32`, `D/k.f32`, `D/v.f32` (and `D/dout.f32` with `--grad`: forward + backward through
//! autodiff), raw little-endian float32 in `[B, H, N, D]` order; writes `out.f32` (+ `lse.f32` for the
//! extension, `dq.f32`, `dk.f32`, `dv.f32` with `--grad`).

use std::{fs, path::PathBuf, time::Instant};

use burn::backend::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor, TensorData, module};
use burn_extension::{AttentionOptions, attention};

struct Args {
    dir: PathBuf,
    shape: [usize; 7],
    burn: bool,
    grad: bool,
    repeat: usize,
    warmup: usize,
    options: AttentionOptions,
}

fn numbers<T: std::str::FromStr>(s: &str, what: &str) -> Vec<T> {
    s.split(',').map(|x| x.parse().unwrap_or_else(|_| fail(&format!("{what}: bad number {x:?}")))).collect()
}

fn fail(message: &str) -> ! {
    eprintln!("burn_attention: {message}");
    std::process::exit(2)
}

fn parse() -> Args {
    let mut args = Args {
        dir: PathBuf::new(),
        shape: [0; 7],
        burn: false,
        grad: false,
        repeat: 1,
        warmup: 0,
        options: AttentionOptions { return_lse: true, ..Default::default() },
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--dir" => args.dir = value().into(),
            "--shape" => {
                args.shape = numbers(&value(), "--shape").try_into().unwrap_or_else(|_| fail("--shape needs 7 sizes"))
            }
            "--impl" => args.burn = value() == "burn",
            "--causal" => args.options.causal = true,
            "--grad" => args.grad = true,
            "--scale" => args.options.scale = Some(numbers(&value(), "--scale")[0]),
            "--softcap" => args.options.softcap = Some(numbers(&value(), "--softcap")[0]),
            "--alibi" => args.options.alibi_slopes = Some(numbers(&value(), "--alibi")),
            "--repeat" => args.repeat = numbers(&value(), "--repeat")[0],
            "--warmup" => args.warmup = numbers(&value(), "--warmup")[0],
            other => fail(&format!("unknown argument {other}")),
        }
    }
    if args.dir.as_os_str().is_empty() || args.shape.contains(&0) {
        fail("--dir and --shape are required");
    }
    args
}

fn read(args: &Args, name: &str, shape: [usize; 4], device: &Device) -> Tensor<4> {
    let path = args.dir.join(name);
    let bytes = fs::read(&path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    let data: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    if data.len() != shape.iter().product::<usize>() {
        fail(&format!("{name}: {} floats for shape {shape:?}", data.len()));
    }
    Tensor::from_data(TensorData::new(data, shape.to_vec()), device)
}

fn write<const N: usize>(args: &Args, name: &str, t: Tensor<N>) {
    let data = t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    fs::write(args.dir.join(name), bytes).unwrap_or_else(|e| fail(&format!("{name}: {e}")));
}

/// Burn's own op: kv heads repeated for GQA, ALiBi as a `[B, Hq, Nq, Nk]` bias tensor.
fn burn_attention(args: &Args, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, bias: Option<Tensor<4>>) -> Tensor<4> {
    let [b, hq, hkv, _, nk, d, dv] = args.shape;
    let expand = |t: Tensor<4>, dim| t.unsqueeze_dim::<5>(2).repeat_dim(2, hq / hkv).reshape([b, hq, nk, dim]);
    let (k, v) = if hq == hkv { (k, v) } else { (expand(k, d), expand(v, dv)) };
    let o = &args.options;
    let options = AttentionModuleOptions {
        scale: o.scale.map(f64::from),
        softcap: o.softcap.map(f64::from),
        is_causal: o.causal,
    };
    module::attention(q, k, v, None, bias, options)
}

fn alibi_bias(args: &Args, device: &Device) -> Option<Tensor<4>> {
    let [b, hq, _, nq, nk, _, _] = args.shape;
    let slopes = args.options.alibi_slopes.as_ref()?;
    let shift = nk as f32 - nq as f32;
    let bias: Vec<f32> = (0..b * hq * nq * nk)
        .map(|x| slopes[x / (nq * nk) % hq] * ((x % nk) as f32 - ((x / nk % nq) as f32 + shift)))
        .collect();
    Some(Tensor::from_data(TensorData::new(bias, vec![b, hq, nq, nk]), device))
}

fn main() {
    let args = parse();
    let [b, hq, hkv, nq, nk, d, dv] = args.shape;
    let device = if args.grad { Device::flex().autodiff() } else { Device::flex() };
    let q = read(&args, "q.f32", [b, hq, nq, d], &device);
    let k = read(&args, "k.f32", [b, hkv, nk, d], &device);
    let v = read(&args, "v.f32", [b, hkv, nk, dv], &device);
    let dout = args.grad.then(|| read(&args, "dout.f32", [b, hq, nq, dv], &device));
    let bias = if args.burn { alibi_bias(&args, &device) } else { None };
    let mut seconds = Vec::new();
    for run in 0..args.warmup + args.repeat {
        let [q, k, v] = [&q, &k, &v].map(|t| if args.grad { t.clone().require_grad() } else { t.clone() });
        let start = Instant::now();
        let (out, lse) = if args.burn {
            (burn_attention(&args, q.clone(), k.clone(), v.clone(), bias.clone()), None)
        } else {
            attention(q.clone(), k.clone(), v.clone(), &args.options).unwrap_or_else(|e| fail(&e.to_string()))
        };
        let grads = dout.as_ref().map(|w| (out.clone() * w.clone()).sum().backward());
        if run >= args.warmup {
            seconds.push(start.elapsed().as_secs_f64());
        }
        if run + 1 == args.warmup + args.repeat {
            write(&args, "out.f32", out);
            if let Some(lse) = lse {
                write(&args, "lse.f32", lse);
            }
            if let Some(grads) = grads {
                for (name, t) in [("dq.f32", &q), ("dk.f32", &k), ("dv.f32", &v)] {
                    write(&args, name, t.grad(&grads).unwrap_or_else(|| fail("no gradient")));
                }
            }
        }
    }
    let impl_name = if args.burn { "burn" } else { "extension" };
    let list: Vec<String> = seconds.iter().map(|s| format!("{s:.9}")).collect();
    println!("{{\"impl\": \"{impl_name}\", \"grad\": {}, \"seconds\": [{}]}}", args.grad, list.join(", "));
}
