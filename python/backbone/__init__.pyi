import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

ImageLike = Union[str, os.PathLike[str], bytes, bytearray, memoryview, npt.NDArray[np.uint8]]

class BackboneError(Exception):
    """An error from the library: bad model folder, input or device. The message names the
    file, tensor, key or argument."""

class TextEncoder:
    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        device: str = "auto",
        dtype: str = "f32",
        max_length: Optional[int] = None,
    ) -> None: ...
    @property
    def info(self) -> Dict[str, Any]: ...
    @overload
    def encode(
        self,
        texts: str,
        prompt_name: Optional[str] = None,
        normalize: Optional[bool] = None,
        batch_size: Optional[int] = None,
        prompt: Optional[str] = None,
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def encode(
        self,
        texts: Sequence[str],
        prompt_name: Optional[str] = None,
        normalize: Optional[bool] = None,
        batch_size: Optional[int] = None,
        prompt: Optional[str] = None,
    ) -> npt.NDArray[np.float32]: ...
    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        raw: bool = False,
        batch_size: Optional[int] = None,
    ) -> npt.NDArray[np.float32]: ...

class ImageEncoder:
    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        device: str = "auto",
        dtype: str = "f32",
        variant: Optional[str] = None,
    ) -> None: ...
    @property
    def info(self) -> Dict[str, Any]: ...
    def encode(self, images: Union[ImageLike, Sequence[ImageLike]]) -> npt.NDArray[np.float32]: ...
    def classify(
        self, images: Union[ImageLike, Sequence[ImageLike]], top_k: int = 5
    ) -> List[List[Tuple[int, float, str]]]: ...
    def forward(self, pixel_values: npt.NDArray[np.float32]) -> Dict[str, Any]: ...
    def features(
        self, images: Union[ImageLike, Sequence[ImageLike], npt.NDArray[np.float32]]
    ) -> List[npt.NDArray[np.float32]]: ...
