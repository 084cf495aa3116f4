"""TextEncoder: the fixtures' golden outputs, the CLI's numbers, options and errors."""

import json
import threading
import time

import numpy as np
import pytest

import backbone
from conftest import FIXTURES, assert_close, cli_json, golden, minilm_dir

MICRO = FIXTURES / "bert-micro-12l-random"
ST = FIXTURES / "text" / "st-mean-dense"
CROSS = FIXTURES / "text" / "bert-cross-micro"


def sentences(folder):
    return json.loads((folder / "sentences.json").read_text())


def test_the_micro_model_gives_one_row_per_text():
    model = backbone.TextEncoder(str(MICRO))
    assert model.encode(["a"]).shape == (1, 32)
    assert model.encode("a").shape == (32,)
    assert model.encode([]).shape == (0, 32)
    assert model.info["embedding_dim"] == 32
    assert model.encode(["a"]).dtype == np.float32


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_sentence_transformers_golden_and_the_cli(device):
    texts = sentences(ST)["texts"]
    want = golden(ST / "io.safetensors")
    model = backbone.TextEncoder(ST, device=device)
    got = model.encode(texts)
    assert_close("embeddings vs sentence-transformers", got, want["embeddings"], 1e-5)
    query = model.encode(texts, prompt_name="query")
    assert_close("query embeddings", query, want["query_embeddings"], 1e-5)
    # The same library through the CLI, on the same device: the same numbers.
    assert_close("embeddings vs backbone embed", got,
                 np.array(cli_json("embed", "--device", device, "--model", str(ST), *texts)), 1e-6)
    assert_close("query vs backbone embed --prompt-name", query,
                 np.array(cli_json("embed", "--device", device, "--model", str(ST),
                                   "--prompt-name", "query", *texts)), 1e-6)
    assert_close("prompt text = prompt name", model.encode(texts, prompt="query: "), query, 0)


def test_batch_size_and_normalize():
    texts = sentences(ST)["texts"]
    model = backbone.TextEncoder(ST, device="cpu")
    default = model.encode(texts)
    assert_close("batch_size=2", model.encode(texts, batch_size=2), default, 1e-6)
    np.testing.assert_allclose(np.linalg.norm(default, axis=1), 1.0, atol=1e-6)
    raw = model.encode(texts, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    assert_close("normalize=False, normalised", raw / np.linalg.norm(raw, axis=1, keepdims=True),
                 default, 1e-6)
    assert_close("normalize=True", model.encode(texts, normalize=True), default, 0)


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_rerank_matches_cross_encoder_and_the_cli(device):
    s = sentences(CROSS)
    want = golden(CROSS / "io.safetensors")
    model = backbone.TextEncoder(CROSS, device=device)
    scores = model.rerank(s["query"], s["documents"])
    assert scores.shape == (len(s["documents"]),)
    assert_close("scores vs CrossEncoder.predict", scores, want["pair_scores"], 1e-5)
    assert_close("logits", model.rerank(s["query"], s["documents"], raw=True),
                 want["pair_logits"][:, 0], 1e-5)
    cli_scores = cli_json("rerank", "--device", device, "--model", str(CROSS),
                          "--query", s["query"], *s["documents"])
    assert_close("scores vs backbone rerank", scores, np.array(cli_scores), 1e-6)


def test_real_minilm_matches_sentence_transformers_and_the_cli():
    folder = minilm_dir()
    texts = sentences(FIXTURES / "all-minilm-l6-v2")["sentences"]
    want = golden(FIXTURES / "all-minilm-l6-v2" / "golden.safetensors")["sentence_embedding"]
    model = backbone.TextEncoder(folder, device="cpu")
    got = model.encode(texts)
    assert got.shape == (len(texts), 384)
    assert_close("all-MiniLM-L6-v2 vs sentence-transformers", got, want, 1e-5)
    assert_close("all-MiniLM-L6-v2 vs backbone embed", got,
                 np.array(cli_json("embed", "--device", "cpu", "--model", str(folder), *texts)),
                 1e-6)


def test_errors_carry_the_library_message():
    with pytest.raises(backbone.BackboneError, match="config.json"):
        backbone.TextEncoder(FIXTURES / "no-such-folder")
    with pytest.raises(backbone.BackboneError, match="device"):
        backbone.TextEncoder(MICRO, device="tpu")
    with pytest.raises(backbone.BackboneError, match="dtype"):
        backbone.TextEncoder(MICRO, dtype="int8")
    with pytest.raises(backbone.BackboneError, match="max_length"):
        backbone.TextEncoder(MICRO, max_length=0)
    model = backbone.TextEncoder(MICRO, device="cpu")
    with pytest.raises(backbone.BackboneError, match="not a cross-encoder"):
        model.rerank("q", ["d"])
    with pytest.raises(backbone.BackboneError, match="prompt"):
        model.encode(["a"], prompt_name="nope")
    with pytest.raises(backbone.BackboneError, match="batch_size"):
        model.encode(["a"], batch_size=0)
    with pytest.raises(TypeError):
        model.encode([b"bytes"])
    with pytest.raises(TypeError):
        model.rerank("q", "one string")


def test_the_gil_is_released_while_the_model_runs():
    """A Python thread keeps running while another waits on a (slow) forward."""
    model = backbone.TextEncoder(MICRO, device="reference")
    texts = ["a sentence of a few words to embed"] * 96
    done = threading.Event()
    ticks = []

    def count():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    start = time.perf_counter()
    results = {}

    def work(i):
        results[i] = model.encode(texts, batch_size=16)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    took = time.perf_counter() - start
    done.set()
    counter.join()
    assert_close("two threads, same answer", results[0], results[1], 0)
    # With the GIL held for the whole call the counter would stall for its length.
    gaps = np.diff([start] + [t for t in ticks if t >= start])
    assert took > 0.2, f"the forward took {took:.3f} s: too short to tell"
    assert gaps.max() < 0.5 * took, f"the counter stalled {gaps.max():.3f} s of {took:.3f} s"
