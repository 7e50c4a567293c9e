//! Bucketing, the promise Rampart makes to applications (SPEC section 3).
//!
//! `bucket = murmur3_x86_32(salt ":" identity, seed 0) % 10000`. Applications that want to
//! know which variant a user sees compute the same number, so nothing here may change
//! without failing the golden vectors in `tests/bucket_vectors.rs`.

use std::io::Read;

/// Number of buckets every route's identities are hashed into.
pub const BUCKETS: u16 = 10_000;

/// A bucket number in `0..10000`.
pub type Bucket = u16;

/// The murmur3 x86 32-bit hash of `bytes` with seed 0, as SPEC section 3 defines it.
pub fn murmur3_x86_32(bytes: &[u8]) -> u32 {
    hash_reader(&mut &bytes[..])
}

/// The bucket of `identity` on a route whose key prefix is `salt` followed by `:`.
///
/// Takes the prefix pre-built (see [`key_prefix`]) so the request path hashes without
/// allocating: the two slices are streamed through the hash one after the other.
pub fn bucket_for(key_prefix: &[u8], identity: &[u8]) -> Bucket {
    let hash = hash_reader(&mut key_prefix.chain(identity));
    // The remainder is below 10000, so it always fits.
    (hash % u32::from(BUCKETS)) as Bucket
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
    fn golden_buckets_from_spec_hold() {
        assert_eq!(bucket_of("checkout", "alice"), 3009);
        assert_eq!(bucket_of("checkout", "bob"), 6439);
        assert_eq!(bucket_of("cart", "alice"), 8814);
        assert_eq!(bucket_of("checkout", ""), 2472);
    }
}
