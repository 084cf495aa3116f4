use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel, Spec};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::{DType, Tensor, check_dtype, check_float};

/// One branch of a CSWin block's attention over an `h x w` map of `c` channels: the branch
/// owns channels `[channel_offset, channel_offset + channels)` split into `heads` heads, and
/// attends within `window` = (rows, cols) windows. See `shaders/cswin_attention.wgsl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CswinBranch {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub channel_offset: usize,
    pub channels: usize,
    pub heads: usize,
    pub window: (usize, usize),
}

impl CswinBranch {
    pub fn head_dim(&self) -> usize {
        self.channels / self.heads.max(1)
    }

    /// The map padded to whole windows, and the top/left padding (split evenly, as the
    /// official segmentation backbone pads).
    pub fn padding(&self) -> (usize, usize, usize, usize) {
        let (wh, ww) = self.window;
        let (hp, wp) = (self.h.div_ceil(wh) * wh, self.w.div_ceil(ww) * ww);
        (hp, wp, (hp - self.h) / 2, (wp - self.w) / 2)
    }

    /// Checks the branch against the qkv, LePE and output shapes (shared with the CPU twin).
    pub fn check(
        &self,
        qkv: &[usize],
        lepe_w: &[usize],
        lepe_b: &[usize],
        out: &[usize],
    ) -> Result<usize> {
        let arg = |arg, reason: String| {
            Err(Error::Argument {
                op: "cswin_attention",
                arg,
                reason,
            })
        };
        if self.heads == 0 || !self.channels.is_multiple_of(self.heads) {
            return arg(
                "heads",
                format!(
                    "{} heads do not divide the branch's {} channels",
                    self.heads, self.channels
                ),
            );
        }
        if self.head_dim() > crate::kernels::MAX_HEAD_DIM {
            return arg(
                "heads",
                format!(
                    "head_dim {} is above {}",
                    self.head_dim(),
                    crate::kernels::MAX_HEAD_DIM
                ),
            );
        }
        if self.channel_offset + self.channels > self.c {
            return arg(
                "channel_offset",
                format!(
                    "channels {}..{} exceed C = {}",
                    self.channel_offset,
                    self.channel_offset + self.channels,
                    self.c
                ),
            );
        }
        if self.window.0 == 0 || self.window.1 == 0 {
            return arg("window", format!("{:?} is empty", self.window));
        }
        let shape = |arg, t: &[usize], want: Vec<usize>| -> Result<()> {
            if t != want {
                return Err(Error::Shape {
                    op: "cswin_attention",
                    arg,
                    expected: format!("{want:?}"),
                    found: t.to_vec(),
                });
            }
            Ok(())
        };
        let batch = qkv.first().copied().unwrap_or(0);
        shape("qkv", qkv, vec![batch, self.h * self.w, 3 * self.c])?;
        shape("lepe_w", lepe_w, vec![self.channels, 3, 3])?;
        shape("lepe_b", lepe_b, vec![self.channels])?;
        shape("out", out, vec![batch, self.h * self.w, self.c])?;
        Ok(batch)
    }
}

/// Head sizes shader validation covers.
pub(super) const VALIDATED_HEAD_DIMS: [usize; 6] = [8, 12, 16, 24, 32, 48];

/// Specialisation: head size, tiles, storage types of qkv and out (as `attention`).
pub(super) fn spec(head_dim: usize, f16: (bool, bool)) -> Spec {
    super::attention::spec(head_dim, f16)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    h: u32,
    w: u32,
    c: u32,
    channel_offset: u32,
    heads: u32,
    win_h: u32,
    win_w: u32,
    pad_top: u32,
    pad_left: u32,
    windows_x: u32,
    q_tiles: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// One branch of CSWin's cross-shaped window attention with LePE, fused (see
/// [`CswinBranch`]). `qkv` is [B, H*W, 3C], `lepe_w` the branch's depthwise 3x3 weight as
/// [Cb, 3, 3], `lepe_b` [Cb]; writes the branch's channels of `out` [B, H*W, C].
pub fn cswin_attention(
    rec: &mut Recorder<'_>,
    qkv: &Tensor,
    lepe_w: &Tensor,
    lepe_b: &Tensor,
    branch: &CswinBranch,
    out: &Tensor,
) -> Result<()> {
    let ctx = rec.context();
    let f16 = (
        check_float(ctx, "cswin_attention", "qkv", qkv)?,
        check_float(ctx, "cswin_attention", "out", out)?,
    );
    for (arg, t) in [("lepe_w", lepe_w), ("lepe_b", lepe_b)] {
        check_dtype("cswin_attention", arg, t, DType::F32)?;
    }
    let batch = branch.check(qkv.shape(), lepe_w.shape(), lepe_b.shape(), out.shape())?;
    let (hp, wp, pad_top, pad_left) = branch.padding();
    let (wh, ww) = branch.window;
    let d = branch.head_dim();
    let (kernel, spec, queries) = super::attention::choose(
        ctx,
        d,
        f16,
        false,
        (Kernel::CswinAttention, Kernel::CswinAttentionCoop),
    );
    let q_tiles = (wh * ww).div_ceil(queries);
    let windows = (hp / wh) * (wp / ww);
    let params = Params {
        batch: batch as u32,
        h: branch.h as u32,
        w: branch.w as u32,
        c: branch.c as u32,
        channel_offset: branch.channel_offset as u32,
        heads: branch.heads as u32,
        win_h: wh as u32,
        win_w: ww as u32,
        pad_top: pad_top as u32,
        pad_left: pad_left as u32,
        windows_x: (wp / ww) as u32,
        q_tiles: q_tiles as u32,
        scale: 1.0 / (d as f32).sqrt(),
        _pad: [0; 3],
    };
    rec.dispatch(Dispatch {
        kernel,
        spec,
        params: bytemuck::bytes_of(&params),
        buffers: &[qkv.buffer(), lepe_w.buffer(), lepe_b.buffer(), out.buffer()],
        groups: [
            (windows * q_tiles) as u32,
            branch.heads as u32,
            batch as u32,
        ],
        traffic: Traffic {
            read: (batch * branch.h * branch.w * 3 * branch.channels * qkv.dtype().size()
                + 4 * 10 * branch.channels) as u64,
            written: (batch * branch.h * branch.w * branch.channels * out.dtype().size()) as u64,
        },
    })
}
