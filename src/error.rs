//! The library's error type. Every failure a user can cause (bad shapes, sizes over an adapter
//! limit, a missing adapter, wgpu validation errors) comes back as an [`Error`] naming the
//! operation and the argument involved.

use std::fmt;

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong at the library boundary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter matched (or none exists at all).
    #[error(
        "no GPU adapter found{detail}. Install a GPU driver, or Mesa's software Vulkan driver \
         (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`); \
         BACKBONE_BACKEND and BACKBONE_ADAPTER choose among the adapters that exist"
    )]
    NoAdapter { detail: String },

    /// An environment variable or option had a value we do not understand.
    #[error("invalid value {value:?} for {name}: {expected}")]
    InvalidOption {
        name: &'static str,
        value: String,
        expected: &'static str,
    },

    /// The adapter refused the device we asked for.
    #[error("could not open the GPU device: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),

    /// A tensor argument has the wrong shape for the operation.
    #[error("{op}: argument `{arg}` has shape {found:?}, expected {expected}")]
    Shape {
        op: &'static str,
        arg: &'static str,
        expected: String,
        found: Vec<usize>,
    },

    /// A tensor argument has the wrong element type for the operation.
    #[error("{op}: argument `{arg}` has dtype {found}, expected {expected}")]
    DType {
        op: &'static str,
        arg: &'static str,
        expected: DTypeName,
        found: DTypeName,
    },

    /// A host slice does not hold as many elements as the shape says.
    #[error("{what}: {found} values given for shape {shape:?} ({expected} elements)")]
    DataLength {
        what: String,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },

    /// A request exceeds what the adapter can do (binding size, dispatch size, ...).
    #[error("{what} needs {requested} but the adapter allows at most {limit} ({limit_name})")]
    Limit {
        what: String,
        requested: u64,
        limit: u64,
        limit_name: &'static str,
    },

    /// A bad scalar argument (an epsilon, an index, ...).
    #[error("{op}: invalid argument `{arg}`: {reason}")]
    Argument {
        op: &'static str,
        arg: &'static str,
        reason: String,
    },

    /// A text is longer than the model takes and truncation was not asked for.
    #[error(
        "input {index} is longer than the {max_length} tokens this model takes (truncation was \
         not asked for)"
    )]
    TooLong { index: usize, max_length: usize },

    /// wgpu reported a validation or out-of-memory error inside an error scope.
    #[error("GPU error during {during}: {message}")]
    Gpu { during: String, message: String },

    /// The GPU device is gone (driver reset, removed GPU, destroyed); make a new context.
    #[error("the GPU device was lost ({reason}); create a new Context to continue")]
    DeviceLost { reason: String },

    /// A model's config is missing something, malformed, or asks for what we do not support.
    #[error("config: {0}")]
    Config(String),

    /// A checkpoint tensor is missing or has the wrong shape or dtype.
    #[error("weights: tensor `{key}`: {reason}")]
    Weights { key: String, reason: String },

    /// Model input (token ids, masks, images) that the model cannot take.
    #[error("input `{arg}`: {reason}")]
    Input { arg: String, reason: String },

    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },

    /// The tokenizer could not be loaded or failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A file is not in the format it should be (truncated, a bad header, over a limit).
    #[error("{0}")]
    Format(String),

    /// Something went wrong with the contents of a file: the inner error, prefixed with the
    /// file's path.
    #[error("{path}: {error}")]
    InFile { path: String, error: Box<Error> },

    /// Reading a buffer back to the host failed.
    #[error("reading back `{what}` failed: {message}")]
    Readback { what: String, message: String },
}

impl Error {
    /// This error, naming the file it came from (errors that already name a path are kept).
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Error::Io { .. } | Error::InFile { .. } => self,
            other => Error::InFile {
                path: path.display().to_string(),
                error: Box::new(other),
            },
        }
    }
}

/// A dtype name, used in error messages (keeps [`Error`] independent of the tensor module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DTypeName(pub &'static str);

impl fmt::Display for DTypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
