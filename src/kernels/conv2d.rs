use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel, Spec};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::{DType, Tensor, check_dtype, check_float, check_shape};

/// How the input of [`conv2d`] is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvInput {
    /// (B, Cin, H, W): pixel values.
    Nchw,
    /// (B, H*W, Cin): token-major, as the transformer stages produce; the map is `h x w`.
    Tokens { h: usize, w: usize },
}

/// A convolution's geometry, resolved from the input shape and the weight: shared by the GPU
/// op and its CPU twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ConvGeometry {
    pub fn new(
        x: &[usize],
        layout: ConvInput,
        weight: &[usize],
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        let shape_err = |arg, expected: String, found: &[usize]| Error::Shape {
            op: "conv2d",
            arg,
            expected,
            found: found.to_vec(),
        };
        let (batch, cin, h, w) = match (layout, x) {
            (ConvInput::Nchw, &[b, c, h, w]) => (b, c, h, w),
            (ConvInput::Tokens { h, w }, &[b, n, c]) if n == h * w => (b, c, h, w),
            (ConvInput::Nchw, _) => return Err(shape_err("x", "[B, Cin, H, W]".into(), x)),
            (ConvInput::Tokens { h, w }, _) => {
                return Err(shape_err("x", format!("[B, {}, Cin]", h * w), x));
            }
        };
        let &[cout, wc, kh, kw] = weight else {
            return Err(shape_err("weight", "[Cout, Cin, KH, KW]".into(), weight));
        };
        if wc != cin {
            return Err(shape_err(
                "weight",
                format!("[Cout, {cin}, KH, KW] (the input has {cin} channels)"),
                weight,
            ));
        }
        if stride == 0 {
            return Err(Error::Argument {
                op: "conv2d",
                arg: "stride",
                reason: "must be at least 1".into(),
            });
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            return Err(Error::Argument {
                op: "conv2d",
                arg: "x",
                reason: format!(
                    "a {h}x{w} input padded by {pad} is smaller than the {kh}x{kw} kernel"
                ),
            });
        }
        let ho = (h + 2 * pad - kh) / stride + 1;
        let wo = (w + 2 * pad - kw) / stride + 1;
        Ok(Self {
            batch,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride,
            pad,
            ho,
            wo,
        })
    }

    pub fn output_shape(&self) -> [usize; 3] {
        [self.batch, self.ho * self.wo, self.cout]
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    _pad: u32,
}

/// Specialisation: the input layout, and the storage types of x, weight and y.
pub(super) fn spec(nchw: bool, f16: (bool, bool, bool)) -> Spec {
    Spec::new()
        .storage("XT", f16.0)
        .storage("WT", f16.1)
        .storage("YT", f16.2)
        .bool("X_NCHW", nchw)
}

/// 2-D convolution with bias, zero padding `pad` and stride `stride`, as an implicit GEMM,
/// writing token-major output `y` [B, Ho*Wo, Cout]. `weight` is PyTorch's [Cout, Cin, KH, KW].
#[allow(clippy::too_many_arguments)] // mirrors F.conv2d's argument list, plus recorder and output
pub fn conv2d(
    rec: &mut Recorder<'_>,
    x: &Tensor,
    layout: ConvInput,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: usize,
    y: &Tensor,
) -> Result<()> {
    let ctx = rec.context();
    let f16 = (
        check_float(ctx, "conv2d", "x", x)?,
        check_float(ctx, "conv2d", "weight", weight)?,
        check_float(ctx, "conv2d", "y", y)?,
    );
    check_dtype("conv2d", "bias", bias, DType::F32)?;
    let g = ConvGeometry::new(x.shape(), layout, weight.shape(), stride, pad)?;
    check_shape("conv2d", "bias", bias, &[g.cout])?;
    check_shape("conv2d", "y", y, &g.output_shape())?;
    let params = Params {
        batch: g.batch as u32,
        cin: g.cin as u32,
        h: g.h as u32,
        w: g.w as u32,
        cout: g.cout as u32,
        ho: g.ho as u32,
        wo: g.wo as u32,
        kh: g.kh as u32,
        kw: g.kw as u32,
        stride: stride as u32,
        pad: pad as u32,
        _pad: 0,
    };
    let m = g.batch * g.ho * g.wo;
    rec.dispatch(Dispatch {
        kernel: Kernel::Conv2d,
        spec: spec(layout == ConvInput::Nchw, f16),
        params: bytemuck::bytes_of(&params),
        buffers: &[x.buffer(), weight.buffer(), bias.buffer(), y.buffer()],
        groups: [g.cout.div_ceil(64) as u32, m.div_ceil(64) as u32, 1],
        traffic: Traffic::whole(&[x, weight, bias], y),
    })
}
