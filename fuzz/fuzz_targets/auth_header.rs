#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasmscore_router::auth::fuzz_check(data);
});
