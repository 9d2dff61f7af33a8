//! `Conv2d` and `Linear` with bf16 weights under f32 activations (`--precision bf16` on the
//! CPU) against the same layers in f32 with the weight and the input rounded to bf16: the
//! products are then the same, so only the f32 summation order differs, except where the
//! Winograd kernel rounds its transformed operands (planes ≥ 32×32).

use burn::backend::Flex;
use burn::module::Param;
use burn::tensor::module::conv2d;
use burn::tensor::ops::PaddedConvOptions;
use burn::tensor::{DType, Distribution, Tensor};
use kiln::nn::{Conv2d, Linear, WeightLayout};

/// `t` as bf16, rounded to nearest-even as the loader (`TensorData::convert_dtype`) and the
/// kernels round; Flex's tensor cast goes through f64 and rounds a few values per thousand the
/// other way.
fn as_bf16<const D: usize>(t: &Tensor<Flex, D>) -> Tensor<Flex, D> {
    let data = t.to_data().convert_dtype(DType::BF16);
    Tensor::from_data(data, (&t.device(), DType::BF16))
}

/// `t` rounded to bf16 and back.
fn rounded<const D: usize>(t: &Tensor<Flex, D>) -> Tensor<Flex, D> {
    let data = as_bf16(t).to_data().convert_dtype(DType::F32);
    Tensor::from_data(data, &t.device())
}

fn rel_err<const D: usize>(got: Tensor<Flex, D>, want: Tensor<Flex, D>) -> f32 {
    assert_eq!(got.dtype(), DType::F32, "activations stay f32");
    let err: f32 = (got - want.clone()).abs().max().into_scalar();
    let scale: f32 = want.abs().max().into_scalar();
    err / scale.max(1e-6)
}

#[test]
fn bf16_weight_convolutions_match_f32_of_rounded_operands() {
    let d = Default::default();
    let n = Distribution::Normal(0.0, 1.0);
    // (batch, c, o, h, w, k, stride, tolerance): direct 3×3 and 5×5, 1×1, odd channel counts,
    // Winograd planes (≥ 32×32, transformed operands rounded: 2e-2; measured 2e-3), stride 2 (the phase-split
    // shifted GEMMs, as the direct kernel).
    for &(batch, c, o, h, w, k, stride, tol) in &[
        (2, 16, 40, 8, 8, 3, 1, 1e-5),
        (1, 7, 13, 9, 11, 5, 1, 1e-5),
        (2, 24, 36, 10, 10, 1, 1, 1e-5),
        // 1×1 on AMX: a partial window of rows, two bands of columns.
        (2, 64, 200, 20, 30, 1, 1, 1e-5),
        (2, 32, 48, 33, 35, 3, 1, 2e-2),
        (1, 5, 9, 32, 32, 3, 1, 2e-2),
        // Two k blocks of the packed operands (256 + 44 channels), a partial strip of rows.
        (1, 300, 13, 32, 32, 3, 1, 2e-2),
        (1, 8, 8, 16, 16, 3, 2, 1e-5),
        (2, 40, 24, 9, 12, 3, 2, 1e-5),
    ] {
        let x = Tensor::<Flex, 4>::random([batch, c, h, w], n, &d);
        let wt = Tensor::<Flex, 4>::random([o, c, k, k], n, &d);
        let b = Tensor::<Flex, 1>::random([o], n, &d);
        let pad = if stride == 1 { [k / 2; 4] } else { [1; 4] };
        let conv = Conv2d::from_tensors(as_bf16(&wt), Some(b.clone()), stride, pad);
        assert_eq!(conv.compute_dtype(), DType::F32);
        let opts = PaddedConvOptions::asymmetric([stride; 2], [pad[0]; 2], [pad[0]; 2], [1, 1], 1);
        let want = conv2d(rounded(&x), rounded(&wt), Some(b), opts);
        let err = rel_err(conv.forward(x), want);
        assert!(
            err <= tol,
            "{batch}x{c}x{h}x{w} k{k} s{stride} -> {o}: {err:e} > {tol:e}"
        );
        eprintln!("conv {batch}x{c}x{h}x{w} k{k} s{stride} -> {o}: {err:e} of scale");
    }
}

