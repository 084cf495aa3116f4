#!/usr/bin/env python3
"""Makes the PyTorch-checkpoint fixtures in tests/fixtures/pth/ with torch.save, as the
official CSWin training code (and mmseg) save checkpoints:

  cswin-micro-s3full/   config.json + cswin_micro.pth: the cswin-micro-s3full fixture's weights
                        as {'state_dict_ema': {'module.<key>': tensor}, 'epoch': 3}; its outputs
                        are the fixture's golden ones
  views.pth             {'state_dict': {...}, 'meta': {...}} with a transposed view, a slice with
                        an offset into a shared storage, f16, bf16 and f64 storages, an int64
                        buffer and an nn.Parameter; views_expected.safetensors holds each
                        floating tensor made contiguous and float32
  evil.pth              a zip whose data.pkl calls os.system (must be refused, never run)
  truncated.pth         views.pth cut in half
  short_storage.pth     views.pth with its first storage shorter than its tensor

usage: python3 scripts/make_pth_fixtures.py tests/fixtures
"""
import collections
import os
import pickle
import shutil
import sys
import zipfile

import torch
from safetensors.torch import load_file, save_file


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/backbone-pth-pwned",))


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    out = os.path.join(root, "pth")
    os.makedirs(os.path.join(out, "cswin-micro-s3full"), exist_ok=True)
    src = os.path.join(root, "cswin-micro-s3full")
    shutil.copy(os.path.join(src, "config.json"), os.path.join(out, "cswin-micro-s3full", "config.json"))
    weights = load_file(os.path.join(src, "model.safetensors"))
    sd = collections.OrderedDict(("module." + k, v) for k, v in sorted(weights.items()))
    cswin = os.path.join(out, "cswin-micro-s3full", "cswin_micro.pth")
    torch.save({"state_dict_ema": sd, "epoch": 3}, cswin)


    base = torch.arange(60, dtype=torch.float32).reshape(6, 10) / 7
    views = collections.OrderedDict(
        [
            ("a.transposed", base.t()),
            ("b.slice", base[2:5, 3:8]),
            ("c.half", (base * 3).half()),
            ("d.bf16", base.bfloat16()[1:3]),
            ("e.double", base.double()[::2]),
            ("f.long", torch.arange(5)),
            ("g.param", torch.nn.Parameter(base[0] + 1)),
        ]
    )
    meta = {"epoch": 1, "CLASSES": ("road", "sky"), "PALETTE": [[1, 2, 3], [4, 5, 6]], "lr": 0.5}
    torch.save({"state_dict": views, "meta": meta}, os.path.join(out, "views.pth"))
    expected = {k: v.detach().contiguous().float() for k, v in views.items() if v.is_floating_point()}
    save_file(expected, os.path.join(out, "views_expected.safetensors"))

    with zipfile.ZipFile(os.path.join(out, "evil.pth"), "w", zipfile.ZIP_STORED) as z:
        z.writestr("evil/data.pkl", pickle.dumps({"state_dict": Evil()}, protocol=2))
        z.writestr("evil/version", "3\n")

    data = open(os.path.join(out, "views.pth"), "rb").read()
    open(os.path.join(out, "truncated.pth"), "wb").write(data[: len(data) // 2])

    with zipfile.ZipFile(os.path.join(out, "views.pth")) as zin, zipfile.ZipFile(os.path.join(out, "short_storage.pth"), "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            body = zin.read(info.filename)
            if info.filename.endswith("/data/0"):
                body = body[: len(body) // 2]
            zout.writestr(info.filename, body)
    print("pth fixtures written to", out)


if __name__ == "__main__":
    main()
