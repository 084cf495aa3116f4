//! `backbone._native`: the Rust side of the Python package. It opens models through the
//! library's [`TextEncoder`] and [`ImageEncoder`] (the same front door as the CLI and the
//! server, so the same defaults and limits) and hands arrays back as `(bytearray, shape)`
//! pairs that `backbone/__init__.py` views as NumPy arrays without a copy. Every forward runs
//! with the GIL released, so Python threads (or an async loop's executor) keep feeding it.

use std::path::PathBuf;
use std::sync::Arc;

use backbone::DType;
use backbone::encoder::{Device, EncoderOptions, ImageEncoder as Image, TextEncoder as Text, Want};
use backbone::host::HostTensor;
use backbone::limits;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyTuple};

create_exception!(
    _native,
    BackboneError,
    PyException,
    "An error from the backbone library (bad model folder, input or device); the message \
     names the file, tensor, key or argument."
);

/// The library's error as a Python exception carrying its message.
fn py_err(e: backbone::Error) -> PyErr {
    BackboneError::new_err(e.to_string())
}

fn arg_err(arg: &str, reason: String) -> PyErr {
    py_err(backbone::Error::Input {
        arg: arg.into(),
        reason,
    })
}

/// An array for the Python layer: its f32 values as native-endian bytes, and its shape.
type Array<'py> = (Bound<'py, PyByteArray>, Vec<usize>);

fn array<'py>(py: Python<'py>, t: &HostTensor) -> Array<'py> {
    let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_ne_bytes()).collect();
    (PyByteArray::new(py, &bytes), t.shape.clone())
}

fn options(device: &str, dtype: &str, max_length: Option<usize>) -> PyResult<EncoderOptions> {
    let device = match device {
        "auto" => Device::Auto,
        "gpu" => Device::Gpu,
        "cpu" => Device::Cpu,
        "reference" => Device::Reference,
        other => {
            return Err(arg_err(
                "device",
                format!("{other:?}: expected \"auto\", \"gpu\", \"cpu\" or \"reference\""),
            ));
        }
    };
    let dtype = match dtype {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" => DType::F16,
        other => {
            return Err(arg_err(
                "dtype",
                format!("{other:?}: expected \"f32\" or \"f16\""),
            ));
        }
    };
    Ok(EncoderOptions::default()
        .device(device)
        .dtype(dtype)
        .max_length(max_length))
}

fn batch_size(asked: Option<usize>, default: usize) -> PyResult<usize> {
    match asked {
        Some(0) => Err(arg_err("batch_size", "must be at least 1".into())),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// A text model folder (Hugging Face or sentence-transformers), opened once.
#[pyclass(frozen, module = "backbone._native")]
struct TextEncoder {
    inner: Arc<Text>,
}

/// The embedding a caller asked for, as the server's `normalize` gives it: the model's own
/// (`None`), L2-normalised (`Some(true)`), or before the head's Normalize (`Some(false)`).
fn choose(out: backbone::models::text::TextOutput, normalize: Option<bool>) -> HostTensor {
    match (normalize, out.unnormalized_embedding) {
        (None, _) | (Some(true), Some(_)) | (Some(false), None) => out.sentence_embedding,
        (Some(false), Some(raw)) => raw,
        (Some(true), None) => {
            let mut t = out.sentence_embedding;
            let width = t.shape.get(1).copied().unwrap_or(1).max(1);
            let rows = t.data.clone();
            for (row, out) in rows.chunks(width).zip(t.data.chunks_mut(width)) {
                backbone::host::l2_normalize_row(row, out);
            }
            t
        }
    }
}

/// Stacks [n_i, D] blocks into [sum n_i, D] (an empty list gives [0, D]).
fn stack_rows(blocks: Vec<HostTensor>, width: usize) -> PyResult<HostTensor> {
    let rows: usize = blocks.iter().map(|b| b.shape[0]).sum();
    let mut data = Vec::with_capacity(rows * width);
    for b in blocks {
        data.extend_from_slice(&b.data);
    }
    HostTensor::new(&[rows, width], data).map_err(py_err)
}

#[pymethods]
impl TextEncoder {
    #[new]
    #[pyo3(signature = (path, device = "auto", dtype = "f32", max_length = None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        dtype: &str,
        max_length: Option<usize>,
    ) -> PyResult<Self> {
        let options = options(device, dtype, max_length)?;
        let inner = py.detach(|| Text::open(&path, &options)).map_err(py_err)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The model's description (what `backbone embed --info` and TEI's `/info` show), JSON.
    fn info_json(&self) -> PyResult<String> {
        serde_json::to_string(self.inner.info()).map_err(|e| arg_err("info", e.to_string()))
    }

    #[pyo3(signature = (texts, prompt_name = None, prompt = None, normalize = None, batch_size = None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        prompt_name: Option<String>,
        prompt: Option<String>,
        normalize: Option<bool>,
        batch_size: Option<usize>,
    ) -> PyResult<Array<'py>> {
        let batch = self::batch_size(batch_size, self.inner.texts_per_batch())?;
        let model = self.inner.clone();
        let width = model.info().embedding_dim;
        let out = py.detach(move || -> backbone::Result<Vec<HostTensor>> {
            let mut blocks = Vec::new();
            for chunk in texts.chunks(batch) {
                let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
                let input =
                    model.tokenize(&chunk, prompt.as_deref(), prompt_name.as_deref(), true)?;
                let out = model.forward_blocking(&input, Want::default())?;
                blocks.push(choose(out, normalize));
            }
            Ok(blocks)
        });
        let t = stack_rows(out.map_err(py_err)?, width)?;
        Ok(array(py, &t))
    }

    /// A cross-encoder's logits [N, labels]; with one label and not `raw`, the scores
    /// `backbone rerank` prints (the library's `cross_encoder_score`), [N, 1].
    #[pyo3(signature = (query, documents, raw, batch_size = None))]
    fn rerank<'py>(
        &self,
        py: Python<'py>,
        query: String,
        documents: Vec<String>,
        raw: bool,
        batch_size: Option<usize>,
    ) -> PyResult<Array<'py>> {
        let batch = self::batch_size(batch_size, self.inner.texts_per_batch())?;
        let labels = self.inner.info().num_labels.unwrap_or(1);
        let model = self.inner.clone();
        let out = py.detach(move || -> backbone::Result<Vec<HostTensor>> {
            let mut blocks = Vec::new();
            for chunk in documents.chunks(batch) {
                let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
                blocks.push(model.encode_pairs_blocking(&query, &chunk)?);
            }
            Ok(blocks)
        });
        let mut t = stack_rows(out.map_err(py_err)?, labels)?;
        if labels == 1 && !raw {
            t.data
                .iter_mut()
                .for_each(|v| *v = backbone::models::text::cross_encoder_score(*v));
        }
        Ok(array(py, &t))
    }
}

