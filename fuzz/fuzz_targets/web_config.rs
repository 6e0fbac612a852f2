//! The web configuration file (`--web-config`): no panic; an error names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use turnstile_exporter::server::web::WebConfig;

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"));
    let path = dir.path().join("web.yml");
    std::fs::write(&path, data).expect("the file is written");
    if let Err(e) = WebConfig::load(&path) {
        assert!(e.starts_with(&path.display().to_string()), "{e}");
    }
});
