//! DALL·E decoder-step cases of the `kernels` bench (one image with super-conditioning = 2 rows,
//! at position 128, logits to the host): GB/s of decoder weights read once per step.

use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Bool, Distribution, Int, Tensor, TensorData};
use kiln::models::dalle_mini::{BartDecoder, DalleBartConfig, DalleMini, Tokenization};

use super::{B, bench};

/// Random normal weights for a module built with lazy zeros.
struct Randomize;

impl ModuleMapper<B> for Randomize {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, t, mapper) = p.consume();
        Param::from_mapped_value(id, t.random_like(Distribution::Normal(0.0, 0.05)), mapper)
    }
}

pub fn dalle_steps(filter: &[String], iters: usize, d: &burn::tensor::Device<B>) {
    let names = [
        "dalle step tiny fixture [2 rows] @128",
        "dalle step d1024 2 layers [2 rows] @128",
        "dalle gemv 1024->16385 [2 rows]",
        "dalle gemv 2730->1024 [2 rows]",
        "dalle gemv 1024->16385 [20 rows]",
        "dalle attention 1 query [2,16,192 of 256,64]",
    ];
    if !filter.is_empty()
        && !names
            .iter()
            .any(|n| filter.iter().any(|w| n.contains(w.as_str())))
    {
        return; // skip the loading too
    }
    attention_case(names[5], filter, iters, d);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures/dalle-tiny/mindalle/dalle_bart_tiny");
    let m = DalleMini::<B>::load(&dir, d).expect("tiny DALL·E fixture loads");
    let rows = m
        .text_rows("a photo of a cat", Tokenization::MinDalle, 0)
        .expect("text rows");
    let (enc, pad) = m.encode(&rows);
    let start = m.config.decoder_start_token_id;
    step_case(
        names[0], filter, iters, &m.decoder, &m.config, enc, pad, start,
    );

    let mut cfg = DalleBartConfig::mini();
    cfg.decoder_layers = 2;
    let dec = BartDecoder::<B>::new(&cfg, d).map(&mut Randomize);
    let enc = Tensor::<B, 3>::random([2, 64, cfg.d_model], Distribution::Normal(0.0, 1.0), d);
    let mut ids = vec![1i64; 128];
    ids[..2].copy_from_slice(&[0, 2]);
    ids[64..71].copy_from_slice(&[0, 10, 11, 12, 13, 14, 2]);
    let pad = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 64]), d)
        .equal_elem(1)
        .reshape([2, 1, 1, 64]);
    let start = cfg.decoder_start_token_id;
    step_case(names[1], filter, iters, &dec, &cfg, enc, pad, start);

    // The decode step's matrix-vector products alone (lm_head, GLU fc2): weights read once.
    // 20 rows: 10 images (the API's most), in groups of 8 against each weight block.
    for (name, d_in, d_out, rows) in [
        (names[2], 1024, 16385, 2),
        (names[3], 2730, 1024, 2),
        (names[4], 1024, 16385, 20),
    ] {
        let w = Tensor::<B, 2>::random([d_out, d_in], Distribution::Normal(0.0, 0.05), d);
        let x = Tensor::<B, 3>::random([rows, 1, d_in], Distribution::Normal(0.0, 1.0), d);
        bench(
            name,
            filter,
            iters.max(20),
            4.0 * (d_in * d_out) as f64,
            "GB/s",
            || {
                let y =
                    kiln::nn::kernels::matvec_rows(&x, &w, None).expect("few rows take the GEMV");
                super::sync(d);
                drop(y);
            },
        );
    }
}

/// The decode step's self-attention over a cache prefix (one query per row and head): GB/s of
/// keys and values read once.
fn attention_case(name: &str, filter: &[String], iters: usize, d: &burn::tensor::Device<B>) {
    let (rows, heads, slots, seen, dh) = (2, 16, 256, 192, 64);
    let n = Distribution::Normal(0.0, 1.0);
    let q = Tensor::<B, 4>::random([rows, 1, heads, dh], n, d).swap_dims(1, 2);
    let [k, v] = [0; 2].map(|_| {
        Tensor::<B, 4>::random([rows, heads, slots, dh], n, d).slice([
            0..rows,
            0..heads,
            0..seen,
            0..dh,
        ])
    });
    let bytes = 2.0 * (rows * heads * seen * dh * 4) as f64;
    bench(name, filter, iters.max(50), bytes, "GB/s", || {
        let y = kiln::nn::sdpa(q.clone(), k.clone(), v.clone(), false);
        super::sync(d);
        drop(y);
    });
}

#[allow(clippy::too_many_arguments)]
fn step_case(
    name: &str,
    filter: &[String],
    iters: usize,
    dec: &BartDecoder<B>,
    cfg: &DalleBartConfig,
    enc: Tensor<B, 3>,
    pad: Tensor<B, 4, Bool>,
    start: u32,
) {
    let mut cache = dec.start(enc, pad, &[0, 1]);
    let (dm, f) = (cfg.d_model, cfg.decoder_ffn_dim);
    let weights = cfg.decoder_layers * (6 * dm * dm + 3 * dm * f) + dm * cfg.image_rows();
    bench(
        name,
        filter,
        iters.max(20),
        4.0 * weights as f64,
        "GB/s",
        || {
            cache.position = 128;
            let _ = dec.step(&[start, start], &mut cache).into_data();
        },
    );
}
