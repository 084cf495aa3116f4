#!/usr/bin/env bash
# Builds the WebGPU demo: wasm32 library + wasm-bindgen glue into examples/web/pkg/.
# Uses rustup's wasm32 target when it is installed; otherwise Debian's rustc-web route
# (rustc 1.96 + rust-web-src: a wasm32 std is built once into $BACKBONE_WASM_SYSROOT, see the
# team's WASM notes). Installs the pinned wasm-bindgen-cli when it is missing.
set -euo pipefail
cd "$(dirname "$0")"
WASM_BINDGEN_VERSION=0.2.130 # must equal the wasm-bindgen crate pinned in Cargo.toml
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
export PATH="$HOME/.cargo/bin:$PATH"

if rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
    cargo=cargo
else
    # Debian's toolchain: apt-get install rustc-web cargo-web rust-web-src rust-web-llvm lld-22
    [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ] || {
        echo "no wasm32 target: install rustup's (rustup target add wasm32-unknown-unknown) or" \
             "Debian's rustc-web cargo-web rust-web-src rust-web-llvm lld-22" >&2
        exit 1
    }
    sysroot=${BACKBONE_WASM_SYSROOT:-$HOME/.cache/backbone/wasm-sysroot}
    libdir=$sysroot/lib/rustlib/wasm32-unknown-unknown/lib
    if ! compgen -G "$libdir/libstd-*.rlib" >/dev/null; then
        echo "building the wasm32 standard library into $sysroot (once)"
        work=$(mktemp -d)
        mkdir -p "$work/src" && : >"$work/src/lib.rs"
        printf '[package]\nname="stdbuild"\nversion="0.0.0"\nedition="2021"\n' >"$work/Cargo.toml"
        (cd "$work" && RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo build --quiet --release \
            -Zbuild-std=std,panic_abort,test --target wasm32-unknown-unknown --target-dir "$work/target")
        mkdir -p "$libdir"
        cp "$work"/target/wasm32-unknown-unknown/release/deps/lib*.rlib "$libdir/"
        rm -f "$libdir"/libstdbuild*
        ln -sfn /usr/lib/rustlib/x86_64-unknown-linux-gnu "$sysroot/lib/rustlib/x86_64-unknown-linux-gnu"
        rm -rf "$work"
    fi
    export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
    export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="--sysroot=$sysroot"
    cargo=/usr/bin/cargo
fi

if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
    echo "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (several minutes, once)"
    cargo install --quiet wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

# --locked: the committed Cargo.lock pins the wasm build; a stale one fails here
$cargo build --release --locked --target wasm32-unknown-unknown --target-dir "$target_dir"
wasm-bindgen --target web --out-dir pkg "$target_dir/wasm32-unknown-unknown/release/backbone_web.wasm"
echo "built examples/web/pkg; serve the repository root and open /examples/web/index.html"
