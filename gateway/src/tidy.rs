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

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate sits in the workspace")
        .to_path_buf()
}

/// Every file name in the repository (not under `target/` or `.git/`), for bare names.
fn all_file_names(dir: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).expect("directory") {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                all_file_names(&path, out);
            }
        } else {
            out.push(name);
        }
    }
}

/// The words in `backticks` of a Markdown text.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// docs/ARCHITECTURE.md cannot drift silently: every path it names in backticks exists (a
/// path with a directory part from the repository root, a bare file name somewhere in it).
#[test]
fn architecture_names_only_existing_paths() {
    let root = repo_root();
    let doc = fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let mut names = Vec::new();
    all_file_names(&root, &mut names);
    let file_like = |s: &str| {
        [".rs", ".sh", ".md", ".toml", ".py", ".cpp"]
            .iter()
            .any(|ext| s.ends_with(ext))
    };
    let mut checked = 0;
    for span in code_spans(&doc) {
        if span.contains(' ') || span.starts_with('/') {
            continue; // code, or a URL path
        }
        if span.contains('/') && (file_like(span) || span.ends_with('/')) {
            assert!(
                root.join(span).exists(),
                "docs/ARCHITECTURE.md names `{span}`, which does not exist"
            );
            checked += 1;
        } else if file_like(span) {
            assert!(
                names.iter().any(|n| n == span),
                "docs/ARCHITECTURE.md names `{span}`, which no file is called"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 20,
        "only {checked} paths found: is the test still reading the map?"
    );
}

/// Files stay readable: at most 600 lines, unless the file says at its top why it is one piece
/// (STYLE.md; the restructure of issue 7).
#[test]
fn source_files_stay_under_600_lines() {
    let root = repo_root();
    for dir in ["gateway/src", "loadgen/src"] {
        for file in rust_files(&root.join(dir)) {
            let text = fs::read_to_string(&file).unwrap();
            let lines = text.lines().count();
            let head: String = text.lines().take(15).collect::<Vec<_>>().join("\n");
            assert!(
                lines <= 600 || head.contains("one piece"),
                "{} has {lines} lines",
                file.display()
            );
        }
    }
}
