//! The two binaries start and describe themselves (the behaviour of every command is tested
//! from the workspace's `tests/`, which runs these binaries). Having an integration test here
//! also makes `cargo test` build both binaries for those tests.

use std::process::Command;

fn help(bin: &str, arg: &str) -> String {
    let out = Command::new(bin).arg(arg).output().expect("run");
    assert!(out.status.success(), "{bin} {arg}: {:?}", out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn backbone_lists_its_commands() {
    let text = help(env!("CARGO_BIN_EXE_backbone"), "--help");
    for command in ["run", "embed", "rerank", "classify", "convert", "serve"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
    assert!(help(env!("CARGO_BIN_EXE_backbone"), "--version").starts_with("backbone "));
}

#[test]
fn backbone_bench_describes_its_options() {
    let text = help(env!("CARGO_BIN_EXE_backbone-bench"), "--help");
    assert!(text.contains("--list-adapters"), "{text}");
}
