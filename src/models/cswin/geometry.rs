//! The spatial plan of a forward and the checks on `pixel_values`.

use super::CswinConfig;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::kernels::CswinBranch;
use crate::limits;
use crate::models::weights::Weights;

/// The spatial plan of a forward: each stage's map size and each branch's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub image: (usize, usize),
    /// (H, W) of stages 1..4.
    pub stages: [(usize, usize); 4],
}

impl Geometry {
    /// Checks `pixel_values`' shape [B, in_chans, H, W] and derives the stage sizes.
    pub fn new(config: &CswinConfig, pixel_values: &[usize]) -> Result<Self> {
        let &[batch, chans, h, w] = pixel_values else {
            return Err(Error::Input {
                arg: "pixel_values".into(),
                reason: format!(
                    "shape {pixel_values:?} is not [B, {}, H, W]",
                    config.in_chans
                ),
            });
        };
        if chans != config.in_chans {
            return Err(Error::Input {
                arg: "pixel_values".into(),
                reason: format!(
                    "{chans} channels, the model takes {} (shape {pixel_values:?})",
                    config.in_chans
                ),
            });
        }
        if batch == 0 || h < 3 || w < 3 {
            return Err(Error::Input {
                arg: "pixel_values".into(),
                reason: format!(
                    "{batch} images of {h}x{w}: need at least one image of 3x3 or more (the 7x7/4 stem)"
                ),
            });
        }
        let size = config.img_size as u64;
        let (side, area) = (
            limits::CSWIN_SIDE_FACTOR * size,
            limits::CSWIN_IMAGE_AREA_FACTOR * size * size,
        );
        let batch_area = limits::CSWIN_BATCH_AREA_FACTOR * size * size;
        let pixels = (h as u64).saturating_mul(w as u64);
        if h as u64 > side || w as u64 > side || pixels > area {
            return Err(Error::Input {
                arg: "pixel_values".into(),
                reason: format!(
                    "images of {h}x{w} are over this model's limit (img_size {size}: sides up to \
                     {side}, at most {area} pixels)"
                ),
            });
        }
        if pixels.saturating_mul(batch as u64) > batch_area {
            return Err(Error::Input {
                arg: "pixel_values".into(),
                reason: format!(
                    "a batch of {batch} images of {h}x{w} is over this model's limit of \
                     {batch_area} pixels per forward (img_size {size}): split the batch"
                ),
            });
        }
        let mut stages = [((h - 3) / 4 + 1, (w - 3) / 4 + 1); 4];
        for s in 1..4 {
            let (ph, pw) = stages[s - 1];
            stages[s] = (ph.div_ceil(2), pw.div_ceil(2));
        }
        Ok(Self {
            batch,
            image: (h, w),
            stages,
        })
    }

    /// The attention branches of a stage-`s` block with `branches` branches.
    pub fn branches(&self, config: &CswinConfig, s: usize, branches: usize) -> Vec<CswinBranch> {
        let (h, w) = self.stages[s];
        let (c, heads, sw) = (config.dim(s), config.num_heads[s], config.split_size[s]);
        if branches == 1 {
            return vec![CswinBranch {
                h,
                w,
                c,
                channel_offset: 0,
                channels: c,
                heads,
                window: (h, w),
            }];
        }
        let half = CswinBranch {
            h,
            w,
            c,
            channel_offset: 0,
            channels: c / 2,
            heads: heads / 2,
            window: (h, sw),
        };
        vec![
            half,
            CswinBranch {
                channel_offset: c / 2,
                window: (sw, w),
                ..half
            },
        ]
    }
}

/// Reads `pixel_values` [B, C, H, W] (F32) from safetensors bytes.
pub fn pixel_values_from_safetensors(bytes: &[u8]) -> Result<HostTensor> {
    let mut file = Weights::from_bytes(bytes)?;
    let shape = file.shape("pixel_values").ok_or_else(|| Error::Input {
        arg: "pixel_values".into(),
        reason: "missing from the input file".into(),
    })?;
    let pixels = file.get_f32("pixel_values", &shape)?;
    pixels.check_finite("pixel_values")?;
    Ok(pixels)
}

/// Checks `pixel_values` for a model before anything is allocated for it: its shape and size
/// (within the model's limits) and that every value is finite.
pub fn check_input(config: &CswinConfig, pixel_values: &HostTensor) -> Result<()> {
    Geometry::new(config, &pixel_values.shape)?;
    pixel_values.check_finite("pixel_values")
}