#[test]
fn bf16_weight_linears_match_f32_of_rounded_operands() {
    let d = Default::default();
    let n = Distribution::Normal(0.0, 1.0);
    for &(rows, d_in, d_out) in &[(1, 3, 5), (77, 64, 96), (300, 257, 70), (513, 40, 600)] {
        let x = Tensor::<Flex, 3>::random([1, rows, d_in], n, &d);
        let w = Tensor::<Flex, 2>::random([d_in, d_out], n, &d);
        let b = Tensor::<Flex, 1>::random([d_out], n, &d);
        let r = Tensor::<Flex, 3>::random([1, rows, d_out], n, &d);
        let lin = |w: Tensor<Flex, 2>| Linear {
            weight: Param::from_tensor(w),
            bias: Some(Param::from_tensor(b.clone())),
            layout: WeightLayout::InOut,
        };
        let (bf, f32_rounded) = (lin(as_bf16(&w)), lin(rounded(&w)));
        let xr = rounded(&x);
        for (what, got, want) in [
            (
                "plain",
                bf.forward(x.clone()),
                f32_rounded.forward(xr.clone()),
            ),
            (
                "+residual",
                bf.forward_add(x.clone(), r.clone()),
                f32_rounded.forward_add(xr.clone(), r.clone()),
            ),
        ] {
            let err = rel_err(got, want);
            assert!(err <= 1e-5, "{what} {rows}x{d_in}->{d_out}: {err:e}");
        }
        if d_out % 2 == 0 {
            let err = rel_err(bf.forward_geglu(x.clone()), f32_rounded.forward_geglu(xr));
            assert!(err <= 1e-5, "geglu {rows}x{d_in}->{d_out}: {err:e}");
        }
    }
}

/// The 3×3 convolutions whose inputs the CPU kernels make as they read them (GroupNorm +
/// SiLU, ×2 upsampling) and whose adds they fold into their stores, with bf16 weights, against
/// f32 convolutions of the rounded weight and the rounded (normalised, upsampled) input. On
/// AMX CPUs this is the brgemm kernel (`conv_amx`): channel blocks past 192 with a partial
/// window of rows (200 = 8·24 + 8), more than one band of wide columns (20 × 32 > 16 windows
/// of 32), 1×1 and 4×4 planes. Planes stay under 32×32 so that elsewhere the direct kernel,
/// exact as well, runs: 1e-5 of scale (measured ≤ 3e-7).
#[test]
fn bf16_fused_convolutions_match_f32_of_rounded_operands() {
    use kiln::nn::GroupNorm;
    let d = Default::default();
    let n = Distribution::Normal(0.0, 1.0);
    for &(batch, c, o, h, w) in &[(2, 64, 200, 20, 30), (1, 32, 24, 4, 4), (2, 32, 48, 1, 1)] {
        let x = Tensor::<Flex, 4>::random([batch, c, h, w], n, &d);
        let wt = Tensor::<Flex, 4>::random([o, c, 3, 3], n, &d);
        let b = Tensor::<Flex, 1>::random([o], n, &d);
        let conv = Conv2d::from_tensors(as_bf16(&wt), Some(b.clone()), 1, [1; 4]);
        let opts = PaddedConvOptions::asymmetric([1; 2], [1; 2], [1; 2], [1, 1], 1);
        let reference = |input: &Tensor<Flex, 4>| {
            conv2d(rounded(input), rounded(&wt), Some(b.clone()), opts.clone())
        };
        let residual = Tensor::<Flex, 4>::random([batch, o, h, w], n, &d);
        let per_image = Tensor::<Flex, 4>::random([batch, o, 1, 1], n, &d);
        let mut norm = GroupNorm::<Flex>::new(8, c, 1e-5, &d);
        norm.weight = Param::from_tensor(Tensor::random([c], n, &d));
        norm.bias = Param::from_tensor(Tensor::random([c], n, &d));
        let normed = norm.forward_silu(x.clone());
        let small = Tensor::<Flex, 4>::random([batch, c, h.div_ceil(2), w.div_ceil(2)], n, &d);
        let (hs, ws) = (h.div_ceil(2), w.div_ceil(2));
        let up = small
            .clone()
            .reshape([batch, c, hs, 1, ws, 1])
            .repeat_dim(3, 2)
            .repeat_dim(5, 2)
            .reshape([batch, c, 2 * hs, 2 * ws]);
        let cases = [
            ("plain", conv.forward(x.clone()), reference(&x)),
            (
                "+residual",
                conv.forward_add(x.clone(), residual.clone()),
                reference(&x) + residual.clone(),
            ),
            (
                "+per image",
                conv.forward_add(x.clone(), per_image.clone()),
                reference(&x) + per_image.clone(),
            ),
            (
                "norm+silu+residual",
                conv.forward_norm(&norm, true, x.clone(), Some(residual.clone())),
                reference(&normed) + residual.clone(),
            ),
            (
                "upsample",
                conv.forward_upsample2x(small.clone()),
                reference(&up),
            ),
        ];
        for (what, got, want) in cases {
            let err = rel_err(got, want);
            eprintln!("{what} {batch}x{c}x{h}x{w} -> {o}: {err:e} of scale");
            assert!(err <= 1e-5, "{what} {batch}x{c}x{h}x{w} -> {o}: {err:e}");
        }
    }
}
