//! The README's library example: one fused matmul (bias + GELU) on the best adapter.
use backbone::{Context, DType, Recorder, Tensor, kernels};

fn main() -> backbone::Result<()> {
    let ctx = Context::from_env_blocking()?; // best adapter; BACKBONE_BACKEND / BACKBONE_ADAPTER override
    println!("{}", ctx.capabilities());

    let x = Tensor::from_f32(&ctx, &[2, 3], &[1., 2., 3., 4., 5., 6.], "x")?;
    let w = Tensor::from_f32(&ctx, &[4, 3], &[0.5; 12], "w")?; // [out, in], as nn.Linear stores it
    let b = Tensor::from_f32(&ctx, &[4], &[0.1; 4], "b")?;
    let y = Tensor::empty(&ctx, &[2, 4], DType::F32, "y")?;

    // Everything recorded goes out in one submission; wgpu errors come back from submit.
    let mut rec = Recorder::new(&ctx);
    kernels::matmul(
        &mut rec,
        &x,
        &w,
        &y,
        kernels::Epilogue::none().bias(&b).gelu(),
    )?;
    rec.submit_blocking()?;
    println!("{:?}", y.read_f32_blocking(&ctx)?); // async `read_f32` on the web
    Ok(())
}
