//! The browser test: the library compiled to wasm32, run on WebGPU in headless Chromium, must
//! reproduce the bert-micro and cswin-micro fixtures within their tolerances
//! (examples/web/browser_test.mjs). It needs the wasm toolchain, Node.js and Chromium, which
//! `.ci/run` installs; set BACKBONE_BROWSER_TESTS=1 to run it. Without that variable it is reported
//! as ignored.

use std::path::Path;
use std::process::Command;

#[test]
#[cfg_attr(
    not(browser_tests),
    ignore = "set BACKBONE_BROWSER_TESTS=1 (needs the wasm32 toolchain, Node.js and Chromium; \
              .ci/run installs them)"
)]
fn fixtures_match_on_webgpu_in_headless_chromium() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web");
    let run = |what: &str, cmd: &mut Command| {
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        assert!(status.success(), "{what} failed ({status})");
    };
    run(
        "examples/web/build.sh",
        &mut Command::new(web.join("build.sh")),
    );
    if !web.join("node_modules/playwright-core").exists() {
        run(
            "npm install",
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund"])
                .current_dir(&web),
        );
    }
    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-demo.png");
    run(
        "browser_test.mjs",
        Command::new("node")
            .arg(web.join("browser_test.mjs"))
            .arg("--screenshot")
            .arg(&screenshot),
    );
}
