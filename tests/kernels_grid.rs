//! The 2-D dispatch grid. A kernel with more workgroups than the adapter's
//! max_compute_workgroups_per_dimension (65,535: WebGPU's default, lavapipe's and most GPUs')
//! spreads them over x and y (`pipeline::grid_1d`: x = ceil(groups / y), y = ceil(groups /
//! limit), so a few spare workgroups may run past the end) and its shader rebuilds the linear
//! index. The kernels that do are the elementwise ones (add, gelu: one workgroup per 256
//! elements), the row kernels (layer_norm, softmax, l2_normalize, embedding, bert_embeddings: one per
//! row) and
//! mean_pool (one per 256 outputs); matmul, conv2d and the attention kernels put their rows in
//! y and batch in z and never come near the limit at model sizes (they refuse a grid past it
//! with `Error::Limit`, see tests/errors.rs). The real case is CSWin's stage 1: 56 x 56 =
//! 3,136 tokens per image, so its LayerNorms pass 65,535 rows from batch 21 on, and its MLP's
//! GELU passes 65,535 x 256 elements there too.
//!
//! The tests run on contexts whose grid limit is capped (a device asked for fewer workgroups
//! per dimension than the adapter offers): at 65,535, so the split happens on every adapter
//! (some report a far larger x limit), and at 7, where every row and elementwise kernel splits
//! on small, cheap shapes, with and without spare workgroups. Outputs start as NaN.

mod common;

use backbone::kernels::{self, EmbeddingTables};
use backbone::reference::{self, HostTensor};
use backbone::{Context, ContextOptions, Recorder, Tensor};
use common::*;

/// WebGPU's default limit on workgroups per grid dimension.
const WEBGPU_GRID_LIMIT: u32 = 65_535;

/// A context of its own whose device allows at most `max_groups` workgroups per grid
/// dimension (every other limit as the shared context's).
fn capped(max_groups: u32) -> Context {
    let mut options = ContextOptions::from_env().expect("options");
    options.limit_cap = Some(wgpu::Limits {
        max_compute_workgroups_per_dimension: max_groups,
        ..ctx().limits().clone()
    });
    let capped = pollster::block_on(Context::new(options)).expect("capped context");
    assert_eq!(
        capped.limits().max_compute_workgroups_per_dimension,
        max_groups.min(ctx().limits().max_compute_workgroups_per_dimension),
        "the cap took effect"
    );
    capped
}

/// Says how a dispatch of `groups` workgroups is split under `limit` (as `grid_1d` does).
fn describe(what: &str, groups: usize, limit: u32) -> String {
    let limit = limit as usize;
    let y = groups.div_ceil(limit);
    let x = groups.div_ceil(y);
    format!(
        "{what}: {groups} workgroups, limit {limit}: grid {x} x {y} ({} spare)",
        x * y - groups
    )
}

fn run(ctx: &Context, record: impl FnOnce(&mut Recorder<'_>) -> backbone::Result<()>) {
    let mut rec = Recorder::new(ctx);
    record(&mut rec).expect("record");
    rec.submit_blocking().expect("submit");
}

/// add (compared exactly) and gelu over 65,535 x 256 + 300 elements: 65,537 workgroups, a
/// 32,769 x 2 grid with one spare workgroup.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn add_and_gelu_past_65535_workgroups() {
    let gpu = capped(WEBGPU_GRID_LIMIT);
    let limit = gpu.limits().max_compute_workgroups_per_dimension;
    let n = limit as usize * 256 + 300;
    let groups = n.div_ceil(256);
    assert!(groups > limit as usize);
    eprintln!(
        "{}",
        describe(&format!("add, gelu over {n}"), groups, limit)
    );
    let mut r = rng(2000);
    let a = random_host(&mut r, &[n], 8.0);
    let b = random_host(&mut r, &[n], 8.0);
    let (ga, gb) = (upload(&gpu, &a, "a"), upload(&gpu, &b, "b"));

    let mut cpu = nan_host(&[n]);
    reference::add(&a, &b, &mut cpu).expect("cpu");
    let y = nan_filled(&gpu, &[n], "y");
    run(&gpu, |rec| kernels::add(rec, &ga, &gb, &y));
    assert_close(
        &format!("add n={n}"),
        &read_f32(&gpu, &y),
        &cpu.data,
        0.0,
        0.0,
    );

    let mut cpu = nan_host(&[n]);
    reference::gelu(&a, &mut cpu).expect("cpu");
    let y = nan_filled(&gpu, &[n], "y");
    run(&gpu, |rec| kernels::gelu(rec, &ga, &y));
    assert_close(
        &format!("gelu n={n}"),
        &read_f32(&gpu, &y),
        &cpu.data,
        1e-6,
        1e-6,
    );
}

