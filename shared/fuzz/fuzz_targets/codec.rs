#![no_main]
//! Every wire type decoded from arbitrary bytes: an error is fine, a panic or an allocation past
//! the frame cap is a bug.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fifty_shared::wire::decode_any_for_fuzzing(data);
});
