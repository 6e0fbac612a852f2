//! A plugin's reply bytes: no panic; an empty event is no event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnstile_engine::actions::plugin::PluginReply;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = PluginReply::from_bytes(data) {
        assert!(r.event.as_deref() != Some(""));
    }
});
