//! Choosing the next image token on the host: super-conditioning, temperature, top-k, top-p and
//! a categorical draw by inverse CDF from a seeded ChaCha20 stream, one stream per image, so a
//! seed gives the same tokens on every backend and whatever else is in the batch.
//!
//! The rule, in f64 over the first `codebook` logits (rows past the codebook — mega's padding and
//! the start token — can never be valid image tokens):
//! ```text
//! l = (1 − s)·uncond + s·cond
//! keep = l ≥ k-th largest l                 (ties kept, as min-dalle)
//! p = exp((l − max l) / T) · keep
//! top-p: sort p descending, keep while the mass before a token is < top_p (HF's warper)
//! token = first i with cumsum(p)[i] > u · sum(p),  u ~ U[0, 1) from the image's stream
//! ```
//! With `top_k = 1` this is the argmax (ties: lowest index), no random number involved.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// Super-conditioning scale `s` (1 = no guidance).
    pub cond_scale: f32,
    pub temperature: f32,
    /// 0 = no top-k filter.
    pub top_k: usize,
    /// 1 = no nucleus filter.
    pub top_p: f32,
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::invalid(format!(
                "temperature must be > 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if !self.cond_scale.is_finite() {
            return Err(Error::invalid("cond_scale must be finite"));
        }
        Ok(())
    }
}

/// One image's random stream: `u_t` for every decode step.
pub struct TokenRng(ChaCha20Rng);

impl TokenRng {
    pub fn new(seed: u64) -> Self {
        Self(ChaCha20Rng::seed_from_u64(seed))
    }

    pub fn uniform(&mut self) -> f64 {
        self.0.random::<f64>()
    }
}

/// Picks a token from one image's unconditional and conditional logit rows with uniform `u`.
pub fn sample_token(
    uncond: &[f32],
    cond: &[f32],
    codebook: usize,
    cfg: &SamplingConfig,
    u: f64,
) -> u32 {
    let n = codebook.min(uncond.len()).min(cond.len());
    let s = f64::from(cfg.cond_scale);
    let l: Vec<f64> = (0..n)
        .map(|i| (1.0 - s) * f64::from(uncond[i]) + s * f64::from(cond[i]))
        .collect();
    let max = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let k = if cfg.top_k == 0 { n } else { cfg.top_k.min(n) };
    if k == 1 {
        // argmax, lowest index on ties (what the inverse CDF below would also give)
        return l.iter().position(|&x| x == max).unwrap_or(0) as u32;
    }
    let kth = if k == n {
        f64::NEG_INFINITY
    } else {
        let mut sorted = l.clone();
        let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        *kth
    };
    let t = f64::from(cfg.temperature);
    let mut p: Vec<f64> = l
        .iter()
        .map(|&x| if x >= kth { ((x - max) / t).exp() } else { 0.0 })
        .collect();
    if cfg.top_p < 1.0 {
        nucleus(&mut p, f64::from(cfg.top_p));
    }
    let total: f64 = p.iter().sum();
    let target = u * total;
    let mut acc = 0.0;
    for (i, &pi) in p.iter().enumerate() {
        acc += pi;
        if acc > target {
            return i as u32;
        }
    }
    // rounding left u·total at the very top: the last kept token
    p.iter().rposition(|&x| x > 0.0).unwrap_or(0) as u32
}

/// Zeroes the tokens outside the smallest high-probability set whose mass reaches `top_p`
/// (the first token is always kept).
fn nucleus(p: &mut [f64], top_p: f64) {
    let total: f64 = p.iter().sum();
    let mut order: Vec<usize> = (0..p.len()).filter(|&i| p[i] > 0.0).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    let mut before = 0.0;
    let mut cut = order.len();
    for (rank, &i) in order.iter().enumerate() {
        if rank > 0 && before / total >= top_p {
            cut = rank;
            break;
        }
        before += p[i];
    }
    for &i in &order[cut..] {
        p[i] = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(top_k: usize, top_p: f32) -> SamplingConfig {
        SamplingConfig {
            cond_scale: 1.0,
            temperature: 1.0,
            top_k,
            top_p,
        }
    }

    #[test]
    fn greedy_is_argmax_of_guided_logits() {
        let uncond = [0.0, 1.0, 0.0];
        let cond = [0.5, 1.0, 0.0];
        // s = 3: l = uncond + 3 (cond − uncond) = [1.5, 1.0, 0.0]
        let c = SamplingConfig {
            cond_scale: 3.0,
            ..cfg(1, 1.0)
        };
        assert_eq!(sample_token(&uncond, &cond, 3, &c, 0.99), 0);
    }

    #[test]
    fn inverse_cdf_over_kept_tokens() {
        let l = [0.0f32, 0.0, 0.0, 0.0];
        // equal probabilities: u in [0.25, 0.5) picks token 1
        assert_eq!(sample_token(&l, &l, 4, &cfg(0, 1.0), 0.3), 1);
        // top-2 of four equal logits keeps all (ties kept)
        assert_eq!(sample_token(&l, &l, 4, &cfg(2, 1.0), 0.8), 3);
        // codebook restriction: only the first two are candidates
        assert_eq!(sample_token(&l, &l, 2, &cfg(0, 1.0), 0.8), 1);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        let mut p = vec![0.1, 0.5, 0.3, 0.1];
        nucleus(&mut p, 0.7);
        assert_eq!(p, vec![0.0, 0.5, 0.3, 0.0]);
        let mut p = vec![0.1, 0.5, 0.3, 0.1];
        nucleus(&mut p, 0.5);
        assert_eq!(p, vec![0.0, 0.5, 0.0, 0.0]);
        let mut p = vec![0.1, 0.5, 0.3, 0.1];
        nucleus(&mut p, 0.01);
        assert_eq!(p, vec![0.0, 0.5, 0.0, 0.0]);
    }

    #[test]
    fn streams_are_seeded() {
        let a: Vec<f64> = (0..4)
            .map({
                let mut r = TokenRng::new(7);
                move |_| r.uniform()
            })
            .collect();
        let mut r = TokenRng::new(7);
        assert_eq!(a, (0..4).map(|_| r.uniform()).collect::<Vec<_>>());
        assert_ne!(a[0], TokenRng::new(8).uniform());
    }
}
