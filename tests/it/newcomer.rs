//! The README, followed literally from an empty directory (`tests/newcomer.sh`): every
//! command it runs is read from README.md, so the README cannot drift from what works.

use std::path::Path;
use std::process::Command;

#[test]
fn the_readme_works_from_an_empty_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root.join("tests/newcomer.sh"))
        .env("WEIR", env!("CARGO_BIN_EXE_weir"))
        .env("README", root.join("README.md"))
        .env("WORK", tmp.path())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("newcomer: the README works from an empty directory"),
        "{said}"
    );
}
