//! Seeded randomness for the tests: the same seed gives the same fixture
//! files and the same fuzz inputs.

use proptest::prelude::{Rng, RngExt};
use proptest::test_runner::{RngAlgorithm, TestRng};

/// The tests' seeded generator: proptest's ChaCha20 (from rand), keyed by
/// a seed, with the draws the tests make (file contents and sizes of the
/// fixtures, fuzz inputs, attack timing). It only delegates to rand.
#[derive(Clone, Debug)]
pub struct Seeded(pub TestRng);

impl Seeded {
    pub fn new(seed: u64) -> Seeded {
        let mut key = [0; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        Seeded(TestRng::from_seed(RngAlgorithm::ChaCha, &key))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.random_range(0..n)
    }
    /// Uniform in lo..=hi (lo <= hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0.random_range(lo..=hi)
    }
    /// True with probability num/den.
    pub fn chance(&mut self, num: u32, den: u32) -> bool {
        self.0.random_ratio(num, den)
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.0.random_range(0..items.len())]
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill_bytes(buf);
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(&mut v);
        v
    }
    /// A derived generator (for one case, one thread, one property).
    pub fn fork(&mut self) -> Seeded {
        Seeded(TestRng::from_seed(
            RngAlgorithm::ChaCha,
            &self.0.random::<[u8; 32]>(),
        ))
    }
}
