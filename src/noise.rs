//! Host-side seeded noise, so a seed gives the same starting latents on every backend.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

/// `count` standard-normal values from `seed` (ChaCha20, a stream that is stable across
/// platforms and crate versions of the same major release).
pub fn normal(seed: u64, count: usize) -> Vec<f32> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect()
}

/// Noise for `n` images of `per_image` values each: image `k` uses `seed + k`, so image `k` of a
/// batch equals a single-image run with that seed.
pub fn batch_normal(seed: u64, n: usize, per_image: usize) -> Vec<f32> {
    BatchNoise::new(seed, n).draw(per_image)
}

/// One RNG stream per image (`seed + k`): the starting latents and any noise a stochastic
/// sampler needs later come from the same stream, so batching never changes an image.
pub struct BatchNoise {
    rngs: Vec<ChaCha20Rng>,
}

impl BatchNoise {
    pub fn new(seed: u64, n: usize) -> Self {
        Self {
            rngs: (0..n as u64)
                .map(|k| ChaCha20Rng::seed_from_u64(seed.wrapping_add(k)))
                .collect(),
        }
    }

    /// The next `per_image` standard-normal values of every image, image-major.
    pub fn draw(&mut self, per_image: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(per_image * self.rngs.len());
        for rng in &mut self.rngs {
            out.extend((0..per_image).map(|_| -> f32 { StandardNormal.sample(rng) }));
        }
        out
    }
}

/// A fresh random seed (from the OS) when the user gave none; kept to 32 bits so it can be
/// typed back into any UI.
pub fn random_seed() -> u64 {
    u64::from(rand::random::<u32>().max(1))
}
