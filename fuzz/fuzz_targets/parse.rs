//! The parser on arbitrary UTF-8: no panic, spans inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    xpol_fuzz::check_parse(text);
});
