//! The configuration loader on any main file: TOML parsing, layering, structural checks and
//! validation give a Config or a list of issues, never a panic. The file is written to one
//! temporary directory (the loader reads files, as the daemon does).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use otpgate::config::load::{Sources, load};

fn main_file() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("otpgate.toml");
        (dir, path)
    });
    path
}

fuzz_target!(|data: &[u8]| {
    let main = main_file();
    std::fs::write(main, data).expect("write the config file");
    let sources = Sources {
        main: main.clone(),
        env: Default::default(),
    };
    if let Ok(cfg) = load(&sources) {
        // A loaded config can be summarised and compared with itself, as a reload does.
        let _ = cfg.summary();
        assert!(otpgate::config::diff::changes(&cfg, &cfg).is_empty());
    }
});
