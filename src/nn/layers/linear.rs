//! `Linear`, `y = x Wᵀ + b`, for both models. Checkpoints hold `W` as PyTorch does,
//! `[out, in]`, and that is the shape the loader checks; how it is held in memory is chosen at
//! construction ([`WeightLayout`]), each layout with its own compute path.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::super::kernels;
use super::super::ops::geglu;
use super::zeros;

/// How a [`Linear`] holds its weight, and so how it multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// Transposed and contiguous, `[in, out]`, copied once at load, because multiplying by a
    /// transposed *view* makes Flex copy `W` on every call. `x W` is then one matmul; on the
    /// CPU a GEMM that adds the bias, a residual ([`Linear::forward_add`]) or the GEGLU gating
    /// ([`Linear::forward_geglu`]) in its output pass. SD's layers: many rows per call.
    InOut,
    /// As stored, `[out, in]`, computed as `(W xᵀ)ᵀ`: with W as the contiguous left operand
    /// nothing is copied but the small result. Multiplying `[in, out]`-style by the transposed
    /// view instead made Flex (0.21) copy W on every call, which dominates one-token decode
    /// steps (measured 1024→16385 with 2 rows: 148 ms per call against 11 ms here); for 256-row
    /// inputs it is as fast as a pre-transposed weight. That is the path of the GPU backends:
    /// on the CPU every call takes `kernels::matvec_rows`, a GEMV that reads each weight row
    /// once for a decode step's few rows and a GEMM reading W as stored for more (the text
    /// encoder, the VQGAN's attention).
    ///
    /// The weight may be f16 under f32 activations ([`WeightLayout::reads_f16`]): on the CPU an
    /// f16 checkpoint's BART weights stay f16 in memory, since a decode step streams every
    /// weight once, so half the bytes is nearly half the time, and widening f16 to f32 is
    /// exact, so the results are those of an f32 load. DALL·E's layers.
    OutIn,
}

impl WeightLayout {
    /// Whether a [`Linear`] of this layout computes with f16 weights as they are (without
    /// widening them on every call) on backend `B`: `OutIn` on the CPU, whose GEMV and GEMM
    /// read f16 directly. A loader keeps such weights f16 where the model computes in f32.
    pub fn reads_f16<B: Backend>(self) -> bool {
        self == WeightLayout::OutIn && kernels::reads_f16_weights::<B>()
    }
}

#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub layout: WeightLayout,
}

/// A contiguous copy of `t` transposed (once, at load time).
fn transposed_copy<B: Backend>(t: Tensor<B, 2>) -> Tensor<B, 2> {
    let (device, dtype) = (t.device(), t.dtype());
    Tensor::from_data(t.transpose().into_data(), (&device, dtype))
}

impl<B: Backend> Linear<B> {
    pub fn new(
        d_in: usize,
        d_out: usize,
        bias: bool,
        layout: WeightLayout,
        device: &B::Device,
    ) -> Self {
        let weight = zeros([d_out, d_in], device);
        let weight = match layout {
            WeightLayout::InOut => weight
                .init_mapper(|t| t.transpose())
                .load_mapper(transposed_copy),
            WeightLayout::OutIn => weight,
        };
        Self {
            weight,
            bias: bias.then(|| zeros([d_out], device)),
            layout,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self.layout {
            WeightLayout::InOut => self.forward_in_out(x, None),
            WeightLayout::OutIn => self.forward_out_in(x),
        }
    }

    /// `self.forward(x) + residual` (same shape as the output); on the CPU backend the GEMM
    /// accumulates onto the residual instead of a separate add (`InOut`).
    pub fn forward_add<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self.layout {
            WeightLayout::InOut => self.forward_in_out(x, Some(residual)),
            WeightLayout::OutIn => self.forward_out_in(x) + residual,
        }
    }

