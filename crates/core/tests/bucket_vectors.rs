//! Bucketing is a promise to applications: these vectors were computed with an independent
//! murmur3 (`tests/data/buckets.tsv`, from the shared contract). Any change that moves a user
//! to another bucket fails here.

use rampart_core::bucket::{bucket_of, murmur3_x86_32};

#[test]
fn all_shared_bucket_vectors_hold() {
    let data = include_str!("data/buckets.tsv");
    let mut checked = 0;
    for line in data.lines() {
        if line.starts_with('#') || line.starts_with("salt\t") || line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [salt, identity, hash, bucket] = fields[..] else {
            panic!("malformed vector line {line:?}");
        };
        let key = format!("{salt}:{identity}");
        assert_eq!(
            murmur3_x86_32(key.as_bytes()).to_string(),
            hash,
            "hash of {key:?}"
        );
        assert_eq!(
            bucket_of(salt, identity).to_string(),
            bucket,
            "bucket of {key:?}"
        );
        checked += 1;
    }
    assert_eq!(checked, 720, "the vector file holds 720 vectors");
}
