//! libFuzzer entry for the `ofrep_body` checks in `rampart_fuzz::ofrep`
//! (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rampart_fuzz::ofrep::body(data);
});
