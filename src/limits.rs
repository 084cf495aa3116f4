//! Every bound the library applies to what a user supplies, in one place. Each is checked
//! before anything sized by it is allocated, and each error names the key or argument.
//!
//! The bounds are far above every released checkpoint (the largest config value of any
//! official BERT-family or CSWin model is noted beside each), and low enough that no product
//! of them overflows or asks for more memory than a machine has.

use crate::error::{Error, Result};

/// A safetensors header's JSON (real models: tens of KiB).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;
/// Tensors listed in one safetensors header (real models: a few thousand).
pub const MAX_TENSORS: usize = 65_536;
/// A safetensors file read from a stream (a pipe, `/dev/stdin`), whose size cannot be checked
/// up front: its header may declare at most this many bytes in all.
pub const MAX_STREAM_BYTES: u64 = 4 << 30;
/// `config.json` and other small JSON files.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// `tokenizer.json` (XLM-R's is 17 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;
/// An encoded image file.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;
/// Elements of any one tensor a config implies (2^31: also fits a wasm32 `usize`).
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 31;

/// An image's side, decoded (JPEG's own maximum is 65,535).
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Bytes the image decoder may allocate.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;
/// The resize before the centre crop may make at most this many times the pixels of a
/// square of the resize side (an aspect ratio up to 16:1).
pub const RESIZE_AREA_FACTOR: u64 = 16;

/// One CSWin input image may have at most this many times the pixels of the checkpoint's
/// `img_size` square (64 x 224² = 3.2 MP: a 2048x1536 segmentation input runs)...
pub const CSWIN_IMAGE_AREA_FACTOR: u64 = 64;
/// ...and a side at most this many times `img_size`...
pub const CSWIN_SIDE_FACTOR: u64 = 16;
/// ...and a whole batch at most this many `img_size` squares.
pub const CSWIN_BATCH_AREA_FACTOR: u64 = 256;

/// Tokens in one text batch (batch x seq).
pub const MAX_BATCH_TOKENS: usize = 1 << 17;

/// Checks `value <= max` for a config key.
pub fn check_key(key: &str, value: u64, max: u64) -> Result<()> {
    if value > max {
        return Err(Error::Config(format!(
            "{key} = {value} is over the supported maximum of {max}"
        )));
    }
    Ok(())
}

/// Checks that a tensor sized by config keys (named in `keys`) stays within
/// [`MAX_TENSOR_ELEMENTS`].
pub fn check_elements(keys: &str, dims: &[usize]) -> Result<()> {
    let n = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    match n {
        Some(n) if n <= MAX_TENSOR_ELEMENTS => Ok(()),
        _ => Err(Error::Config(format!(
            "{keys} = {dims:?} make a tensor of more than {MAX_TENSOR_ELEMENTS} elements"
        ))),
    }
}
