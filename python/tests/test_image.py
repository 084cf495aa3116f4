"""ImageEncoder: the official CSWin outputs, the CLI's classes, image inputs and errors."""

import numpy as np
import pytest

import backbone
from conftest import FIXTURES, assert_close, cli, golden, png

MICRO = FIXTURES / "cswin-micro-224"
SEG = FIXTURES / "cswin-seg-micro"


def photo(h, w, seed):
    """A smooth seeded picture (gradients and a blob), uint8 HWC RGB."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([
        128 + 100 * np.sin(x / rng.uniform(5, 20) + rng.uniform(0, 6)),
        128 + 100 * np.cos(y / rng.uniform(5, 20) + rng.uniform(0, 6)),
        255 * np.exp(-((x - w / 2) ** 2 + (y - h / 2) ** 2) / (2 * (min(h, w) / 4) ** 2)),
    ], axis=-1)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_official_outputs_from_pixel_values(device):
    want = golden(MICRO / "golden.safetensors")
    model = backbone.ImageEncoder(MICRO, device=device)
    out = model.forward(want["pixel_values"])
    for name in ["stem", "stage1", "stage2", "stage3", "stage4", "pooled", "logits"]:
        assert_close(f"{name} vs official CSWin", out[name], want[name], 2e-5)
    feats = model.features(want["pixel_values"])
    assert [f.shape for f in feats] == [(1, 32, 56, 56), (1, 64, 28, 28), (1, 128, 14, 14),
                                        (1, 256, 7, 7)]
    assert_close("stage4 as NCHW", feats[3].transpose(0, 2, 3, 1).reshape(1, 49, 256),
                 want["stage4"], 2e-5)


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_segmentation_features_from_the_pth(device):
    want = golden(SEG / "golden.safetensors")
    model = backbone.ImageEncoder(SEG, device=device)
    assert model.info["segmentation"]
    feats = model.features(want["pixel_values"])
    for i, f in enumerate(feats, 1):
        assert_close(f"features{i} vs official CSWin", f, want[f"features{i}"], 2e-5)
    with pytest.raises(backbone.BackboneError, match="features"):
        model.encode(photo(64, 64, 1))


def test_paths_bytes_and_arrays_give_the_same_embedding(tmp_path):
    model = backbone.ImageEncoder(MICRO, device="cpu")
    pictures = [photo(180, 240, 1), photo(300, 200, 2), photo(224, 224, 3)]
    files = []
    for i, p in enumerate(pictures):
        f = tmp_path / f"p{i}.png"
        f.write_bytes(png(p))
        files.append(f)
    by_path = model.encode(files)
    assert by_path.shape == (3, model.info["stage_dims"][-1])
    assert_close("bytes", model.encode([f.read_bytes() for f in files]), by_path, 0)
    assert_close("arrays", model.encode(pictures), by_path, 0)
    assert_close("one array", model.encode(pictures[0]), by_path[:1], 0)
    # A uint8 batch (N, H, W, C) is N images, for encode and for features.
    batch = np.stack([pictures[2], pictures[2]])
    assert_close("uint8 batch", model.encode(batch), np.concatenate([by_path[2:]] * 2), 0)
    feats = model.features(batch)
    assert feats[0].shape[0] == 2
    assert_close("features of a uint8 batch", feats[3][1], model.features(files[2])[3][0], 0)
    grey = pictures[0][:, :, :1]
    assert_close("grey array = grey PNG", model.encode(grey), model.encode(png(grey)), 0)
    rgba = np.concatenate([pictures[1], np.full((300, 200, 1), 255, np.uint8)], axis=-1)
    assert_close("RGBA array = RGBA PNG", model.encode(rgba), model.encode(png(rgba)), 0)
    # 20 images: two batches of the library's 16, in order.
    many = [photo(64 + i, 80, 10 + i) for i in range(20)]
    assert_close("20 images in batches", model.encode(many),
                 np.concatenate([model.encode([m]) for m in many]), 1e-6)


def test_classify_matches_the_cli(tmp_path):
    f = tmp_path / "pic.png"
    f.write_bytes(png(photo(200, 260, 7)))
    model = backbone.ImageEncoder(MICRO, device="cpu")
    top = model.classify([f], top_k=5)[0]
    assert len(top) == 5 and top[0][1] >= top[-1][1]
    printed = cli("classify", "--device", "cpu", "--model", str(MICRO), str(f)).splitlines()[1:]
    rows = [line.split() for line in printed if line.strip()]
    assert [int(r[1]) for r in rows] == [c for c, _, _ in top]
    for r, (_, p, _) in zip(rows, top):
        assert abs(float(r[0].rstrip("%")) - 100 * p) < 0.006


def test_bad_images_are_clear_errors(tmp_path):
    model = backbone.ImageEncoder(MICRO, device="cpu")
    with pytest.raises(backbone.BackboneError, match=r"images\[0\]"):
        model.encode([b"not an image"])
    truncated = png(photo(64, 64, 1))[:-40]
    with pytest.raises(backbone.BackboneError):
        model.encode([truncated])
    with pytest.raises(backbone.BackboneError, match="no-such.png"):
        model.encode([tmp_path / "no-such.png"])
    with pytest.raises(ValueError, match="uint8"):
        model.encode([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="uint8"):
        model.encode([np.zeros((8, 8, 2), np.uint8)])
    with pytest.raises(TypeError):
        model.encode([123])
    with pytest.raises(backbone.BackboneError, match="pixel_values"):
        model.forward(np.zeros((1, 3, 224), np.float32))
    with pytest.raises(backbone.BackboneError, match="cswin-xxl"):
        backbone.ImageEncoder(MICRO, variant="cswin-xxl")