/// LayerNorm over CSWin-T's stage 1 at batch 21: 21 x 3,136 = 65,856 rows of 64 channels, one
/// workgroup per row: a 32,928 x 2 grid.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn layer_norm_cswin_stage1_batch21_past_65535_rows() {
    let gpu = capped(WEBGPU_GRID_LIMIT);
    let limit = gpu.limits().max_compute_workgroups_per_dimension;
    let (rows, c) = (21 * 56 * 56, 64);
    assert!(rows > limit as usize);
    eprintln!("{}", describe("layer_norm", rows, limit));
    let mut r = rng(2100);
    let x = random_host(&mut r, &[rows, c], 3.0);
    let gamma = random_host(&mut r, &[c], 1.5);
    let beta = random_host(&mut r, &[c], 0.2);
    let mut cpu = nan_host(&[rows, c]);
    reference::layer_norm(&x, None, &gamma, &beta, 1e-5, &mut cpu).expect("cpu");
    let y = nan_filled(&gpu, &[rows, c], "y");
    let (gx, gg, gb) = (
        upload(&gpu, &x, "x"),
        upload(&gpu, &gamma, "gamma"),
        upload(&gpu, &beta, "beta"),
    );
    run(&gpu, |rec| {
        kernels::layer_norm(rec, &gx, None, &gg, &gb, 1e-5, &y)
    });
    assert_close(
        &format!("layer_norm rows={rows} c={c}"),
        &read_f32(&gpu, &y),
        &cpu.data,
        2e-5,
        1e-5,
    );
}

