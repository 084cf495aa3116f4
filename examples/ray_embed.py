"""Embed a text corpus with Ray Data across GPU (or CPU) actors, one model load per actor.

    python examples/ray_embed.py --model all-MiniLM-L6-v2 \
        --input corpus.parquet --output embeddings/ --concurrency 4

The corpus is Parquet or JSON lines (``--input``: a file or folder; ``.jsonl``/``.json`` are
read as JSON lines) with a text column (``--text-column``, default ``text``); every other
column (an id, say) is carried through. The output is Parquet with an ``embedding`` column
(``fixed_size_list<float>[D]``) beside them.

On a cluster, point ``--address`` at it (``auto`` inside a job, or ``ray://head:10001``), give
``--concurrency`` one actor per GPU and ``--gpus-per-actor 1`` (the default when the cluster has
GPUs): Ray places each actor on a GPU, and ``backbone`` runs it through Vulkan, Metal or DX12,
so AMD and Intel GPUs serve as well as NVIDIA's. Without GPUs the actors use the fast CPU path.
Every node needs the package (``pip install ./python``) and the model folder at the same path
(a shared file system, or the same download on each node).
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

import numpy as np
import pyarrow as pa
import ray


class Embedder:
    """A Ray Data actor: opens the model once, then embeds each batch it is handed."""

    def __init__(
        self,
        model: str,
        device: str,
        dtype: str,
        text_column: str,
        threads: Optional[int],
        max_length: Optional[int] = None,
    ) -> None:
        if threads:
            # The fast CPU path's threads: as many as Ray gave this actor.
            os.environ.setdefault("BACKBONE_CPU_THREADS", str(threads))
        import backbone

        self.text_column = text_column
        self.model = backbone.TextEncoder(model, device=device, dtype=dtype, max_length=max_length)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self.text_column).to_pylist()
        vectors = np.ascontiguousarray(self.model.encode(texts), dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
        return batch.append_column("embedding", column)


def read(path: str) -> "ray.data.Dataset":
    if path.endswith((".jsonl", ".json")) or (
        os.path.isdir(path) and any(f.endswith((".jsonl", ".json")) for f in os.listdir(path))
    ):
        return ray.data.read_json(path, lines=True)
    return ray.data.read_parquet(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="a Hugging Face / sentence-transformers folder")
    p.add_argument("--input", required=True, help="Parquet or JSON lines (file or folder)")
    p.add_argument("--output", required=True, help="folder for the Parquet output")
    p.add_argument("--text-column", default="text")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.add_argument("--concurrency", type=int, default=1, help="actors (one per GPU)")
    p.add_argument("--gpus-per-actor", type=float, default=None,
                   help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-actor", type=float, default=1)
    p.add_argument("--device", default=None,
                   help="gpu, cpu or auto (default: gpu with GPUs per actor, else cpu)")
    p.add_argument("--dtype", default="f32")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256, help="texts per actor call")
    args = p.parse_args()

    ray.init(address=args.address)
    gpus = args.gpus_per_actor
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    device = args.device or ("gpu" if gpus > 0 else "cpu")
    threads = None if device == "gpu" else max(1, int(args.cpus_per_actor))

    ds = read(args.input).map_batches(
        Embedder,
        fn_constructor_kwargs=dict(
            model=os.path.abspath(args.model),
            device=device,
            dtype=args.dtype,
            text_column=args.text_column,
            threads=threads,
            max_length=args.max_length,
        ),
        batch_size=args.batch_size,
        batch_format="pyarrow",
        concurrency=args.concurrency,
        num_gpus=gpus,
        num_cpus=args.cpus_per_actor,
    )
    ds.write_parquet(args.output)
    rows = ray.data.read_parquet(args.output).count()  # from the files' metadata
    print(f"embedded {rows} rows into {args.output} ({args.concurrency} actors, {device})")


if __name__ == "__main__":
    main()
