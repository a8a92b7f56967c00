//! Tidy checks: promises about the source tree that a compiler cannot keep.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The protocol core stays sans-I/O: no sockets, no clocks, no threads (STYLE.md habit 1).
#[test]
fn proto_is_sans_io() {
    let forbidden = [
        "mio",
        "std::net",
        "std::thread",
        "Instant::now",
        "SystemTime",
        "std::fs",
        "tokio",
    ];
    let files = rust_files(&src().join("proto"));
    assert!(files.len() >= 8, "proto files found: {files:?}");
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} mentions {word}: proto must stay sans-I/O",
                file.display()
            );
        }
    }
}

/// Every source file opens with a `//!` comment saying what it owns (STYLE.md habit 8).
#[test]
fn every_file_has_a_module_doc() {
    for file in rust_files(&src()) {
        let text = fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} does not open with a //! comment",
            file.display()
        );
    }
}

/// `unsafe` stays in small leaf functions, each block explained (STYLE.md habit 9).
#[test]
fn unsafe_blocks_have_safety_comments() {
    for file in rust_files(&src())
        .into_iter()
        .filter(|f| !f.ends_with("tidy.rs"))
    {
        let text = fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains("unsafe {") && !line.trim_start().starts_with("//") {
                let before = &lines[i.saturating_sub(3)..i];
                assert!(
                    before.iter().any(|l| l.contains("// SAFETY:")),
                    "{}:{}: unsafe block without a // SAFETY: comment",
                    file.display(),
                    i + 1
                );
            }
        }
    }
}
