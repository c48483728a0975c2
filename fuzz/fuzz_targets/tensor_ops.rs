#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasmscore_tensor::fuzzing::tensors_and_ops(data);
});
