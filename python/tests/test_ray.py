"""examples/ray_embed.py on a local Ray (2 actors, the CPU path) over 2,000 sentences: every
row comes back once, with the vector the CLI gives that text."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.dataset as pads

from conftest import FIXTURES, ROOT, assert_close, backbone_bin

MICRO = FIXTURES / "bert-micro-12l-random"
WORDS = "alpha beta gamma delta station river church bridge cat dog fox mat quick brown".split()


def corpus(n):
    # Texts of 4 to 14 words, some repeated, each with its own id.
    return [
        {"id": i, "text": " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 11))
         + (f" number {i}" if i % 5 else "")}
        for i in range(n)
    ]


def test_ray_data_embeds_every_row_once_as_the_cli_does(tmp_path):
    rows = corpus(2000)
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "embeddings"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ray_embed.py"), "--model", str(MICRO),
         "--input", str(source), "--output", str(out), "--concurrency", "2",
         "--cpus-per-actor", "0.5", "--device", "cpu", "--batch-size", "128"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, f"ray_embed.py exited {done.returncode}:\n{done.stderr[-4000:]}"
    assert "embedded 2000 rows" in done.stdout, done.stdout

    table = pads.dataset(str(out), format="parquet").to_table()
    ids = table.column("id").to_pylist()
    assert len(ids) == 2000 and sorted(ids) == list(range(2000)), "rows lost or duplicated"
    texts = table.column("text").to_pylist()
    assert all(texts[k] == rows[i]["text"] for k, i in enumerate(ids)), "texts moved between rows"
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    got = got[np.argsort(ids)]

    lines = tmp_path / "texts.txt"
    lines.write_text("".join(r["text"] + "\n" for r in rows))
    cli = subprocess.run(
        [backbone_bin(), "embed", "--device", "cpu", "--model", str(MICRO), "--texts-file",
         str(lines)], capture_output=True, text=True, timeout=600,
    )
    assert cli.returncode == 0, cli.stderr
    want = np.array(json.loads(cli.stdout), dtype=np.float32)
    assert want.shape == (2000, 32)
    assert_close("Ray rows vs backbone embed", got, want, 1e-6)