    /// `geglu(self.forward(x))`; on the CPU backend fused, without the `2I`-wide intermediate
    /// (`InOut`).
    pub fn forward_geglu<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if self.layout == WeightLayout::InOut {
            let bias = self.bias.as_ref().map(|b| b.val());
            if let Some(y) = kernels::linear_geglu(&x, &self.weight.val(), bias.as_ref()) {
                return y;
            }
        }
        geglu(self.forward(x))
    }

    /// `layers[i].forward(x)` for each, as one parallel GEMV over all their weights on the
    /// CPU when all are `OutIn` (one loop start and join instead of N; a DALL·E decode step
    /// has 12 layers × (q/k/v, GLU fc0/fc1)).
    pub fn forward_many<const D: usize, const N: usize>(
        layers: [&Self; N],
        x: Tensor<B, D>,
    ) -> [Tensor<B, D>; N] {
        if layers.iter().all(|l| l.layout == WeightLayout::OutIn) {
            let vals = layers.map(|l| (l.weight.val(), l.bias.as_ref().map(|b| b.val())));
            let refs = std::array::from_fn(|i| (&vals[i].0, vals[i].1.as_ref()));
            if let Some(ys) = kernels::matvec_rows_many(&x, refs) {
                return ys;
            }
        }
        layers.map(|l| l.forward(x.clone()))
    }

    fn forward_in_out<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Option<Tensor<B, D>>,
    ) -> Tensor<B, D> {
        let w = self.weight.val();
        let bias = self.bias.as_ref().map(|b| b.val());
        if let Some(y) = kernels::linear(&x, &w, bias.as_ref(), residual.as_ref()) {
            return y;
        }
        // bf16 weights under f32 activations (`--precision bf16`) where the kernel does not
        // take the case: widened for this call only.
        let w = if w.dtype() == x.dtype() {
            w
        } else {
            w.cast(x.dtype())
        };
        let y = x.matmul(w.unsqueeze::<D>());
        let y = match bias {
            Some(b) => y + b.unsqueeze::<D>(),
            None => y,
        };
        match residual {
            Some(r) => y + r,
            None => y,
        }
    }

    /// `x` `[…, in]` → `[…, out]` with W `[out, in]`.
    fn forward_out_in<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let w = self.weight.val();
        let bias = self.bias.as_ref().map(|b| b.val());
        if let Some(y) = kernels::matvec_rows(&x, &w, bias.as_ref()) {
            return y;
        }
        // f16 weights under f32 activations (see `WeightLayout::OutIn`): widened for this
        // call only.
        let w = if w.dtype() == x.dtype() {
            w
        } else {
            w.cast(x.dtype())
        };
        let mut dims = x.dims();
        let (d_in, rows) = (dims[D - 1], dims[..D - 1].iter().product::<usize>());
        dims[D - 1] = w.dims()[0];
        let xt = x.reshape([1, rows, d_in]).swap_dims(1, 2); // [1, in, rows]
        let y = w.unsqueeze::<3>().matmul(xt).swap_dims(1, 2).reshape(dims);
        match bias {
            Some(bias) => y + bias.unsqueeze::<D>(),
            None => y,
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::Distribution;
    use burn::tensor::activation::gelu;

    use super::*;

    fn in_out(w: &Tensor<Flex, 2>, bias: Option<Tensor<Flex, 1>>) -> Linear<Flex> {
        Linear {
            weight: Param::from_tensor(w.clone()),
            bias: bias.map(Param::from_tensor),
            layout: WeightLayout::InOut,
        }
    }

    /// Linear with and without bias, with and without a fused residual, against plain ops.
    #[test]
    fn linear_forward_add_matches_plain_ops() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let x = Tensor::<Flex, 3>::random([2, 5, 7], n, &d);
        let w = Tensor::<Flex, 2>::random([7, 3], n, &d);
        let b = Tensor::<Flex, 1>::random([3], n, &d);
        let r = Tensor::<Flex, 3>::random([2, 5, 3], n, &d);
        for bias in [None, Some(b)] {
            let lin = in_out(&w, bias.clone());
            let mut want = x.clone().matmul(w.clone().unsqueeze::<3>());
            if let Some(b) = &bias {
                want = want + b.clone().unsqueeze::<3>();
            }
            for (got, want) in [
                (lin.forward(x.clone()), want.clone()),
                (lin.forward_add(x.clone(), r.clone()), want + r.clone()),
            ] {
                let err: f32 = (got - want).abs().max().into_scalar();
                assert!(err < 1e-5, "max |diff| {err}");
            }
        }
    }

    /// The fused GEGLU projection against plain ops, on shapes that split into several
    /// partial tiles (300 rows, 2·70 columns) and with a tiny one.
    #[test]
    fn linear_geglu_matches_plain_ops() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        for [m, k, inner] in [[300, 9, 70], [1, 3, 1]] {
            let x = Tensor::<Flex, 3>::random([1, m, k], n, &d);
            let w = Tensor::<Flex, 2>::random([k, 2 * inner], n, &d);
            let b = Tensor::<Flex, 1>::random([2 * inner], n, &d);
            for bias in [None, Some(b)] {
                let lin = in_out(&w, bias.clone());
                let mut h = x.clone().matmul(w.clone().unsqueeze::<3>());
                if let Some(b) = &bias {
                    h = h + b.clone().unsqueeze::<3>();
                }
                let want = h.clone().narrow(2, 0, inner) * gelu(h.narrow(2, inner, inner));
                let got = lin.forward_geglu(x.clone());
                assert_eq!(got.dims(), [1, m, inner]);
                let err: f32 = (got - want).abs().max().into_scalar();
                assert!(err < 1e-5, "[{m},{k},{inner}] max |diff| {err}");
            }
        }
    }

    /// An `OutIn` layer (the GEMV on the CPU) and one `InOut` layer holding the same weight
    /// transposed give the same product; `forward_many` gives each layer's own bits.
    #[test]
    fn out_in_layout_matches_in_out() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let w = Tensor::<Flex, 2>::random([40, 37], n, &d);
        let b = Tensor::<Flex, 1>::random([40], n, &d);
        let out_in = |w: &Tensor<Flex, 2>, b: Option<Tensor<Flex, 1>>| Linear {
            weight: Param::from_tensor(w.clone()),
            bias: b.map(Param::from_tensor),
            layout: WeightLayout::OutIn,
        };
        let (a, c) = (
            out_in(&w, Some(b.clone())),
            out_in(&w.clone().narrow(0, 0, 5), None),
        );
        let io = in_out(&w.clone().transpose(), Some(b));
        for rows in [1, 3, 70] {
            let x = Tensor::<Flex, 3>::random([rows, 1, 37], n, &d);
            let err: f32 = (a.forward(x.clone()) - io.forward(x.clone()))
                .abs()
                .max()
                .into_scalar();
            assert!(err < 1e-4, "{rows} rows: max |diff| {err}");
            let [ya, yc] = Linear::forward_many([&a, &c], x.clone());
            assert_eq!(ya.into_data(), a.forward(x.clone()).into_data());
            assert_eq!(yc.into_data(), c.forward(x).into_data());
        }
    }

    /// The GEMV against a plain matmul: 1, 8, 13 and 32 rows (one group, two, four), then
    /// 33 and 130 rows (the many-row kernel: one panel and a partial one, three), a ragged K
    /// and N (several blocks, the last partial), with and without bias.
    #[test]
    fn matvec_rows_matches_matmul() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let w = Tensor::<Flex, 2>::random([600, 37], n, &d);
        let b = Tensor::<Flex, 1>::random([600], n, &d);
        for [r, s] in [[1, 1], [8, 1], [13, 1], [32, 1], [3, 11], [2, 65]] {
            let x = Tensor::<Flex, 3>::random([r, s, 37], n, &d);
            let rows = r * s;
            for bias in [None, Some(&b)] {
                let got = kernels::matvec_rows(&x, &w, bias).expect("f32 rows take the GEMV");
                let mut want = x.clone().matmul(w.clone().transpose().unsqueeze::<3>());
                if let Some(b) = bias {
                    want = want + b.clone().unsqueeze::<3>();
                }
                let err: f32 = (got - want).abs().max().into_scalar();
                assert!(err < 1e-5, "{rows} rows: max |diff| {err}");
            }
        }
    }

    /// One GEMV over several weights (f32 with bias, f16, different widths) gives each one's
    /// own bits; a weight of another width declines the lot.
    #[test]
    fn matvec_rows_many_equals_one_by_one() {
        use burn::tensor::DType;
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let w0 = Tensor::<Flex, 2>::random([600, 37], n, &d);
        let b0 = Tensor::<Flex, 1>::random([600], n, &d);
        let w1 = Tensor::<Flex, 2>::random([70, 37], n, &d).cast(DType::F16);
        let x = Tensor::<Flex, 3>::random([3, 1, 37], n, &d);
        let [y0, y1] =
            kernels::matvec_rows_many(&x, [(&w0, Some(&b0)), (&w1, None)]).expect("GEMV");
        let want0 = kernels::matvec_rows(&x, &w0, Some(&b0)).expect("GEMV");
        let want1 = kernels::matvec_rows(&x, &w1, None).expect("GEMV");
        assert_eq!(y0.into_data(), want0.into_data());
        assert_eq!(y1.into_data(), want1.into_data());
        let other = Tensor::<Flex, 2>::random([5, 36], n, &d);
        assert!(kernels::matvec_rows_many(&x, [(&w0, None), (&other, None)]).is_none());
    }

    /// f16 weights (as an f16 checkpoint keeps them) give exactly the bits of the same
    /// weights widened to f32, for every row count the kernel specialises.
    #[test]
    fn matvec_rows_f16_weights_equal_widened() {
        use burn::tensor::DType;
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let w16 = Tensor::<Flex, 2>::random([300, 70], n, &d).cast(DType::F16);
        let w32 = w16.clone().cast(DType::F32);
        for rows in 1..=8 {
            let x = Tensor::<Flex, 3>::random([rows, 1, 70], n, &d);
            let got = kernels::matvec_rows(&x, &w16, None).expect("f16 weights take the GEMV");
            let want = kernels::matvec_rows(&x, &w32, None).expect("f32 weights take the GEMV");
            assert_eq!(got.dtype(), DType::F32);
            assert_eq!(got.into_data(), want.clone().into_data(), "{rows} rows");
            let plain = x.matmul(w32.clone().transpose().unsqueeze::<3>());
            let err: f32 = (want - plain).abs().max().into_scalar();
            assert!(err < 1e-4, "{rows} rows: max |diff| {err}");
        }
    }

    /// f16 `InOut` weights (an fp16 checkpoint's, kept as stored) give the bits of the same
    /// weights in f32, through `forward` and `forward_geglu`, both where each tile widens its
    /// panel (200 rows: one row tile) and where the weight is widened once for the call
    /// (1100 rows: five row tiles); 900 columns share out unevenly over 256-wide tiles.
    #[test]
    fn f16_weights_equal_f32_widened_per_tile_or_once() {
        use burn::tensor::DType;
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let w32 = Tensor::<Flex, 2>::random([64, 900], n, &d)
            .cast(DType::F16)
            .cast(DType::F32);
        let b = Tensor::<Flex, 1>::random([900], n, &d);
        let (l32, l16) = (
            in_out(&w32, Some(b.clone())),
            in_out(&w32.clone().cast(DType::F16), Some(b)),
        );
        for rows in [200, 1100] {
            let x = Tensor::<Flex, 3>::random([1, rows, 64], n, &d);
            let (got, want) = (l16.forward(x.clone()), l32.forward(x.clone()));
            assert_eq!(got.into_data(), want.into_data(), "{rows} rows");
            let (got, want) = (l16.forward_geglu(x.clone()), l32.forward_geglu(x));
            assert_eq!(got.into_data(), want.into_data(), "{rows} rows, GEGLU");
        }
    }
}
