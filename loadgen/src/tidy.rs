//! Tidy checks on loadgen's own sources: promises a compiler cannot keep (STYLE.md habits 8
//! and 9).

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

#[test]
fn every_file_has_a_module_doc_and_unsafe_is_explained() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = rust_files(&root.join("src"));
    files.extend(rust_files(&root.join("tests")));
    assert!(files.len() >= 10, "{files:?}");
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} has no //! comment",
            file.display()
        );
        if file.ends_with("tidy.rs") {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains("unsafe {") && !line.trim_start().starts_with("//") {
                let before = &lines[i.saturating_sub(4)..i];
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
