#!/usr/bin/env python3
"""Packs a CSWin fixture's io.safetensors into the golden file the tests read.

Keeps the input, the outputs the engine returns (stem, stage1..4, pooled, logits) and each
stage's first-block attention output; drops the merge diagnostics. With --first-image only
batch element 0 is kept (the tests then run batch 1), which halves the size. Standard library
only.

usage: scripts/pack_cswin_golden.py SRC/io.safetensors DST.safetensors [--first-image]
"""
import sys

from pack_minilm_golden import read, write

KEEP = ["pixel_values", "stem", "stage1", "stage2", "stage3", "stage4", "pooled", "logits"]
KEEP += [f"stage{s}_block0_attn" for s in range(1, 5)]


def main(src, dst, first_image):
    tensors = read(src)
    out = {}
    for name in KEEP:
        dtype, shape, data = tensors[name]
        if first_image:
            data = data[: len(data) // shape[0]]
            shape = [1] + shape[1:]
        out[name] = (dtype, shape, data)
    write(dst, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--first-image" in sys.argv[3:])
