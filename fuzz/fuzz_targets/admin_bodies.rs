#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasmscore_control::fuzzing::admin_bodies(data);
});
