//! libFuzzer entry for the `h1_split` checks in `rampart_fuzz::h1`
//! (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rampart_fuzz::h1::split(data);
});
