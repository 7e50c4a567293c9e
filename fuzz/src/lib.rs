//! The checks behind Rampart's fuzz targets (docs/fuzzing.md).
//!
//! Each public function takes the fuzzer's bytes and panics when an invariant breaks, which
//! is how libFuzzer learns of a bug. The same functions replay the checked-in corpus and
//! every input kept under `fuzz/regressions/` in plain `cargo test`
//! (`tests/fuzz_regressions.rs` includes this file as a module), so a bug found once stays
//! fixed without the fuzzer. Paths inside are relative (`super::`) for that reason.

pub mod admin;
pub mod config;
pub mod h1;
pub mod ofrep;

/// A target's check: panics when an invariant breaks.
pub type Check = fn(&[u8]);

/// Every target, by the name of its directories under `fuzz/corpus/` and
/// `fuzz/regressions/`, with the check it runs.
pub const TARGETS: &[(&str, Check)] = &[
    ("h1_split", h1::split),
    ("h1_serve", h1::serve),
    ("config", config::check),
    ("admin_body", admin::body),
    ("ofrep_body", ofrep::body),
];

/// A small deterministic generator (splitmix64), seeded from the input itself, for the
/// choices a target makes beyond the bytes (read sizes, buffer sizes): a failing input
/// fails again the same way when replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with the FNV-1a hash of `data` and a `stream` number.
    pub fn from_input(data: &[u8], stream: u64) -> Rng {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ stream;
        for &byte in data {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Rng(hash)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `1..=max` (1 when `max` is 0).
    pub fn size(&mut self, max: usize) -> usize {
        let max = u64::try_from(max.max(1)).unwrap_or(u64::MAX);
        usize::try_from(self.next_u64() % max + 1).unwrap_or(1)
    }
}
