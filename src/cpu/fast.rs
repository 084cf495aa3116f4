//! The fast CPU executor: matrix products through `gemm` (SIMD kernels picked at run time,
//! cache blocking, threads), attention as blocked products per (batch entry, head) with an
//! online softmax in f32 between them, the epilogue (bias, activation, residual) and the norms on the
//! same threads. Sums are f32 (the twins sum in f64), so results agree with the twins to f32
//! rounding; layouts it does not take (overlapping outputs) go to the twin.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::CpuOps;
use crate::error::Result;
use crate::kernels::matmul::{Epilogue, MatrixView, StridedMatmul, WLayout};
use crate::kernels::{Activation, AttentionBias};
use crate::reference::{self, HostTensor};

/// Threads of the fast CPU path: `BACKBONE_CPU_THREADS` when set to a positive number, else
/// one per core the process may use.
pub fn threads() -> usize {
    std::env::var("BACKBONE_CPU_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The one pool every fast CPU op runs on, made on first use; `None` if the system refused
/// threads (then everything runs on the caller's thread).
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads())
            .thread_name(|i| format!("backbone-cpu-{i}"))
            .build()
            .map_err(|e| log::warn!("fast CPU path: no thread pool ({e}); running on one thread"))
            .ok()
    })
    .as_ref()
}

/// `erf(x)` in f32 as a rational function of x (the fast erf of Eigen and XLA, inputs
/// clamped to ±4 where erf is ±1 in f32): within 4.2e-7 of erf everywhere, and a loop of
/// them vectorizes (no call to a libm function).
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    for c in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + c;
    }
    let mut q = -1.456_607_2e-5_f32;
    for c in [
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_473_9e-2,
    ] {
        q = q * x2 + c;
    }
    x * p / q
}

/// GELU (erf form) in f32 through [`erf_f32`].
#[inline(always)]
fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The activation over a row, in place.
fn activate(act: Activation, row: &mut [f32]) {
    match act {
        Activation::None => {}
        Activation::Gelu => row.iter_mut().for_each(|v| *v = gelu_f32(*v)),
        Activation::Tanh => row.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Relu => row.iter_mut().for_each(|v| *v = v.max(0.0)),
    }
}

/// Keys per block of the attention's online softmax.
const KEY_BLOCK: usize = 256;

/// The fast CPU executor (`Device::Cpu`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Fast;

impl Fast {
    /// Runs `f` on the pool, with the parallelism gemm should use there.
    fn run<R: Send>(f: impl FnOnce(gemm::Parallelism) -> R + Send) -> R {
        match pool() {
            Some(pool) if pool.current_num_threads() > 1 => {
                let n = pool.current_num_threads();
                pool.install(|| f(gemm::Parallelism::Rayon(n)))
            }
            Some(pool) => pool.install(|| f(gemm::Parallelism::None)),
            None => f(gemm::Parallelism::None),
        }
    }
}

/// Whether the batch's output matrices are disjoint with disjoint rows (so products and the
/// epilogue can write them in parallel).
fn disjoint_outputs(p: &StridedMatmul) -> bool {
    let [outer, inner] = p.batch;
    let block = p.m.saturating_sub(1) * p.y.ld + p.n;
    p.y.ld >= p.n
        && (inner == 1 || p.y.inner_stride >= block)
        && (outer == 1 || p.y.outer_stride >= (inner - 1) * p.y.inner_stride + block)
}

/// `dst[m, n] = beta · lhs[m, k] · rhs[k, n]` with element strides (row, column) for each.
///
/// # Safety
/// Every element the strides reach lies inside its slice, and `dst`'s elements are distinct.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (dst_rs, dst_cs): (usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                dst[i * dst_rs + j * dst_cs] = 0.0;
            }
        }
        return;
    }
    // SAFETY: the caller's bounds; gemm reads lhs and rhs and writes dst within them.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}

