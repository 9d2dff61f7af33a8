//! Pillow's `Image.resize` for 8-bit RGB, bit for bit: transformers' `CLIPImageProcessor` (the
//! PIL backend, and every 4.x version) resizes with it, and the `image` crate's filters differ
//! (other kernel support when shrinking, float rounding): on the safety checker's fixture images
//! Catmull-Rom moved pixel values by up to 2 levels, where this port moves none (measured in
//! `tests/sd15_safety.rs`).
//!
//! Pillow (`libImaging/Resample.c`) resamples in two separable passes, horizontal first, each
//! with a filter stretched by the scale when shrinking (antialiasing), coefficients normalised
//! per output pixel and turned into 22-bit fixed point, and each pass rounding and clamping to
//! 8 bits.

use image::RgbImage;

/// Pillow's filter numbers (`Image.Resampling`), nearest excepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilFilter {
    Lanczos = 1,
    Bilinear = 2,
    Bicubic = 3,
    Box = 4,
    Hamming = 5,
}

impl PilFilter {
    pub fn from_pil(n: u8) -> Option<Self> {
        Some(match n {
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            _ => return None,
        })
    }

    fn support(self) -> f64 {
        match self {
            Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let sinc = |x: f64| {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        };
        match self {
            Self::Box => f64::from(u8::from(x > -0.5 && x <= 0.5)),
            Self::Bilinear => (1.0 - x.abs()).max(0.0),
            Self::Hamming => {
                let x = x.abs();
                if x >= 1.0 {
                    0.0
                } else {
                    // Pillow writes the constants as C floats.
                    sinc(x)
                        * (f64::from(0.54f32)
                            + f64::from(0.46f32) * (x * std::f64::consts::PI).cos())
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index and 22-bit fixed-point weights (`precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize, filter: PilFilter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) cast truncates towards zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    let k = k * f64::from(1u32 << PRECISION_BITS);
                    (if k < 0.0 { k - 0.5 } else { k + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass over `src` (`w`×`h`, RGB) along x (`horizontal`) or y.
fn pass(
    src: &[u8],
    (w, h): (usize, usize),
    out_len: usize,
    horizontal: bool,
    filter: PilFilter,
) -> Vec<u8> {
    let coeffs = coefficients(if horizontal { w } else { h }, out_len, filter);
    let (ow, oh) = if horizontal {
        (out_len, h)
    } else {
        (w, out_len)
    };
    let mut out = vec![0u8; ow * oh * 3];
    for y in 0..oh {
        for x in 0..ow {
            let (first, k) = &coeffs[if horizontal { x } else { y }];
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, &kk) in k.iter().enumerate() {
                let (sx, sy) = if horizontal {
                    (first + i, y)
                } else {
                    (x, first + i)
                };
                let p = &src[(sy * w + sx) * 3..][..3];
                for c in 0..3 {
                    acc[c] += i32::from(p[c]) * kk;
                }
            }
            let o = &mut out[(y * ow + x) * 3..][..3];
            for c in 0..3 {
                o[c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// `img.resize((width, height), filter)` as Pillow computes it. Sizes must be non-zero.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: PilFilter) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nw, nh) = (width as usize, height as usize);
    let mut buf = img.as_raw().clone();
    if nw != w {
        buf = pass(&buf, (w, h), nw, true, filter);
    }
    if nh != h {
        buf = pass(&buf, (nw, h), nh, false, filter);
    }
    RgbImage::from_raw(width, height, buf).expect("the passes write width × height × 3 bytes")
}
