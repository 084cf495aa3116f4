"""backbone: transformer backbones on any GPU through wgpu (Vulkan, Metal, DX12), or the CPU.

Text encoders (BERT, RoBERTa, XLM-R, DistilBERT, ELECTRA, MPNet, ModernBERT, sentence-transformers
folders), cross-encoder rerankers and CSWin image backbones, opened from the folders you already
have and run by the same library as the ``backbone`` command line and server: same defaults, same
numbers.

    >>> import backbone
    >>> model = backbone.TextEncoder("all-MiniLM-L6-v2")
    >>> model.encode(["a sentence", "another"]).shape
    (2, 384)

Every call releases the GIL while the model runs, so a thread pool can keep a GPU busy.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._native import BackboneError

__all__ = ["TextEncoder", "ImageEncoder", "BackboneError", "__version__"]
__version__ = _native.__version__

ImageLike = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray]


def _array(pair: Tuple[bytearray, List[int]]) -> np.ndarray:
    """A (bytearray of float32, shape) pair from the extension as a NumPy array (no copy)."""
    data, shape = pair
    return np.frombuffer(data, dtype=np.float32).reshape(shape)


def _device(device: str) -> str:
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, not {type(device).__name__}")
    return device


class TextEncoder:
    """A text model folder, loaded once.

    ``path`` is a Hugging Face or sentence-transformers folder (``config.json``,
    ``model.safetensors``, ``tokenizer.json``; ``modules.json`` and its modules when present),
    including a Hugging Face hub cache snapshot.

    ``device``: ``"auto"`` (the GPU when a hardware adapter exists, else the fast CPU path),
    ``"gpu"`` (the best adapter, software ones included), ``"cpu"`` (the fast CPU path) or
    ``"reference"`` (the kernels' exact CPU twins). ``dtype``: ``"f32"`` or ``"f16"``.
    ``max_length``: truncate texts at this many tokens instead of the folder's own length.

    Raises :class:`BackboneError` naming the file, key or tensor when the folder is unusable.
    """

    def __init__(
        self,
        path: Union[str, "os.PathLike[str]"],
        device: str = "auto",
        dtype: str = "f32",
        max_length: Optional[int] = None,
    ) -> None:
        self._native = _native.TextEncoder(os.fspath(path), _device(device), dtype, max_length)
        self._info: Dict[str, Any] = json.loads(self._native.info_json())

    @property
    def info(self) -> Dict[str, Any]:
        """What the model is and how it runs: model type, device, dtype, max_length,
        embedding_dim, pooling, prompts, labels... (as ``/info`` of ``backbone serve``)."""
        return dict(self._info)

    def encode(
        self,
        texts: Union[str, Sequence[str]],
        prompt_name: Optional[str] = None,
        normalize: Optional[bool] = None,
        batch_size: Optional[int] = None,
        prompt: Optional[str] = None,
    ) -> np.ndarray:
        """Sentence embeddings, float32 ``[N, D]`` (``[D]`` for a single ``str``).

        Texts longer than ``info["max_length"]`` tokens are truncated. ``prompt_name`` picks
        one of the folder's prompts (else its default prompt applies); ``prompt`` gives the
        prompt text itself. ``normalize``: ``None`` gives the model's own output (normalised
        when the folder has a Normalize module), ``True`` L2-normalises, ``False`` gives the
        embedding before the folder's Normalize. ``batch_size``: texts per forward (default:
        as many as fit the library's batch token budget).
        """
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, not {type(t).__name__}")
        out = _array(self._native.encode(items, prompt_name, prompt, normalize, batch_size))
        return out[0] if single else out

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        raw: bool = False,
        batch_size: Optional[int] = None,
    ) -> np.ndarray:
        """A cross-encoder's scores of ``(query, document)`` pairs, float32 ``[N]``, as
        ``CrossEncoder.predict`` gives them (the sigmoid of a one-label head's logit; ``raw``
        gives the logit). A head with several labels gives ``[N, labels]`` logits.
        Pairs longer than ``info["max_length"]`` are truncated, longest first."""
        if isinstance(documents, str):
            raise TypeError("documents must be a sequence of str, not one str")
        docs = list(documents)
        out = _array(self._native.rerank(query, docs, bool(raw), batch_size))
        return out[:, 0] if out.shape[1] == 1 else out

    def __repr__(self) -> str:
        i = self._info
        return f"TextEncoder({i['model_id']!r}, {i['model_type']}, {i['device']}, {i['dtype']})"


def _image_items(images: Union[ImageLike, Iterable[ImageLike]]) -> List[tuple]:
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike)) or (
        isinstance(images, np.ndarray) and images.ndim == 3
    ):
        images = [images]
    items = []
    for i, img in enumerate(images):
        if isinstance(img, (str, os.PathLike)):
            items.append(("path", os.fspath(img)))
        elif isinstance(img, (bytes, bytearray, memoryview)):
            items.append(("bytes", bytes(img)))
        elif isinstance(img, np.ndarray):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3, 4):
                raise ValueError(
                    f"images[{i}]: a uint8 array of shape (H, W, 1|3|4) expected, "
                    f"got {img.dtype} {img.shape}"
                )
            h, w, c = img.shape
            items.append(("pixels", np.ascontiguousarray(img).tobytes(), h, w, c))
        else:
            raise TypeError(
                f"images[{i}]: a path, encoded bytes or a uint8 HWC array expected, "
                f"not {type(img).__name__}"
            )
    return items


class ImageEncoder:
    """A CSWin folder (a classification checkpoint or a segmentation backbone), loaded once.

    ``path`` holds ``config.json`` (or pass ``variant="cswin-t-224"`` etc.) and
    ``model.safetensors`` or the official ``.pth``. ``device`` and ``dtype`` as for
    :class:`TextEncoder`.

    Images are file paths, encoded bytes (JPEG, PNG, WebP, BMP) or ``uint8`` arrays of shape
    ``(H, W, 3)`` (RGB; 1 and 4 channels too), prepared as timm evaluates CSWin: resized,
    centre-cropped to ``info["img_size"]``, normalised with ImageNet's mean and std.
    """

    def __init__(
        self,
        path: Union[str, "os.PathLike[str]"],
        device: str = "auto",
        dtype: str = "f32",
        variant: Optional[str] = None,
    ) -> None:
        self._native = _native.ImageEncoder(os.fspath(path), _device(device), dtype, variant)
        self._info: Dict[str, Any] = json.loads(self._native.info_json())

    @property
    def info(self) -> Dict[str, Any]:
        """Model type, device, dtype, img_size, num_classes, segmentation, stage_dims."""
        return dict(self._info)

    def encode(self, images: Union[ImageLike, Sequence[ImageLike]]) -> np.ndarray:
        """Image embeddings, float32 ``[N, D]``: the final norm's mean over stage-4 tokens
        (what the classifier's head reads). A segmentation backbone has none: use
        :meth:`features`."""
        return _array(self._native.encode(_image_items(images)))

    def classify(
        self, images: Union[ImageLike, Sequence[ImageLike]], top_k: int = 5
    ) -> List[List[Tuple[int, float, str]]]:
        """The ``top_k`` most probable classes of each image: ``(class, probability, label)``,
        best first (as ``backbone classify`` prints them)."""
        return self._native.classify(_image_items(images), int(top_k))

    def forward(self, pixel_values: np.ndarray) -> Dict[str, np.ndarray]:
        """Already prepared ``pixel_values`` (float32 ``[B, 3, H, W]``, any size the model
        takes) through the model: ``stem``, ``stage1``..``stage4`` (``[B, H_s*W_s, C_s]``),
        ``pooled`` and ``logits`` for a classifier, ``features1``..``features4`` (NCHW) for a
        segmentation backbone."""
        pixels = np.ascontiguousarray(pixel_values, dtype=np.float32)
        return self._outputs(self._native.forward(pixels.tobytes(), list(pixels.shape)))

    def features(
        self, images: Union[ImageLike, Sequence[ImageLike], np.ndarray]
    ) -> List[np.ndarray]:
        """Stage features, four float32 NCHW arrays ``[B, C_s, H_s, W_s]``, for detection and
        segmentation heads: a segmentation backbone's ``features1..4`` (after its
        ``norm1..norm4``), or a classifier's stage outputs. Takes images, or a float32
        ``pixel_values`` array ``[B, 3, H, W]`` at any size the model takes."""
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype != np.uint8:
            out = self.forward(images)  # pixel_values; a uint8 batch is a batch of HWC images
        else:
            out = self._outputs(self._native.forward_images(_image_items(images)))
        if "features1" in out:
            return [out[f"features{i}"] for i in range(1, 5)]
        feats = []
        for i, (h, w) in enumerate(out["stage_sizes"]):
            s = out[f"stage{i + 1}"]
            feats.append(np.ascontiguousarray(s.reshape(s.shape[0], h, w, -1).transpose(0, 3, 1, 2)))
        return feats

    @staticmethod
    def _outputs(raw: Dict[str, Any]) -> Dict[str, Any]:
        return {k: (v if k == "stage_sizes" else _array(v)) for k, v in raw.items()}

    def __repr__(self) -> str:
        i = self._info
        return f"ImageEncoder({i['model_id']!r}, {i['model_type']}, {i['device']}, {i['dtype']})"