impl CpuOps for Fast {
    fn matmul_strided(
        &self,
        x: &HostTensor,
        w: &HostTensor,
        y: &mut HostTensor,
        ep: Epilogue<'_, HostTensor>,
        p: &StridedMatmul,
    ) -> Result<()> {
        p.check(x.numel(), w.numel(), y.numel())?;
        reference::check_epilogue(&ep, p.n, y)?;
        if !disjoint_outputs(p) {
            return reference::matmul_strided(x, w, y, ep, p);
        }
        let [outer, inner] = p.batch;
        let (m, n, k) = (p.m, p.n, p.k);
        let w_strides = match p.w_layout {
            WLayout::NK => (1, p.w.ld),
            WLayout::KN => (p.w.ld, 1),
        };
        // A batch that shares W over contiguous X and Y rows is one product of all its rows.
        let folds = |v: &MatrixView| inner == 1 && v.outer_stride == m * v.ld;
        let (batches, rows) = if outer > 1 && p.w.outer_stride == 0 && folds(&p.x) && folds(&p.y) {
            (1, outer * m)
        } else {
            (outer * inner, m)
        };
        Self::run(|par| {
            for b in 0..batches {
                let (xb, wb, yb) = (p.x.base(b, inner), p.w.base(b, inner), p.y.base(b, inner));
                // SAFETY: `check` bounds every view by its tensor; rows of Y are disjoint.
                unsafe {
                    product(
                        (rows, n, k),
                        &mut y.data[yb..],
                        (p.y.ld, 1),
                        &x.data[xb..],
                        (p.x.ld, 1),
                        &w.data[wb..],
                        w_strides,
                        ep.alpha,
                        par,
                    );
                }
            }
            // The epilogue in place, rows in parallel: act(v + bias) + residual, in f32
            // loops the compiler vectorizes.
            if ep.bias.is_none() && ep.residual.is_none() && ep.act == Activation::None {
                return;
            }
            let residual = ep.residual.map(|r| r.data.as_slice());
            let bias = ep.bias.map(|b| &b.data[..n]);
            for b in 0..batches {
                let yb = p.y.base(b, inner);
                let span = (rows - 1) * p.y.ld + n;
                y.data[yb..yb + span]
                    .par_chunks_mut(p.y.ld)
                    .enumerate()
                    .for_each(|(i, row)| {
                        let row = &mut row[..n];
                        if let Some(bias) = bias {
                            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                        }
                        activate(ep.act, row);
                        if let Some(r) = residual {
                            let at = yb + i * p.y.ld;
                            row.iter_mut()
                                .zip(&r[at..at + n])
                                .for_each(|(v, r)| *v += r);
                        }
                    });
            }
        });
        Ok(())
    }

    fn layer_norm(
        &self,
        x: &HostTensor,
        residual: Option<&HostTensor>,
        gamma: &HostTensor,
        beta: &HostTensor,
        eps: f32,
        y: &mut HostTensor,
    ) -> Result<()> {
        let c = reference::check_layer_norm(x, residual, gamma, beta, y)?;
        if c == 0 {
            return Ok(());
        }
        Self::run(|_| {
            y.data.par_chunks_mut(c).enumerate().for_each(|(r, out)| {
                let row = r * c..(r + 1) * c;
                reference::layer_norm_row(
                    &x.data[row.clone()],
                    residual.map(|t| &t.data[row]),
                    &gamma.data,
                    &beta.data,
                    eps,
                    out,
                );
            });
        });
        Ok(())
    }