/// A CSWin folder (classification checkpoint or segmentation backbone), opened once.
#[pyclass(frozen, module = "backbone._native")]
struct ImageEncoder {
    inner: Arc<Image>,
}

/// One image as the Python layer hands it over, copied out of Python's objects.
enum ImageItem {
    Path(PathBuf),
    Bytes(Vec<u8>),
    Pixels {
        height: usize,
        width: usize,
        channels: usize,
        data: Vec<u8>,
    },
}

impl ImageItem {
    /// `("path", str)`, `("bytes", bytes)` or `("pixels", bytes, height, width, channels)`.
    fn from_py(item: &Bound<'_, PyAny>, index: usize) -> PyResult<Self> {
        let what = || format!("images[{index}]");
        let tuple = item
            .cast::<PyTuple>()
            .map_err(|_| arg_err(&what(), "expected a (kind, payload...) tuple".into()))?;
        let kind: String = tuple.get_item(0)?.extract()?;
        match kind.as_str() {
            "path" => Ok(Self::Path(tuple.get_item(1)?.extract()?)),
            "bytes" => {
                let b = tuple.get_item(1)?;
                let b = b
                    .cast::<PyBytes>()
                    .map_err(|_| arg_err(&what(), "expected bytes".into()))?;
                Ok(Self::Bytes(b.as_bytes().to_vec()))
            }
            "pixels" => {
                let b = tuple.get_item(1)?;
                let b = b
                    .cast::<PyBytes>()
                    .map_err(|_| arg_err(&what(), "expected bytes".into()))?;
                Ok(Self::Pixels {
                    data: b.as_bytes().to_vec(),
                    height: tuple.get_item(2)?.extract()?,
                    width: tuple.get_item(3)?.extract()?,
                    channels: tuple.get_item(4)?.extract()?,
                })
            }
            other => Err(arg_err(&what(), format!("unknown kind {other:?}"))),
        }
    }

    /// The image as the model takes it, [1, 3, S, S].
    fn pixel_values(&self, model: &Image, index: usize) -> backbone::Result<HostTensor> {
        match self {
            Self::Path(path) => {
                let bytes = backbone::io::read_regular(path, limits::MAX_IMAGE_FILE_BYTES)?;
                model.preprocess(&bytes, &path.display().to_string())
            }
            Self::Bytes(bytes) => model.preprocess(bytes, &format!("images[{index}]")),
            Self::Pixels {
                height,
                width,
                channels,
                data,
            } => model.preprocess_pixels(
                *width,
                *height,
                *channels,
                data,
                &format!("images[{index}]"),
            ),
        }
    }
}

/// Images per forward (as `backbone classify` streams them).
const IMAGES_PER_BATCH: usize = 16;

/// Runs `f` on the model's output for each batch of images, preprocessed a batch at a time.
fn each_batch<T>(
    model: &Image,
    items: &[ImageItem],
    mut f: impl FnMut(backbone::models::cswin::CswinOutput) -> backbone::Result<T>,
) -> backbone::Result<Vec<T>> {
    let mut out = Vec::new();
    for (b, chunk) in items.chunks(IMAGES_PER_BATCH).enumerate() {
        let singles = chunk
            .iter()
            .enumerate()
            .map(|(i, item)| item.pixel_values(model, b * IMAGES_PER_BATCH + i))
            .collect::<backbone::Result<Vec<_>>>()?;
        let pixels = backbone::models::image::stack(&singles)?;
        out.push(f(model.forward_blocking(&pixels, false)?)?);
    }
    Ok(out)
}

