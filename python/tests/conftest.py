"""Shared helpers of the Python package's tests.

They compare the package with the `backbone` command line (the same library through another
front door), with the fixtures' golden outputs (transformers / sentence-transformers /
the official CSWin code) and, with BACKBONE_MINILM_DIR, with the real all-MiniLM-L6-v2.
`cargo test --release --test python` runs them after building the CLI (BACKBONE_BIN); run
directly, they look for target/release/backbone.
"""

import json
import os
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def backbone_bin() -> str:
    path = os.environ.get("BACKBONE_BIN") or str(ROOT / "target" / "release" / "backbone")
    if not os.path.isfile(path):
        pytest.fail(f"{path} is missing: build the CLI (cargo build --release -p backbone-cli)")
    return path


def cli(*args: str) -> str:
    """`backbone ARGS...`: its stdout; a non-zero exit fails the test with its stderr."""
    done = subprocess.run([backbone_bin(), *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"backbone {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def cli_json(*args: str):
    return json.loads(cli(*args))


def golden(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def assert_close(what: str, got: np.ndarray, want: np.ndarray, rel: float) -> None:
    """|got - want| <= rel * max|want| everywhere; names the first bad index."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    bound = rel * max(float(np.abs(want).max()), 1e-30)
    err = np.abs(got - want)
    bad = np.argwhere(~(err <= bound))
    if len(bad):
        i = tuple(bad[0])
        pytest.fail(
            f"{what}: {len(bad)} values over {bound:.3g} (max err {err.max():.3g}); first at "
            f"{i}: {got[i]} vs {want[i]}"
        )


def png(pixels: np.ndarray) -> bytes:
    """A PNG file of uint8 HWC pixels (1, 3 or 4 channels), written by hand."""
    h, w, c = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    colour = {1: 0, 3: 2, 4: 6}[c]
    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 folder (.ci/run fetches it); a failure, not a skip, without."""
    d = os.environ.get("BACKBONE_MINILM_DIR")
    if not d:
        pytest.fail("BACKBONE_MINILM_DIR is not set (the real all-MiniLM-L6-v2 folder)")
    return Path(d)