/// A grid limit of 7: workgroup counts that split into 4 x 2, 5 x 2 and 7 x 7 with spare
/// workgroups, 7 x 7 exactly, and no split, for every kernel that spreads its grid; past
/// 7 x 7 the dispatch is refused (a 2-D grid holds limit² workgroups), never truncated.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn row_and_elementwise_kernels_on_a_grid_limit_of_7() {
    const LIMIT: u32 = 7;
    let gpu = capped(LIMIT);
    let ctx = &gpu;
    let mut seed = 2200;
    let mut next = || {
        seed += 1;
        rng(seed)
    };

    // Elementwise: 256 elements per workgroup.
    for n in [1000usize, 256 * 8, 256 * 8 + 1, 256 * 44 + 7, 256 * 49] {
        eprintln!(
            "{}",
            describe(&format!("add, gelu n={n}"), n.div_ceil(256), LIMIT)
        );
        let mut r = next();
        let (a, b) = (
            random_host(&mut r, &[n], 8.0),
            random_host(&mut r, &[n], 1.0),
        );
        let (ga, gb) = (upload(ctx, &a, "a"), upload(ctx, &b, "b"));
        let mut cpu = nan_host(&[n]);
        reference::add(&a, &b, &mut cpu).expect("cpu");
        let y = nan_filled(ctx, &[n], "y");
        run(ctx, |rec| kernels::add(rec, &ga, &gb, &y));
        assert_close(
            &format!("add n={n}"),
            &read_f32(ctx, &y),
            &cpu.data,
            0.0,
            0.0,
        );
        let mut cpu = nan_host(&[n]);
        reference::gelu(&a, &mut cpu).expect("cpu");
        let y = nan_filled(ctx, &[n], "y");
        run(ctx, |rec| kernels::gelu(rec, &ga, &y));
        assert_close(
            &format!("gelu n={n}"),
            &read_f32(ctx, &y),
            &cpu.data,
            1e-6,
            1e-6,
        );
    }

    // Row kernels: one workgroup per row.
    type Unary = (
        &'static str,
        fn(&mut Recorder<'_>, &Tensor, &Tensor) -> backbone::Result<()>,
        fn(&HostTensor, &mut HostTensor) -> backbone::Result<()>,
    );
    let unary: [Unary; 2] = [
        ("softmax", kernels::softmax, reference::softmax),
        (
            "l2_normalize",
            kernels::l2_normalize,
            reference::l2_normalize,
        ),
    ];
    for (rows, c) in [(5, 300), (8, 5), (9, 33), (45, 300), (49, 1)] {
        eprintln!(
            "{}",
            describe(&format!("row kernels {rows} x {c}"), rows, LIMIT)
        );
        let mut r = next();
        let x = random_host(&mut r, &[rows, c], 3.0);
        let res = random_host(&mut r, &[rows, c], 1.0);
        let gamma = random_host(&mut r, &[c], 1.5);
        let beta = random_host(&mut r, &[c], 0.2);
        let (gx, gres) = (upload(ctx, &x, "x"), upload(ctx, &res, "residual"));
        let (gg, gbeta) = (upload(ctx, &gamma, "gamma"), upload(ctx, &beta, "beta"));
        for (name, gpu_op, cpu_op) in unary {
            let mut cpu = nan_host(&[rows, c]);
            cpu_op(&x, &mut cpu).expect("cpu");
            let y = nan_filled(ctx, &[rows, c], "y");
            run(ctx, |rec| gpu_op(rec, &gx, &y));
            let what = format!("{name} rows={rows} c={c}");
            assert_close(&what, &read_f32(ctx, &y), &cpu.data, 1e-6, 1e-5);
        }
        for residual in [false, true] {
            let mut cpu = nan_host(&[rows, c]);
            let cpu_res = residual.then_some(&res);
            reference::layer_norm(&x, cpu_res, &gamma, &beta, 1e-5, &mut cpu).expect("cpu");
            let y = nan_filled(ctx, &[rows, c], "y");
            let gpu_res = residual.then_some(&gres);
            run(ctx, |rec| {
                kernels::layer_norm(rec, &gx, gpu_res, &gg, &gbeta, 1e-5, &y)
            });
            let what = format!("layer_norm rows={rows} c={c} residual={residual}");
            assert_close(&what, &read_f32(ctx, &y), &cpu.data, 2e-5, 1e-5);
        }
        let vocab = 20;
        let table = random_host(&mut r, &[vocab, c], 1.0);
        let ids: Vec<u32> = (0..rows).map(|i| (i * 7 % vocab) as u32).collect();
        let ids = HostTensor::new(&[rows], ids).expect("ids");
        let mut cpu = nan_host(&[rows, c]);
        reference::embedding(&ids, &table, &mut cpu).expect("cpu");
        let y = nan_filled(ctx, &[rows, c], "y");
        let (gids, gtable) = (upload_u32(ctx, &ids, "ids"), upload(ctx, &table, "table"));
        run(ctx, |rec| kernels::embedding(rec, &gids, &gtable, &y));
        let what = format!("embedding rows={rows} c={c}");
        assert_close(&what, &read_f32(ctx, &y), &cpu.data, 0.0, 0.0);

        // The fused BERT embeddings: ids [3, rows] into word, position and token-type tables.
        let (word, position, token_type) = (
            random_host(&mut r, &[vocab, c], 1.0),
            random_host(&mut r, &[rows + 2, c], 0.5),
            random_host(&mut r, &[2, c], 0.5),
        );
        let ids: Vec<u32> = (0..rows)
            .map(|i| (i * 7 % vocab) as u32)
            .chain((0..rows).map(|i| i as u32))
            .chain((0..rows).map(|i| (i % 2) as u32))
            .collect();
        let ids = HostTensor::new(&[3, rows], ids).expect("ids");
        let mut cpu = nan_host(&[rows, c]);
        let host_tables = EmbeddingTables {
            word: &word,
            position: &position,
            token_type: &token_type,
            gamma: &gamma,
            beta: &beta,
        };
        reference::bert_embeddings(&ids, &host_tables, 1e-12, &mut cpu).expect("cpu");
        let gpu_tables = [&word, &position, &token_type].map(|t| upload(ctx, t, "table"));
        let tables = EmbeddingTables {
            word: &gpu_tables[0],
            position: &gpu_tables[1],
            token_type: &gpu_tables[2],
            gamma: &gg,
            beta: &gbeta,
        };
        let y = nan_filled(ctx, &[rows, c], "y");
        let gids = upload_u32(ctx, &ids, "ids");
        run(ctx, |rec| {
            kernels::bert_embeddings(rec, &gids, &tables, 1e-12, &y)
        });
        let what = format!("bert_embeddings rows={rows} c={c}");
        assert_close(&what, &read_f32(ctx, &y), &cpu.data, 2e-5, 1e-5);
    }

    // mean_pool: one workgroup per 256 outputs (B x C).
    for (b, t, c) in [(3usize, 4, 700), (2, 3, 256 * 7), (5, 2, 256 * 9 - 10)] {
        eprintln!(
            "{}",
            describe(
                &format!("mean_pool {b} x {c}"),
                (b * c).div_ceil(256),
                LIMIT
            )
        );
        let mut r = next();
        let x = random_host(&mut r, &[b, t, c], 2.0);
        let mask: Vec<u32> = (0..b * t).map(|j| u32::from(j % t <= j / t)).collect();
        let mask = HostTensor::new(&[b, t], mask).expect("mask");
        let mut cpu = nan_host(&[b, c]);
        reference::mean_pool(&x, &mask, &mut cpu).expect("cpu");
        let y = nan_filled(ctx, &[b, c], "y");
        let (gx, gm) = (upload(ctx, &x, "x"), upload_u32(ctx, &mask, "mask"));
        run(ctx, |rec| kernels::mean_pool(rec, &gx, &gm, &y));
        let what = format!("mean_pool b={b} t={t} c={c}");
        assert_close(&what, &read_f32(ctx, &y), &cpu.data, 1e-6, 1e-5);
    }

    // Past limit² workgroups: an error naming the limit.
    let n = 256 * 49 + 1;
    let (a, y) = (nan_filled(ctx, &[n], "a"), nan_filled(ctx, &[n], "y"));
    let mut rec = Recorder::new(ctx);
    let err = kernels::gelu(&mut rec, &a, &y).unwrap_err();
    assert!(
        matches!(
            err,
            backbone::Error::Limit {
                limit_name: "max_compute_workgroups_per_dimension",
                ..
            }
        ),
        "{err}"
    );
}
