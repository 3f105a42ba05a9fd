//! Arbitrary bytes → botline-core's update parser, and `Handling::records` on what parses.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    botline_fuzz::check_update_parser(data);
});
