//! Everything that reads a delivery from `onboarding.requests`: body, headers
//! and properties, through the front door (parse, the provider's `plan`, the
//! first step message) or into the failed event and the dead-letter copy.
//! The input format and the checks are in `src/lib.rs`, shared with
//! `tests/fuzz_corpus.rs`, which replays the corpus in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = front_door_fuzz::check(data);
});
