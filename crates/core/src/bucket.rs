//! Bucketing, the promise Rampart makes to applications (docs/routing.md#bucketing).
//!
//! `bucket = murmur3_x86_32(salt ":" identity, seed 0) % 10000`. Applications that want to
//! know which variant a user sees compute the same number, so nothing here may change
//! without failing the golden vectors in `tests/bucket_vectors.rs`.

use std::io::Read;

/// Number of buckets every route's identities are hashed into.
pub const BUCKETS: u16 = 10_000;

/// A bucket number in `0..10000`.
pub type Bucket = u16;

/// The murmur3 x86 32-bit hash of `bytes` with seed 0, as docs/routing.md#bucketing defines it.
pub fn murmur3_x86_32(bytes: &[u8]) -> u32 {
    hash_reader(&mut &bytes[..])
}

/// The bucket of `identity` on a route whose key prefix is `salt` followed by `:`.
///
/// Takes the prefix pre-built (see [`key_prefix`]) so the request path hashes without
/// allocating: the two slices are hashed one after the other as if concatenated.
pub fn bucket_for(key_prefix: &[u8], identity: &[u8]) -> Bucket {
    let hash = murmur3_x86_32_of_two(key_prefix, identity);
    // The remainder is below 10000, so it always fits.
    (hash % u32::from(BUCKETS)) as Bucket
}

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

fn scramble(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

/// murmur3 x86 32 (seed 0) of `a` followed by `b`, on the request path: the same function
/// as [`murmur3_x86_32`] (the `murmur3` crate, kept as the reference), without its
/// `io::Read` plumbing, which costs several times the hash itself on keys this short.
fn murmur3_x86_32_of_two(a: &[u8], b: &[u8]) -> u32 {
    let mut h: u32 = 0;
    let mut k: u32 = 0;
    let mut filled: u32 = 0;
    for &byte in a.iter().chain(b) {
        k |= u32::from(byte) << (8 * filled);
        filled += 1;
        if filled == 4 {
            h ^= scramble(k);
            h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
            k = 0;
            filled = 0;
        }
    }
    if filled > 0 {
        h ^= scramble(k);
    }
    // The length is taken modulo 2^32, as the reference does.
    h ^= (a.len().wrapping_add(b.len())) as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The bucket of `identity` under `salt`, for tools and tests that do not keep a prefix.
pub fn bucket_of(salt: &str, identity: &str) -> Bucket {
    bucket_for(&key_prefix(salt), identity.as_bytes())
}

/// The bytes `salt:` that start every key of a route, built once per config.
pub fn key_prefix(salt: &str) -> Box<[u8]> {
    let mut prefix = Vec::with_capacity(salt.len() + 1);
    prefix.extend_from_slice(salt.as_bytes());
    prefix.push(b':');
    prefix.into_boxed_slice()
}

fn hash_reader<R: Read>(reader: &mut R) -> u32 {
    // Reading from in-memory slices cannot fail; the io::Result is murmur3's generic API.
    murmur3::murmur3_32(reader, 0).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_the_published_vector_for_hello() {
        assert_eq!(murmur3_x86_32(b"hello"), 613_153_351);
        assert_eq!(murmur3_x86_32(b""), 0);
    }

    #[test]
    fn the_request_path_hash_agrees_with_the_reference_crate_at_every_length_and_split() {
        let mut seed = 0x9e37_79b9_u32;
        let mut bytes = Vec::new();
        for _ in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            bytes.push(seed as u8);
        }
        for len in 0..bytes.len() {
            let key = &bytes[..len];
            for split in [0, len / 3, len / 2, len.saturating_sub(1), len] {
                let (a, b) = key.split_at(split.min(len));
                assert_eq!(
                    murmur3_x86_32_of_two(a, b),
                    murmur3_x86_32(key),
                    "len {len} split {split}"
                );
            }
        }
    }

    #[test]
    fn golden_buckets_from_the_docs_hold() {
        assert_eq!(bucket_of("checkout", "alice"), 3009);
        assert_eq!(bucket_of("checkout", "bob"), 6439);
        assert_eq!(bucket_of("cart", "alice"), 8814);
        assert_eq!(bucket_of("checkout", ""), 2472);
    }
}
