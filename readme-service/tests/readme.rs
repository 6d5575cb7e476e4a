//! README.md shows this crate file for file: each block after a `<!-- file: PATH -->` comment
//! must equal that file, so the README's service compiles and its test passes as pasted.

use std::collections::BTreeSet;
use std::path::Path;

/// The files the README shows in full.
const SHOWN: [&str; 4] = [
    "readme-service/Cargo.toml",
    "readme-service/src/lib.rs",
    "readme-service/src/bin/consumer.rs",
    "readme-service/tests/harness.rs",
];

/// A fenced block of the README: its info string, its text, and the file it shows (if marked).
struct Block {
    info: String,
    text: String,
    file: Option<String>,
    line: usize,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines().enumerate();
    let mut file = None;
    while let Some((n, line)) = lines.next() {
        if let Some(path) = line
            .strip_prefix("<!-- file: ")
            .and_then(|l| l.strip_suffix(" -->"))
        {
            file = Some(path.to_owned());
        } else if let Some(info) = line.strip_prefix("```") {
            let mut text = String::new();
            for (_, line) in lines.by_ref().take_while(|(_, l)| *l != "```") {
                text.push_str(line);
                text.push('\n');
            }
            let info = info.to_owned();
            blocks.push(Block {
                info,
                text,
                file: file.take(),
                line: n + 1,
            });
        } else if !line.is_empty() {
            assert!(
                file.is_none(),
                "README.md:{}: a file comment not followed by its block",
                n + 1
            );
        }
    }
    blocks
}

fn readme() -> (std::path::PathBuf, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    (root, readme)
}

#[test]
fn the_readme_shows_this_crate_exactly() {
    let (root, readme) = readme();
    let mut shown = BTreeSet::new();
    let blocks = blocks(&readme);
    for block in blocks.iter().filter(|b| b.file.is_some()) {
        let path = block.file.as_deref().unwrap();
        let file = std::fs::read_to_string(root.join(path))
            .unwrap_or_else(|e| panic!("README.md:{}: {path}: {e}", block.line));
        assert!(
            file == block.text,
            "README.md:{}: the block differs from {path}; copy the file into the README:\n{file}",
            block.line
        );
        shown.insert(path);
    }
    assert_eq!(shown, BTreeSet::from(SHOWN), "the files README.md shows");
}

#[test]
fn the_readme_rust_blocks_hide_nothing_and_skip_only_checked_code() {
    let (_, readme) = readme();
    for block in blocks(&readme)
        .iter()
        .filter(|b| b.info.starts_with("rust"))
    {
        for line in block.text.lines() {
            let trimmed = line.trim_start();
            assert!(
                trimmed != "#" && !trimmed.starts_with("# "),
                "README.md:{}: a hidden doctest line does not paste: {line}",
                block.line
            );
        }
        // Not a doctest of messaging-core: then it must be compiled here.
        if block.info.contains("ignore") {
            assert!(
                block.file.is_some(),
                "README.md:{}: an unchecked `ignore` block",
                block.line
            );
        }
    }
}
