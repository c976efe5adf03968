#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    millpond_suite::fuzz_targets::segment_recover(data);
});