fn items(images: &Bound<'_, PyAny>) -> PyResult<Vec<ImageItem>> {
    images
        .try_iter()?
        .enumerate()
        .map(|(i, item)| ImageItem::from_py(&item?, i))
        .collect()
}

/// `pixel_values` bytes (f32, native-endian) and their shape as a tensor.
fn pixel_tensor(data: &[u8], shape: Vec<usize>) -> PyResult<HostTensor> {
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if shape.len() != 4 || count.is_none_or(|n| n.checked_mul(4) != Some(data.len())) {
        return Err(arg_err(
            "pixel_values",
            format!(
                "{} bytes for shape {shape:?}: a float32 [B, 3, H, W] array expected",
                data.len()
            ),
        ));
    }
    let values = data
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    HostTensor::new(&shape, values).map_err(py_err)
}

#[pymethods]
impl ImageEncoder {
    #[new]
    #[pyo3(signature = (path, device = "auto", dtype = "f32", variant = None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        dtype: &str,
        variant: Option<String>,
    ) -> PyResult<Self> {
        let mut options = options(device, dtype, None)?;
        options.variant = variant;
        let inner = py.detach(|| Image::open(&path, &options)).map_err(py_err)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    fn info_json(&self) -> PyResult<String> {
        serde_json::to_string(self.inner.info()).map_err(|e| arg_err("info", e.to_string()))
    }

    /// Pooled features [N, D] of a classification checkpoint (the image embedding).
    fn encode<'py>(&self, py: Python<'py>, images: &Bound<'py, PyAny>) -> PyResult<Array<'py>> {
        let items = items(images)?;
        let model = self.inner.clone();
        let blocks = py
            .detach(move || {
                each_batch(&model, &items, |out| {
                    out.pooled.ok_or_else(|| backbone::Error::Input {
                        arg: "model".into(),
                        reason: format!(
                            "{}: a segmentation backbone has no pooled embedding; use features()",
                            model.info().model_id
                        ),
                    })
                })
            })
            .map_err(py_err)?;
        let width = blocks.first().map_or(0, |b| b.shape[1]);
        Ok(array(py, &stack_rows(blocks, width)?))
    }

    /// The `top_k` most probable classes of each image: (class, probability, label).
    fn classify(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        top_k: usize,
    ) -> PyResult<Vec<Vec<(usize, f32, String)>>> {
        let items = items(images)?;
        let model = self.inner.clone();
        let batches = py
            .detach(move || {
                each_batch(&model, &items, |out| {
                    let logits = out.logits()?;
                    let classes = logits.shape[1];
                    let labels = model.labels();
                    Ok(logits
                        .data
                        .chunks(classes)
                        .map(|row| {
                            backbone::models::cswin::top_k(row, top_k)
                                .into_iter()
                                .map(|(c, p)| (c, p, labels.get(c).cloned().unwrap_or_default()))
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>())
                })
            })
            .map_err(py_err)?;
        Ok(batches.into_iter().flatten().collect())
    }

    /// Images (prepared as for `encode`) through the model: every output by name.
    fn forward_images<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let items = items(images)?;
        let model = self.inner.clone();
        let singles = py
            .detach(move || {
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| item.pixel_values(&model, i))
                    .collect::<backbone::Result<Vec<_>>>()
                    .and_then(|s| backbone::models::image::stack(&s))
            })
            .map_err(py_err)?;
        self.run(py, singles)
    }

    /// `pixel_values` (float32 [B, 3, H, W] bytes) through the model: every output by name.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyBytes>,
        shape: Vec<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let pixels = pixel_tensor(data.as_bytes(), shape)?;
        self.run(py, pixels)
    }
}

impl ImageEncoder {
    fn run<'py>(&self, py: Python<'py>, pixels: HostTensor) -> PyResult<Bound<'py, PyDict>> {
        let model = self.inner.clone();
        let out = py
            .detach(move || model.forward_blocking(&pixels, false))
            .map_err(py_err)?;
        let dict = PyDict::new(py);
        dict.set_item("stem", array(py, &out.stem))?;
        for (i, s) in out.stages.iter().enumerate() {
            dict.set_item(format!("stage{}", i + 1), array(py, s))?;
        }
        dict.set_item("stage_sizes", out.geometry.stages.to_vec())?;
        for (name, t) in [("pooled", &out.pooled), ("logits", &out.logits)] {
            if let Some(t) = t {
                dict.set_item(name, array(py, t))?;
            }
        }
        for (i, f) in out.features.iter().enumerate() {
            dict.set_item(format!("features{}", i + 1), array(py, f))?;
        }
        Ok(dict)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TextEncoder>()?;
    m.add_class::<ImageEncoder>()?;
    m.add("BackboneError", m.py().get_type::<BackboneError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("__commit__", backbone::COMMIT)?;
    Ok(())
}
