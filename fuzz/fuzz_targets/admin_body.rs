//! libFuzzer entry for the `admin_body` checks in `rampart_fuzz::admin`
//! (docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rampart_fuzz::admin::body(data);
});
