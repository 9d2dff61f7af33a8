//! Hot-kernel micro-benchmarks on the CPU (Flex) backend, plain `std::time` (no criterion).
//!
//! ```text
//! cargo bench --bench kernels                 # all
//! cargo bench --bench kernels -- conv linear  # only cases whose name contains one of the words
//! KILN_BENCH_ITERS=10 cargo bench --bench kernels
//! ```
//! Shapes are those of SD 1.5 at 512×512 with CFG (batch 2, first UNet level: 320 channels,
//! 64×64 = 4096 tokens, 8 heads of 40). Each case: 1 warm-up, then N timed iterations (default 5);
//! prints min and median ms and GFLOP/s (2·MACs; attention counts QKᵀ and PV) or GB/s for the
//! memory-bound ones (bytes read + written once, the ideal). The DALL·E decoder steps
//! (`kernels/dalle.rs`: one image with super-conditioning = 2 rows, at position 128) report GB/s
//! of weights read once per step (a one-token step is bandwidth-bound): the tiny fixture model,
//! and mini's width (d 1024, 16 heads, GLU 2730, 16385-row lm_head) with 2 of its 12 layers,
//! random weights.

use std::time::Instant;

use burn::backend::Flex;
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Distribution, Tensor};
use kiln::nn::{Conv2d, GroupNorm, Linear, WeightLayout, sdpa, sdpa_for, silu};
use kiln::schedulers::{EulerDiscrete, Scheduler, SchedulerConfig};

type B = Flex;

#[path = "kernels/dalle.rs"]
mod dalle;

fn sync(d: &burn::tensor::Device<B>) {
    let _ = B::sync(d);
}

fn bench(name: &str, filter: &[String], iters: usize, work: f64, unit: &str, mut f: impl FnMut()) {
    if !filter.is_empty() && !filter.iter().any(|w| name.contains(w.as_str())) {
        return;
    }
    f();
    let mut ts: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (min, med) = (ts[0], ts[ts.len() / 2]);
    println!(
        "{name:<44} min {:>9.3} ms  median {:>9.3} ms  {:>8.1} {unit} (at median)",
        min * 1e3,
        med * 1e3,
        work / med / 1e9
    );
}

