//! Kernel-variant choice measured ahead of time instead of autotuned at start-up:
//! `backbone-bench tune` times every matmul tile on the problems a model runs and writes a
//! [`TuneTable`] keyed by adapter, backend and driver. A context given a table
//! ([`crate::ContextOptions::tune_table`], or the file named by `BACKBONE_TUNE`) uses its
//! choice for those exact problems, and the built-in heuristic ([`MatmulTile::choose`])
//! everywhere else; a table measured on another adapter or driver is ignored with a warning.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::MatmulTile;

/// Measured variant choices for one adapter and driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneTable {
    pub adapter: String,
    pub backend: String,
    pub driver: String,
    /// The commit of the engine that measured it.
    pub commit: String,
    pub matmul: Vec<MatmulChoice>,
}

/// The fastest tile for one matmul problem, with what every candidate measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatmulChoice {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    /// Storage of X and W, both: "f32" or "f16".
    pub dtype: String,
    pub tile: MatmulTile,
    /// GPU ms (median) of each candidate tile, fastest first.
    pub measured: Vec<(MatmulTile, f64)>,
}

/// The adapter identity a table is keyed by: (name, backend, driver); from a context's
/// capabilities or a `wgpu::AdapterInfo`.
pub fn adapter_key(adapter: impl AsRef<wgpu::AdapterInfo>) -> (String, String, String) {
    let info = adapter.as_ref();
    (
        info.name.clone(),
        format!("{:?}", info.backend),
        format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
    )
}

impl TuneTable {
    /// Parses a table; errors name `what` (the file).
    pub fn from_json(bytes: &[u8], what: &str) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Format(format!("{what}: not a backbone tune table: {e}")))
    }

    /// Reads a table file (bounded like any config file).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let bytes = crate::io::read_bounded(path, crate::limits::MAX_CONFIG_BYTES)?;
        Self::from_json(&bytes, &path.display().to_string())
    }

    /// Whether this table was measured on this adapter, backend and driver.
    pub fn matches(&self, adapter: impl AsRef<wgpu::AdapterInfo>) -> bool {
        let (adapter, backend, driver) = adapter_key(adapter);
        self.adapter == adapter && self.backend == backend && self.driver == driver
    }

    /// The measured tile for exactly this problem (`f16`: X and W both stored as f16), if the
    /// table has it. The key is the product as `kernels::matmul` sees it: a [B, T, K] input
    /// times a shared weight is `batch` B of `m` = T rows.
    pub fn matmul_tile(
        &self,
        m: usize,
        n: usize,
        k: usize,
        batch: usize,
        f16: bool,
    ) -> Option<MatmulTile> {
        let dtype = if f16 { "f16" } else { "f32" };
        self.matmul
            .iter()
            .find(|c| c.m == m && c.n == n && c.k == k && c.batch == batch && c.dtype == dtype)
            .map(|c| c.tile)
    }
}
