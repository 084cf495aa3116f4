//! Known-answer checks of the kernel families that lean on driver features beyond core
//! WebGPU (cooperative matrices, subgroup reductions), run once when a [`Context`] opens.
//! Each family that the adapter offers runs one tiny dispatch against its CPU twin; an error
//! (a pipeline the driver rejects, a validation failure) or a wrong answer turns the family
//! off for that context, with one warning naming the adapter and driver, and every product
//! it would have run takes the portable kernels instead.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::{self, CswinBranch, Epilogue, MatmulTile, StridedMatmul};
use crate::recorder::Recorder;
use crate::reference::{self, HostTensor};
use crate::tensor::{DType, Tensor};

/// A kernel family with a known-answer check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `matmul_coop`: f16 products on cooperative matrices (tensor cores).
    CoopMatmul,
    /// `attention_coop`: BERT attention on cooperative matrices.
    CoopAttention,
    /// `cswin_attention_coop`: CSWin attention on cooperative matrices.
    CoopCswinAttention,
    /// `matmul_subgroup`: few-row products reduced across a subgroup.
    SubgroupMatmul,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::CoopMatmul,
        Family::CoopAttention,
        Family::CoopCswinAttention,
        Family::SubgroupMatmul,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Family::CoopMatmul => "coop_matmul",
            Family::CoopAttention => "coop_attention",
            Family::CoopCswinAttention => "coop_cswin_attention",
            Family::SubgroupMatmul => "subgroup_matmul",
        }
    }

    /// A family by [`Family::name`].
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| Error::InvalidOption {
                name: "BACKBONE_SELF_TEST_FAULT",
                value: name.to_string(),
                expected: "coop_matmul, coop_attention, coop_cswin_attention or subgroup_matmul",
            })
    }

    /// Whether the adapter offers this family (and so whether its check runs).
    fn offered(self, ctx: &Context) -> bool {
        let coop = kernels::matmul_coop::coop_fragment(ctx).is_some();
        match self {
            Family::CoopMatmul => coop,
            Family::CoopAttention | Family::CoopCswinAttention => {
                coop && kernels::CoopAttention::for_head(ctx, 16).is_some()
            }
            Family::SubgroupMatmul => MatmulTile::Subgroup.fits(ctx),
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs the check of every family the adapter offers; turns off each that fails. `fault`
/// spoils one family's expected answer (to test this path on any adapter).
pub(crate) async fn run(ctx: &Context, fault: Option<Family>) {
    for family in Family::ALL {
        if !family.offered(ctx) {
            continue;
        }
        let outcome = check(ctx, family, fault == Some(family)).await;
        if let Err(why) = outcome {
            let info = &ctx.capabilities().adapter;
            let reason = format!(
                "{family} turned off on {} ({:?}, driver {} {}): its known-answer check failed: \
                 {why}; the portable kernels run instead",
                info.name, info.backend, info.driver, info.driver_info
            );
            log::warn!("{reason}");
            ctx.disable_family(family, reason);
        }
    }
}

/// A fixed pseudo-random pattern in [-1, 1) (no RNG needed at context creation).
fn pattern(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 37 + seed * 101) % 199) as f32) / 99.5 - 1.0)
        .collect()
}

fn host(shape: &[usize], seed: usize, dtype: DType) -> Result<HostTensor> {
    Ok(HostTensor::new(shape, pattern(shape.iter().product(), seed))?.round_to(dtype))
}

