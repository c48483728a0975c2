#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasmscore_remote::wire::fuzzing::node_answers(data);
});
