//! `f4_x86` against `f4`'s portable transforms.

use super::super::super::SendPtr;
use super::super::f4;
use super::*;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

/// Against `f4`'s portable versions, bit for bit: planes whose width leaves a partial last
/// tile, tile rows longer than 16 tiles (runs cut in pieces of 16), task windows that
/// start and end inside tile rows, every prologue; outputs with and without bias, with a
/// residual or a per-channel add, several images side by side in `M`.
#[test]
fn matches_the_lane_versions() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return;
    }
    for (c, h, wd, t0, tb) in [
        (3, 9, 13, 0, 12),
        (2, 33, 35, 5, 60),
        (2, 64, 64, 16, 64),
        (1, 20, 70, 7, 40),
        (2, 8, 130, 0, 66),
        (1, 4, 4, 0, 1),
    ] {
        let scale = values(c, 1);
        let shift = values(c, 2);
        let pros = [
            Prologue::Plain,
            Prologue::Affine {
                scale: &scale,
                shift: &shift,
                silu: true,
            },
            Prologue::Affine {
                scale: &scale,
                shift: &shift,
                silu: false,
            },
            Prologue::Upsample2x,
        ];
        for pro in pros {
            if matches!(pro, Prologue::Upsample2x) && (h % 2 == 1 || wd % 2 == 1) {
                continue;
            }
            let in_plane = pro.input_plane(h, wd);
            let plane = values(c * in_plane, 3);
            let (mut rows, mut ring) = (Vec::new(), Vec::new());
            let mut want = vec![f32::NAN; 36 * c * tb];
            f4::input_transform_lanes(
                &plane,
                pro,
                [c, h, wd],
                t0,
                tb,
                &mut rows,
                &mut ring,
                &mut want,
            );
            let mut got = vec![f32::NAN; 36 * c * tb];
            // SAFETY: the feature was detected above.
            unsafe { input_transform(&plane, pro, [c, h, wd], t0, tb, &mut ring, &mut got) };
            let same = want
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "V of {c}×{h}×{wd}, tiles {t0}+{tb}");
        }
    }
    for (o, h, wd, imgs, t0, tb) in [
        (3, 9, 13, 1, 0, 12),
        (2, 33, 35, 2, 0, 81),
        (2, 20, 70, 1, 7, 40),
    ] {
        let (o0, ob) = (1, o - 1);
        let n = imgs;
        let m = values(36 * ob * imgs * tb, 4);
        let bias = values(o, 5);
        let residual = values(n * o * h * wd, 6);
        let per_channel = values(n * o, 7);
        for (bias, add) in [
            (None, None),
            (Some(&bias[..]), None),
            (Some(&bias[..]), Some((&residual[..], false))),
            (None, Some((&per_channel[..], true))),
        ] {
            let mut want = vec![f32::NAN; n * o * h * wd];
            let mut got = want.clone();
            let stage = |out: &mut Vec<f32>| OutputStage {
                ohw: [o, h, wd],
                o0,
                ob,
                img0: 0,
                imgs,
                t0,
                tb,
                bias,
                add,
                out: SendPtr(out.as_mut_ptr()),
            };
            let mut y = vec![0.0; 16 * imgs * tb];
            f4::output_stage_lanes(&m, &mut y, &stage(&mut want));
            // SAFETY: the feature was detected above; one task writes this output.
            unsafe { output_stage(&m, &stage(&mut got)) };
            let same = want
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "Y of {o}×{h}×{wd}, {imgs} images, tiles {t0}+{tb}");
        }
    }
}