    fn attention_biased(
        &self,
        qkv: &HostTensor,
        mask: &HostTensor<u32>,
        extra: AttentionBias<'_, HostTensor>,
        heads: usize,
        out: &mut HostTensor,
    ) -> Result<()> {
        let (b, t, c, d) =
            crate::kernels::attention_dims(&qkv.shape, &mask.shape, heads, &out.shape)?;
        if let Some(bias) = extra.rel_bias {
            crate::kernels::rel_bias_dims(&bias.shape, heads, t)?;
        }
        if b == 0 || t == 0 || d == 0 {
            return Ok(());
        }
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        let stride = 3 * c;
        // Per (batch entry, head), keys in blocks of KEY_BLOCK: S = scale · Q·Kᵀ [t, block],
        // the mask and biases added, then an online softmax (running max and sum per query,
        // earlier blocks rescaled when the max grows) and O += P·V [t, d]; memory is t · block
        // per task whatever the length.
        let blocks: Vec<Vec<f32>> = Self::run(|_| {
            (0..b * heads)
                .into_par_iter()
                .map(|bh| {
                    let (bi, h) = (bh / heads, bh % heads);
                    let at = bi * t * stride + h * d;
                    let width = KEY_BLOCK.min(t);
                    let mut scores = vec![0.0f32; t * width];
                    let mut o = vec![0.0f32; t * d];
                    let mut pv = vec![0.0f32; t * d];
                    let (mut run_max, mut run_sum) = (vec![f32::NEG_INFINITY; t], vec![0.0f32; t]);
                    let none = gemm::Parallelism::None;
                    for k0 in (0..t).step_by(KEY_BLOCK) {
                        let kb = KEY_BLOCK.min(t - k0);
                        let s = &mut scores[..t * kb];
                        // SAFETY: `attention_dims` checked qkv is [b, t, 3c] with heads · d = c;
                        // keys k0..k0 + kb of this head lie inside it.
                        unsafe {
                            product(
                                (t, kb, d),
                                s,
                                (kb, 1),
                                &qkv.data[at..],
                                (stride, 1),
                                &qkv.data[at + k0 * stride + c..],
                                (1, stride),
                                scale,
                                none,
                            );
                        }
                        for (qi, row) in s.chunks_mut(kb).enumerate() {
                            for (jj, v) in row.iter_mut().enumerate() {
                                let j = k0 + jj;
                                let rel = extra
                                    .rel_bias
                                    .map_or(0.0, |r| r.data[h * (2 * t - 1) + j + t - 1 - qi]);
                                let masked = if mask.data[bi * t + j] != 0 {
                                    0.0
                                } else {
                                    f32::MIN
                                };
                                *v = *v + rel + masked;
                                if extra.window.is_some_and(|w| j.abs_diff(qi) > w.max(1)) {
                                    *v = f32::MIN;
                                }
                            }
                            let block_max = row.iter().fold(f32::MIN, |m, &v| m.max(v));
                            let max = run_max[qi].max(block_max);
                            let rescale = (run_max[qi] - max).exp();
                            let mut sum = 0.0f32;
                            row.iter_mut().for_each(|v| {
                                *v = (*v - max).exp();
                                sum += *v;
                            });
                            run_sum[qi] = run_sum[qi] * rescale + sum;
                            run_max[qi] = max;
                            o[qi * d..(qi + 1) * d]
                                .iter_mut()
                                .for_each(|v| *v *= rescale);
                        }
                        // SAFETY: as above; V is the third block of each qkv row.
                        unsafe {
                            product(
                                (t, d, kb),
                                &mut pv,
                                (d, 1),
                                s,
                                (kb, 1),
                                &qkv.data[at + k0 * stride + 2 * c..],
                                (stride, 1),
                                1.0,
                                none,
                            );
                        }
                        o.iter_mut().zip(&pv).for_each(|(o, p)| *o += p);
                    }
                    for (row, sum) in o.chunks_mut(d).zip(&run_sum) {
                        row.iter_mut().for_each(|v| *v /= sum);
                    }
                    o
                })
                .collect()
        });
        for (bh, o) in blocks.iter().enumerate() {
            let (bi, h) = (bh / heads, bh % heads);
            for (qi, row) in o.chunks(d).enumerate() {
                out.data[(bi * t + qi) * c + h * d..][..d].copy_from_slice(row);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast erf and GELU against libm's f64 on a fine grid over [-8, 8].
    #[test]
    fn fast_erf_and_gelu_are_within_their_stated_error() {
        let (mut erf_err, mut gelu_err) = (0.0f64, 0.0f64);
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            erf_err = erf_err.max((erf_f32(x) as f64 - libm::erf(x as f64)).abs());
            let want = crate::host::gelu_scalar(x as f64);
            gelu_err = gelu_err.max((gelu_f32(x) as f64 - want).abs() / (x.abs() as f64).max(1.0));
        }
        assert!(erf_err <= 4.5e-7, "erf off by {erf_err:e}");
        assert!(gelu_err <= 4e-7, "gelu off by {gelu_err:e} per unit of |x|");
    }
}
