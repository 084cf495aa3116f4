#!/usr/bin/env python3
"""Converts an official CSWin checkpoint (.pth, microsoft/CSWin-Transformer release) into a
model folder backbone reads: config.json + model.safetensors, with the official key names.

usage:
    python3 scripts/convert_cswin.py cswin_tiny_224.pth OUT_DIR --variant cswin-t-224

Needs torch and safetensors (pip install torch safetensors). The training code saves the
weights under 'state_dict_ema' or 'state_dict' (maybe with a 'module.' prefix from
DataParallel); both are handled. The head count, split sizes and image size are not visible in
the weight shapes, so they come from --variant (the official factories; CSWin-L has 24 heads
in stage 4, as in the code); embed_dim, depths, mlp_ratio and num_classes are read from the
weights and checked against it. Optional: --labels FILE (one class name per line) is stored as
id2label, which `backbone classify` prints.
"""
import argparse
import json
import os
import re

VARIANTS = {
    "cswin-t-224": dict(embed_dim=64, depth=[1, 2, 21, 1], num_heads=[2, 4, 8, 16], split_size=[1, 2, 7, 7], img_size=224),
    "cswin-s-224": dict(embed_dim=64, depth=[2, 4, 32, 2], num_heads=[2, 4, 8, 16], split_size=[1, 2, 7, 7], img_size=224),
    "cswin-b-224": dict(embed_dim=96, depth=[2, 4, 32, 2], num_heads=[4, 8, 16, 32], split_size=[1, 2, 7, 7], img_size=224),
    "cswin-l-224": dict(embed_dim=144, depth=[2, 4, 32, 2], num_heads=[6, 12, 24, 24], split_size=[1, 2, 7, 7], img_size=224),
    "cswin-b-384": dict(embed_dim=96, depth=[2, 4, 32, 2], num_heads=[4, 8, 16, 32], split_size=[1, 2, 12, 12], img_size=384),
    "cswin-l-384": dict(embed_dim=144, depth=[2, 4, 32, 2], num_heads=[6, 12, 24, 24], split_size=[1, 2, 12, 12], img_size=384),
}


def load_state_dict(path):
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(checkpoint, dict) and key in checkpoint:
            checkpoint = checkpoint[key]
            break
    return {k.removeprefix("module."): v.float().contiguous() for k, v in checkpoint.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("out_dir")
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    parser.add_argument("--labels", help="class names, one per line")
    args = parser.parse_args()

    from safetensors.torch import save_file

    state = load_state_dict(args.checkpoint)
    config = dict(model_type="cswin", in_chans=3, qkv_bias=True, layer_norm_eps=1e-5, **VARIANTS[args.variant])
    embed_dim = state["stage1_conv_embed.0.weight"].shape[0]
    depth = [1 + max(int(m.group(1)) for k in state if (m := re.match(rf"stage{s}\.(\d+)\.", k))) for s in range(1, 5)]
    mlp_ratio = state["stage1.0.mlp.fc1.weight"].shape[0] / embed_dim
    num_classes = state["head.weight"].shape[0]
    if (embed_dim, depth) != (config["embed_dim"], config["depth"]):
        raise SystemExit(f"weights have embed_dim {embed_dim}, depth {depth}: not {args.variant}")
    config.update(mlp_ratio=mlp_ratio, num_classes=num_classes)
    if args.labels:
        names = open(args.labels).read().splitlines()
        config["id2label"] = {str(i): n for i, n in enumerate(names)}

    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file(state, os.path.join(args.out_dir, "model.safetensors"))
    print(f"wrote {args.out_dir}: {len(state)} tensors, {sum(v.numel() for v in state.values()):,} parameters")


if __name__ == "__main__":
    main()