/// One family's dispatch against its twin: `Err` with what went wrong.
async fn check(ctx: &Context, family: Family, spoil: bool) -> Result<()> {
    let f16 = DType::F16;
    let (got, mut want, tol) = match family {
        Family::SubgroupMatmul | Family::CoopMatmul => {
            let (m, n, k) = if family == Family::SubgroupMatmul {
                (3, 24, 40)
            } else {
                (20, 40, 48)
            };
            let dtype = if family == Family::CoopMatmul {
                f16
            } else {
                DType::F32
            };
            let x = host(&[m, k], 1, dtype)?;
            let w = host(&[n, k], 2, dtype)?;
            let (gx, gw) = (upload(ctx, &x, dtype)?, upload(ctx, &w, dtype)?);
            let y = Tensor::empty(ctx, &[m, n], DType::F32, "selftest.y")?;
            let mut rec = Recorder::new(ctx);
            let problem = StridedMatmul::contiguous(1, m, n, k, true);
            match family {
                Family::CoopMatmul => kernels::matmul_coop::matmul_coop(
                    &mut rec,
                    &gx,
                    &gw,
                    &y,
                    Epilogue::none(),
                    &problem,
                )?,
                _ => kernels::matmul::matmul_with_tile(
                    &mut rec,
                    &gx,
                    &gw,
                    &y,
                    Epilogue::none(),
                    &problem,
                    MatmulTile::Subgroup,
                )?,
            }
            let got = run_and_read(ctx, rec, &y).await?;
            let mut want = HostTensor::zeros(&[m, n]);
            reference::matmul(&x, &w, &mut want, Epilogue::none())?;
            (got, want, 1e-3 * (k as f32).sqrt())
        }
        Family::CoopAttention => {
            let (batch, seq, heads, d) = (1, 20, 2, 16);
            let c = heads * d;
            let qkv = host(&[batch, seq, 3 * c], 3, f16)?;
            let mask = HostTensor::new(&[batch, seq], vec![1u32; batch * seq])?;
            let gqkv = upload(ctx, &qkv, f16)?;
            let gmask = Tensor::from_u32(ctx, &mask.shape, &mask.data, "selftest.mask")?;
            let out = Tensor::empty(ctx, &[batch, seq, c], f16, "selftest.out")?;
            let mut rec = Recorder::new(ctx);
            kernels::attention(&mut rec, &gqkv, &gmask, heads, &out)?;
            let got = run_and_read(ctx, rec, &out).await?;
            let mut want = HostTensor::zeros(&[batch, seq, c]);
            reference::attention(&qkv, &mask, heads, &mut want)?;
            (got, want, 1e-2)
        }
        Family::CoopCswinAttention => {
            let branch = CswinBranch {
                h: 6,
                w: 6,
                c: 32,
                channel_offset: 0,
                channels: 16,
                heads: 1,
                window: (6, 2),
            };
            let qkv = host(&[1, 36, 96], 4, f16)?;
            let lepe_w = host(&[16, 3, 3], 5, DType::F32)?;
            let lepe_b = host(&[16], 6, DType::F32)?;
            let gqkv = upload(ctx, &qkv, f16)?;
            let gw = upload(ctx, &lepe_w, DType::F32)?;
            let gb = upload(ctx, &lepe_b, DType::F32)?;
            let out = Tensor::empty(ctx, &[1, 36, 32], f16, "selftest.out")?;
            let mut rec = Recorder::new(ctx);
            kernels::cswin_attention(&mut rec, &gqkv, &gw, &gb, &branch, &out)?;
            let got = run_and_read(ctx, rec, &out).await?;
            let mut want = HostTensor::zeros(&[1, 36, 32]);
            reference::cswin_attention(&qkv, &lepe_w, &lepe_b, &branch, &mut want)?;
            // Only the branch's channels are written; compare those.
            let keep = |t: &HostTensor| -> Vec<f32> {
                t.data
                    .chunks(32)
                    .flat_map(|row| row[..16].to_vec())
                    .collect()
            };
            let want = HostTensor::new(&[36, 16], keep(&want))?;
            let got = HostTensor::new(&[36, 16], keep(&got))?;
            (got, want, 1e-2)
        }
    };
    if spoil {
        // BACKBONE_SELF_TEST_FAULT: a deliberately wrong expected answer.
        if let Some(v) = want.data.first_mut() {
            *v += 1.0;
        }
    }
    let bad = got
        .data
        .iter()
        .zip(&want.data)
        .position(|(&g, &w)| (g - w).abs().is_nan() || (g - w).abs() > tol * (1.0 + w.abs()));
    match bad {
        None => Ok(()),
        Some(i) => Err(Error::Gpu {
            during: format!("checking {family} against its CPU twin"),
            message: format!(
                "value {i} is {} where the known answer is {}",
                got.data[i], want.data[i]
            ),
        }),
    }
}

fn upload(ctx: &Context, t: &HostTensor, dtype: DType) -> Result<Tensor> {
    crate::models::weights::upload_as(ctx, "selftest", t, dtype)
}

/// Submits `rec` and reads `out` back (one program, one readback).
async fn run_and_read(ctx: &Context, rec: Recorder<'_>, out: &Tensor) -> Result<HostTensor> {
    let program = rec.finish().await?;
    let mut values = program.run_and_read(ctx, &[out]).await?;
    values.pop().ok_or_else(|| Error::Readback {
        what: "selftest".into(),
        message: "no output".into(),
    })
}
