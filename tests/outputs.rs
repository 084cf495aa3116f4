//! Where outputs go, through the `backbone` binary: only a regular file (or a new path) is
//! replaced atomically; a character device or a FIFO is written in place and stays what it was;
//! a socket is refused by name; names up to the file-name limit work; a file in a folder that
//! takes no new file is written in place (run as an unprivileged user, since root writes
//! anywhere); a `convert` that fails part-way leaves no half-made folder.

mod common;

use std::path::Path;
use std::process::Command;

use common::hostile::*;
use common::{bin, fixture};

fn input(dir: &Path) -> std::path::PathBuf {
    let input = dir.join("in.safetensors");
    pixel_file(&input, &[1, 3, 32, 32], None);
    input
}

/// A safetensors file: an 8-byte header length, then the JSON header.
fn is_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[8] == b'{'
}

#[cfg(unix)]
#[test]
fn devices_and_fifos_are_written_in_place_and_sockets_refused() {
    use std::os::unix::fs::FileTypeExt;
    let dir = scratch("outputs-special");
    let input = input(&dir);
    let model = fixture("cswin-micro-224");

    let r = run_model(Some("cpu"), &model, &input, Path::new("/dev/null"));
    assert!(
        r.0.status.success(),
        "{}",
        String::from_utf8_lossy(&r.0.stderr)
    );
    let null = std::fs::metadata("/dev/null").expect("/dev/null");
    assert!(
        null.file_type().is_char_device(),
        "/dev/null is still a device"
    );

    let fifo = dir.join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(&fifo).expect("read the FIFO"))
    };
    let r = run_model(Some("cpu"), &model, &input, &fifo);
    assert!(
        r.0.status.success(),
        "{}",
        String::from_utf8_lossy(&r.0.stderr)
    );
    let got = reader.join().expect("reader");
    assert!(is_safetensors(&got), "the FIFO carried the output");
    let kind = std::fs::symlink_metadata(&fifo).expect("fifo").file_type();
    assert!(kind.is_fifo(), "the FIFO is still a FIFO");

    let socket = dir.join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let r = run_model(Some("cpu"), &model, &input, &socket);
    assert_fails("--output a socket", r, &["socket", "refusing"], 30);
    let kind = std::fs::symlink_metadata(&socket)
        .expect("socket")
        .file_type();
    assert!(kind.is_socket(), "the socket is still a socket");
}

#[test]
fn output_names_up_to_the_file_name_limit_work() {
    let dir = scratch("outputs-long");
    let input = input(&dir);
    let model = fixture("cswin-micro-224");
    for len in [235, 255] {
        let name = format!("{}.safetensors", "n".repeat(len - ".safetensors".len()));
        let output = dir.join(&name);
        let r = run_model(Some("cpu"), &model, &input, &output);
        assert!(
            r.0.status.success(),
            "a {len}-byte name: {}",
            String::from_utf8_lossy(&r.0.stderr)
        );
        assert!(is_safetensors(&std::fs::read(&output).expect("output")));
    }
}

/// As an unprivileged user (root writes anywhere, so the case cannot arise as root), a
/// writable file in a folder that takes no new file is written in place, with a warning.
#[cfg(unix)]
#[test]
fn a_writable_file_in_a_read_only_folder_is_written_in_place() {
    use std::os::unix::fs::PermissionsExt;
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let dir = scratch("outputs-readonly");
    let input = input(&dir);
    let locked = dir.join("locked");
    std::fs::create_dir(&locked).expect("folder");
    let output = locked.join("out.safetensors");
    std::fs::write(&output, b"old").expect("old output");
    std::fs::set_permissions(&output, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    for path in [&dir, &input] {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let model = fixture("cswin-micro-224");
    let mut command = if is_root {
        // nobody: the folder really takes no new file.
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        c.arg(bin("backbone"));
        c
    } else {
        Command::new(bin("backbone"))
    };
    let out = command
        .args([
            "run",
            "--device",
            "cpu",
            "--model",
            p(&model),
            "--input",
            p(&input),
        ])
        .args(["--output", p(&output)])
        .output()
        .expect("run");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("written in place"), "it says so: {stderr}");
    assert!(is_safetensors(&std::fs::read(&output).expect("output")));
}

/// A conversion that fails while writing (a 4 KiB file-size limit) leaves no output folder.
#[test]
fn a_failed_convert_leaves_no_half_made_folder() {
    let dir = scratch("outputs-convert");
    let output = dir.join("converted");
    let checkpoint = fixture("pth/cswin-micro-s3full/cswin_micro.pth");
    let args = [
        "convert",
        "--checkpoint",
        p(&checkpoint),
        "--output",
        p(&output),
    ];
    let (out, _) = backbone_with_file_limit(4, &args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!output.exists(), "no half-made folder");
    let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().collect();
    assert!(left.is_empty(), "no staging folder left: {left:?}");
    let (out, _) = backbone(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(output.join("model.safetensors").is_file() && output.join("config.json").is_file());
}
