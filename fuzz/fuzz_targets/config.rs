//! libFuzzer entry for the `config` checks in `rampart_fuzz::config`
//! (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rampart_fuzz::config::check(data);
});
