#!/usr/bin/env python3
"""Makes tests/fixtures/cswin-seg-micro: a micro CSWin *segmentation* checkpoint saved as mmseg
saves it, with the official segmentation backbone's outputs on an input the stripes do not
divide.

The model is microsoft/CSWin-Transformer at f111ae2, `segmentation/backbone/cswin_transformer.py`
(class CSWin). Its mmseg/mmcv imports are stubbed (the model code needs only torch, timm and
einops). Weights are random but seeded, like the other fixtures: LayerNorm weight U(0.5, 1.5),
bias N(0, 0.2²); other biases N(0, 0.1²); other weights N(0, 0.2²).

Files:
  config.json        the constructor's arguments (model_type cswin; no classes: no head)
  cswin_seg.pth      {'state_dict': {'backbone.<key>': ..., 'decode_head.<key>': ...,
                     'auxiliary_head.<key>': ...}, 'meta': {...}} as mmseg's checkpoint hook writes
                     it (the heads are random stand-ins, ignored by the engine)
  golden.safetensors pixel_values [2, 3, 116, 140] and features1..features4 [B, C_s, H_s, W_s]:
                     each stage's output after norm1..norm4, as the backbone returns them

usage: python3 scripts/make_cswin_seg_fixture.py CSWIN_REPO_AT_f111ae2 tests/fixtures/cswin-seg-micro
"""
import json
import os
import subprocess
import sys
import types

import torch
from safetensors.torch import save_file

CONFIG = dict(img_size=128, in_chans=3, embed_dim=16, depth=[1, 1, 2, 1], split_size=[2, 4, 8, 4],
              num_heads=[2, 4, 8, 16], mlp_ratio=2.0, qkv_bias=True)


def official_module(repo):
    source = subprocess.run(["git", "-C", repo, "show", "f111ae2:segmentation/backbone/cswin_transformer.py"],
                            check=True, capture_output=True, text=True).stdout
    source = source.replace("from mmcv_custom import load_checkpoint", "load_checkpoint = None")
    source = source.replace("from mmseg.utils import get_root_logger", "get_root_logger = None")
    source = source.replace("from ..builder import BACKBONES",
                            "class BACKBONES:\n    @staticmethod\n    def register_module():\n        return lambda c: c")
    module = types.ModuleType("cswin_seg_official")
    exec(compile(source, "segmentation/backbone/cswin_transformer.py", "exec"), module.__dict__)
    return module


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = ".norm" in "." + name or name.startswith("norm") or "conv_embed.2" in name or ".norm." in name
            if is_norm and name.endswith("weight") and p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif is_norm and name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def main():
    repo, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    m = official_module(repo)
    model = m.CSWin(img_size=CONFIG["img_size"], in_chans=3, embed_dim=CONFIG["embed_dim"], depth=CONFIG["depth"],
                    split_size=CONFIG["split_size"], num_heads=CONFIG["num_heads"], mlp_ratio=CONFIG["mlp_ratio"],
                    qkv_bias=True, drop_path_rate=0.0)
    randomize(model, 31)
    g = torch.Generator().manual_seed(32)
    pixels = torch.randn(2, 3, 116, 140, generator=g) * 0.5
    with torch.no_grad():
        feats = model(pixels)
    sd = {"backbone." + k: v for k, v in model.state_dict().items()}
    sd["decode_head.conv_seg.weight"] = torch.randn(5, 32, 1, 1, generator=g)
    sd["decode_head.conv_seg.bias"] = torch.randn(5, generator=g)
    sd["decode_head.bottleneck.bn.num_batches_tracked"] = torch.tensor(7)
    sd["auxiliary_head.conv_seg.weight"] = torch.randn(5, 16, 1, 1, generator=g)
    meta = {"mmseg_version": "0.11.0", "iter": 160000, "CLASSES": ("road", "sky", "tree", "car", "person"),
            "PALETTE": [[128, 64, 128], [70, 130, 180], [107, 142, 35], [0, 0, 142], [220, 20, 60]]}
    torch.save({"state_dict": sd, "meta": meta}, os.path.join(out, "cswin_seg.pth"))
    config = dict(model_type="cswin", **CONFIG, layer_norm_eps=1e-5,
                  note="segmentation backbone (segmentation/backbone/cswin_transformer.py), no head")
    json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)
    golden = {"pixel_values": pixels}
    for i, f in enumerate(feats):
        golden[f"features{i + 1}"] = f.contiguous()
    save_file(golden, os.path.join(out, "golden.safetensors"))
    print({k: tuple(v.shape) for k, v in golden.items()})


if __name__ == "__main__":
    main()