fn main() {
    kiln::tune_allocator();
    // `cargo bench` passes `--bench`; keep the other words as name filters.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let iters: usize = std::env::var("KILN_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let d = Default::default();
    println!(
        "kiln kernels, Flex backend, rayon threads = {}, {iters} timed iterations",
        rayon_threads()
    );
    let n = Distribution::Normal(0.0, 1.0);

    // Attention: self [2,8,4096,40] and cross (77 keys).
    let (b, h, s, dh) = (2usize, 8usize, 4096usize, 40usize);
    let q = Tensor::<B, 4>::random([b, h, s, dh], n, &d);
    let k = Tensor::<B, 4>::random([b, h, s, dh], n, &d);
    let v = Tensor::<B, 4>::random([b, h, s, dh], n, &d);
    let flops = 4.0 * (b * h * s * s * dh) as f64;
    bench(
        "attention self  [2,8,4096,40]",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = sdpa(q.clone(), k.clone(), v.clone(), false);
            sync(&d);
        },
    );
    bench(
        "attention self  [2,8,4096,40] bf16 products",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = sdpa_for(q.clone(), k.clone(), v.clone(), false, DType::BF16);
            sync(&d);
        },
    );
    // The second level: 32×32 = 1024 tokens, heads of 80.
    let [q2, k2, v2] = [0; 3].map(|_| Tensor::<B, 4>::random([b, h, 1024, 80], n, &d));
    bench(
        "attention self  [2,8,1024,80]",
        &filter,
        iters,
        4.0 * (b * h * 1024 * 1024 * 80) as f64,
        "GFLOP/s",
        || {
            let _ = sdpa(q2.clone(), k2.clone(), v2.clone(), false);
            sync(&d);
        },
    );
    bench(
        "attention self  [2,8,1024,80] bf16 products",
        &filter,
        iters,
        4.0 * (b * h * 1024 * 1024 * 80) as f64,
        "GFLOP/s",
        || {
            let _ = sdpa_for(q2.clone(), k2.clone(), v2.clone(), false, DType::BF16);
            sync(&d);
        },
    );
    // The third level: 16×16 = 256 tokens, heads of 160.
    let [q3, k3, v3] = [0; 3].map(|_| Tensor::<B, 4>::random([b, h, 256, 160], n, &d));
    bench(
        "attention self  [2,8,256,160]",
        &filter,
        iters.max(20),
        4.0 * (b * h * 256 * 256 * 160) as f64,
        "GFLOP/s",
        || {
            let _ = sdpa(q3.clone(), k3.clone(), v3.clone(), false);
            sync(&d);
        },
    );
    let kc = Tensor::<B, 4>::random([b, h, 77, dh], n, &d);
    let vc = Tensor::<B, 4>::random([b, h, 77, dh], n, &d);
    let flops = 4.0 * (b * h * s * 77 * dh) as f64;
    bench(
        "attention cross [2,8,4096,40]x77",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = sdpa(q.clone(), kc.clone(), vc.clone(), false);
            sync(&d);
        },
    );
    let [kc2, vc2] = [0; 2].map(|_| Tensor::<B, 4>::random([b, h, 77, 80], n, &d));
    bench(
        "attention cross [2,8,1024,80]x77",
        &filter,
        iters,
        4.0 * (b * h * 1024 * 77 * 80) as f64,
        "GFLOP/s",
        || {
            let _ = sdpa(q2.clone(), kc2.clone(), vc2.clone(), false);
            sync(&d);
        },
    );
    // Reference point: the two matmuls of self-attention alone, no softmax.
    let flops = 2.0 * (b * h * s * s * dh) as f64;
    bench(
        "matmul QK^T     [2,8,4096,40]",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = q.clone().matmul(k.clone().swap_dims(2, 3));
            sync(&d);
        },
    );

    // LayerNorm over the 320 channels of [2,4096,320] tokens (each transformer block has 3).
    let xt3 = Tensor::<B, 3>::random([2, 4096, 320], n, &d);
    let ln = kiln::nn::LayerNorm::<B>::new(320, 1e-5, true, &d);
    bench(
        "layernorm       [2,4096,320]",
        &filter,
        iters.max(20),
        2.0 * 4.0 * xt3.shape().num_elements() as f64,
        "GB/s",
        || {
            let _ = ln.forward(xt3.clone());
            sync(&d);
        },
    );

    // GroupNorm(32) + SiLU over [2,320,64,64].
    let x = Tensor::<B, 4>::random([2, 320, 64, 64], n, &d);
    let gn = GroupNorm::<B>::new(32, 320, 1e-5, &d);
    let bytes = 2.0 * 4.0 * x.shape().num_elements() as f64;
    bench(
        "groupnorm+silu  [2,320,64,64]",
        &filter,
        iters,
        bytes,
        "GB/s",
        || {
            let _ = gn.forward_silu(x.clone());
            sync(&d);
        },
    );
    bench(
        "silu            [2,320,64,64]",
        &filter,
        iters,
        bytes,
        "GB/s",
        || {
            let _ = silu(x.clone());
            sync(&d);
        },
    );

    // Conv 3x3 320->320, 64x64, batch 2, pad 1.
    let w = Tensor::<B, 4>::random([320, 320, 3, 3], n, &d);
    let bias = Tensor::<B, 1>::random([320], n, &d);
    let flops = 2.0 * (2 * 320 * 64 * 64 * 320 * 9_u64) as f64;
    bench(
        "conv3x3 320->320 [2,320,64,64] burn",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = conv2d(
                x.clone(),
                w.clone(),
                Some(bias.clone()),
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            );
            sync(&d);
        },
    );
    // kiln's Conv2d as the loader leaves it (weight relaid out for the CPU kernel).
    let conv = |w: &Tensor<B, 4>, b: &Tensor<B, 1>| {
        Conv2d::from_tensors(w.clone(), Some(b.clone()), 1, [w.dims()[2] / 2; 4])
    };
    let kconv = conv(&w, &bias);
    bench(
        "conv3x3 320->320 [2,320,64,64] kiln",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = kconv.forward(x.clone());
            sync(&d);
        },
    );
    // A ResnetBlock's norm1 -> SiLU -> conv1, as two layers and as the fused input pass.
    bench(
        "gn+silu+conv3x3 320 [2,320,64,64] unfused",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = kconv.forward(gn.forward_silu(x.clone()));
            sync(&d);
        },
    );
    bench(
        "gn+silu+conv3x3 320 [2,320,64,64] fused",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = kconv.forward_norm(&gn, true, x.clone(), None);
            sync(&d);
        },
    );
    // The deepest UNet level: 1280 channels on 8x8 (wide rows waste 2 of every 10 columns).
    let x8 = Tensor::<B, 4>::random([2, 1280, 8, 8], n, &d);
    let w8 = Tensor::<B, 4>::random([1280, 1280, 3, 3], n, &d);
    let b8 = Tensor::<B, 1>::random([1280], n, &d);
    let flops8 = 2.0 * (2 * 1280 * 8 * 8 * 1280 * 9_u64) as f64;
    bench(
        "conv3x3 1280->1280 [2,1280,8,8] burn",
        &filter,
        iters,
        flops8,
        "GFLOP/s",
        || {
            let _ = conv2d(
                x8.clone(),
                w8.clone(),
                Some(b8.clone()),
                ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
            );
            sync(&d);
        },
    );
    let kconv8 = conv(&w8, &b8);
    bench(
        "conv3x3 1280->1280 [2,1280,8,8] kiln",
        &filter,
        iters,
        flops8,
        "GFLOP/s",
        || {
            let _ = kconv8.forward(x8.clone());
            sync(&d);
        },
    );
    // The middle UNet levels, which carry as many FLOPs as the 64x64 one.
    for (ch, hw) in [(640usize, 32usize), (1280, 16)] {
        let xl = Tensor::<B, 4>::random([2, ch, hw, hw], n, &d);
        let wl = Tensor::<B, 4>::random([ch, ch, 3, 3], n, &d);
        let kl = conv(&wl, &Tensor::<B, 1>::random([ch], n, &d));
        bench(
            &format!("conv3x3 {ch}->{ch} [2,{ch},{hw},{hw}] kiln"),
            &filter,
            iters,
            2.0 * (2 * ch * hw * hw * ch * 9) as f64,
            "GFLOP/s",
            || {
                let _ = kl.forward(xl.clone());
                sync(&d);
            },
        );
    }
    // Every UNet level with f32 weights, f16 weights (the fp16 files kept as stored: widened
    // in the kernels, computed in f32) and bf16 weights (`--precision bf16`: bf16 products,
    // f32 sums), 3×3 and 1×1; the up blocks' first 3×3 convolutions (the skip concatenated:
    // 2560 input channels) and batch 1 (no CFG: LCM, guidance 1) on the small planes, where
    // the Winograd kernel works by output-channel blocks.
    for (batch, (cin, ch), hw, k) in [
        (2usize, (320usize, 320usize), 64usize, 3usize),
        (2, (640, 640), 32, 3),
        (2, (1280, 1280), 16, 3),
        (2, (1280, 1280), 8, 3),
        (2, (2560, 1280), 16, 3),
        (2, (2560, 1280), 8, 3),
        (1, (1280, 1280), 16, 3),
        (1, (1280, 1280), 8, 3),
        (2, (320, 320), 64, 1),
        (2, (1280, 1280), 16, 1),
    ] {
        let xl = Tensor::<B, 4>::random([batch, cin, hw, hw], n, &d);
        let wl = Tensor::<B, 4>::random([ch, cin, k, k], n, &d);
        let bl = Tensor::<B, 1>::random([ch], n, &d);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let kl = conv(&wl.clone().cast(dtype), &bl);
            bench(
                &format!("conv{k}x{k} {cin}->{ch} [{batch},{cin},{hw},{hw}] kiln {dtype:?}"),
                &filter,
                iters,
                2.0 * (batch * cin * hw * hw * ch * k * k) as f64,
                "GFLOP/s",
                || {
                    let _ = kl.forward(xl.clone());
                    sync(&d);
                },
            );
        }
    }
    for (rows, d_in, d_out) in [
        (8192usize, 320usize, 320usize),
        (2048, 640, 5120),
        (512, 5120, 1280),
        (154, 768, 1280),
    ] {
        let xr = Tensor::<B, 2>::random([rows, d_in], n, &d);
        let wr = Tensor::<B, 2>::random([d_out, d_in], n, &d);
        let br = Tensor::<B, 1>::random([d_out], n, &d);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let lin = Linear {
                weight: Param::from_tensor(wr.clone().transpose().cast(dtype)),
                bias: Some(Param::from_tensor(br.clone())),
                layout: WeightLayout::InOut,
            };
            bench(
                &format!("linear {d_in}->{d_out} [{rows},{d_in}] kiln {dtype:?}"),
                &filter,
                iters,
                2.0 * (rows * d_in * d_out) as f64,
                "GFLOP/s",
                || {
                    let _ = lin.forward(xr.clone());
                    sync(&d);
                },
            );
        }
    }

    let w1 = Tensor::<B, 4>::random([320, 320, 1, 1], n, &d);
    let flops = 2.0 * (2 * 320 * 64 * 64 * 320_u64) as f64;
    let kconv1 = conv(&w1, &bias);
    bench(
        "conv1x1 320->320 [2,320,64,64] kiln",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = kconv1.forward(x.clone());
            sync(&d);
        },
    );
    bench(
        "conv1x1 320->320 [2,320,64,64] burn",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = conv2d(
                x.clone(),
                w1.clone(),
                Some(bias.clone()),
                ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
            );
            sync(&d);
        },
    );

    // Linear 320->320 on [2,4096,320], as kiln's `nn::Linear` runs it after loading
    // (contiguous [in, out] weight, batched matmul + bias).
    let xt = Tensor::<B, 3>::random([2, 4096, 320], n, &d);
    let wl = Tensor::<B, 2>::random([320, 320], n, &d);
    let bl = Tensor::<B, 1>::random([320], n, &d);
    let flops = 2.0 * (2 * 4096 * 320 * 320_u64) as f64;
    bench(
        "linear 320->320 [2,4096,320]",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = xt.clone().matmul(wl.clone().unsqueeze::<3>()) + bl.clone().unsqueeze::<3>();
            sync(&d);
        },
    );
    bench(
        "matmul 320->320 [8192,320] (2-D, no bias)",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = xt.clone().reshape([8192, 320]).matmul(wl.clone());
            sync(&d);
        },
    );
    // kiln's Linear as loaded: weight stored [in, out], bias added by the GEMM.
    let lin = |w: &Tensor<B, 2>, b: Option<Tensor<B, 1>>| Linear {
        weight: Param::from_tensor(w.clone()),
        bias: b.map(Param::from_tensor),
        layout: WeightLayout::InOut,
    };
    let klin = lin(&wl, Some(bl.clone()));
    bench(
        "linear 320->320 [2,4096,320] kiln",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = klin.forward(xt.clone());
            sync(&d);
        },
    );
    let wf = Tensor::<B, 2>::random([320, 2560], n, &d);
    let klinf = lin(&wf, None);
    let flopsf = 2.0 * (2 * 4096 * 320 * 2560_u64) as f64;
    bench(
        "linear 320->2560 [2,4096,320] kiln",
        &filter,
        iters,
        flopsf,
        "GFLOP/s",
        || {
            let _ = klinf.forward(xt.clone());
            sync(&d);
        },
    );
    bench(
        "linear 320->2560 [2,4096,320] + geglu kiln (unfused)",
        &filter,
        iters,
        flopsf,
        "GFLOP/s",
        || {
            let _ = kiln::nn::geglu(klinf.forward(xt.clone()));
            sync(&d);
        },
    );
    bench(
        "linear 320->2560 [2,4096,320] + geglu kiln (fused)",
        &filter,
        iters,
        flopsf,
        "GFLOP/s",
        || {
            let _ = klinf.forward_geglu(xt.clone());
            sync(&d);
        },
    );
    let flops = 2.0 * (2 * 4096 * 320 * 2560_u64) as f64;
    bench(
        "linear 320->2560 [2,4096,320] (GEGLU proj)",
        &filter,
        iters,
        flops,
        "GFLOP/s",
        || {
            let _ = xt.clone().matmul(wf.clone().unsqueeze::<3>());
            sync(&d);
        },
    );

    // One Euler step + the CFG combine on a [1,4,64,64] latent (scheduler math on the host,
    // tensors only see scalar multiply-adds).
    let lat = Tensor::<B, 4>::random([1, 4, 64, 64], n, &d);
    let eps2 = Tensor::<B, 4>::random([2, 4, 64, 64], n, &d);
    let cfg = SchedulerConfig::default();
    let mut sched = EulerDiscrete::new(&cfg, 20);
    let bytes = 4.0 * 4.0 * lat.shape().num_elements() as f64;
    bench(
        "scheduler Euler step + CFG [1,4,64,64]",
        &filter,
        iters.max(20),
        bytes,
        "GB/s",
        || {
            let e = eps2.clone();
            let (u, c) = (e.clone().narrow(0, 0, 1), e.narrow(0, 1, 1));
            let g = u.clone() + (c - u) * 7.5;
            let mut no_noise = || -> Tensor<B, 4> { unreachable!() };
            let x = Scheduler::<B>::scale_model_input(&sched, lat.clone(), 3);
            let _ = Scheduler::<B>::step(&mut sched, g, 3, x, &mut no_noise);
            sync(&d);
        },
    );

    dalle::dalle_steps(&filter, iters, &d);
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| {
        format!(
            "default ({} cpus)",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        )
    })
}
