#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasmscore_server::fuzzing::oip_decoders(data);
});
