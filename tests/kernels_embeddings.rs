//! The fused BERT embedding kernel against its CPU twin (shapes below one workgroup, off the
//! multiple, BERT-base size; outputs prefilled with NaN), against the five passes it replaces,
//! and with ids past their tables.

mod common;

use backbone::kernels::{self, EmbeddingTables};
use backbone::reference::{self, HostTensor};
use backbone::{Recorder, Tensor};
use common::*;

struct Case {
    ids: HostTensor<u32>,
    word: HostTensor,
    position: HostTensor,
    token_type: HostTensor,
    gamma: HostTensor,
    beta: HostTensor,
}

impl Case {
    fn new(seed: u64, rows: usize, c: usize, sizes: [usize; 3]) -> Self {
        let mut r = rng(seed);
        let mut ids = Vec::with_capacity(3 * rows);
        for (k, &n) in sizes.iter().enumerate() {
            ids.extend((0..rows).map(|i| ((i * 7919 + k * 31 + seed as usize) % n) as u32));
        }
        Self {
            ids: HostTensor::new(&[3, rows], ids).expect("ids"),
            word: random_host(&mut r, &[sizes[0], c], 1.0),
            position: random_host(&mut r, &[sizes[1], c], 0.5),
            token_type: random_host(&mut r, &[sizes[2], c], 0.5),
            gamma: random_host(&mut r, &[c], 1.5),
            beta: random_host(&mut r, &[c], 0.2),
        }
    }

    fn tables(&self) -> EmbeddingTables<'_, HostTensor> {
        EmbeddingTables {
            word: &self.word,
            position: &self.position,
            token_type: &self.token_type,
            gamma: &self.gamma,
            beta: &self.beta,
        }
    }

    /// The GPU result, its output buffer prefilled with NaN.
    fn gpu(&self, ids: &HostTensor<u32>) -> Vec<f32> {
        let ctx = ctx();
        let up = |t: &HostTensor, label| upload(ctx, t, label);
        let (word, position, token_type) = (
            up(&self.word, "word"),
            up(&self.position, "position"),
            up(&self.token_type, "token_type"),
        );
        let (gamma, beta) = (up(&self.gamma, "gamma"), up(&self.beta, "beta"));
        let tables = EmbeddingTables {
            word: &word,
            position: &position,
            token_type: &token_type,
            gamma: &gamma,
            beta: &beta,
        };
        let rows = ids.shape[1];
        let y = nan_filled(ctx, &[rows, self.gamma.numel()], "y");
        let mut rec = Recorder::new(ctx);
        kernels::bert_embeddings(&mut rec, &upload_u32(ctx, ids, "ids"), &tables, 1e-12, &y)
            .expect("record");
        rec.submit_blocking().expect("submit");
        read_f32(ctx, &y)
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn bert_embeddings_matches_twin() {
    // One row and C below the workgroup; C off the multiple; BERT-base: 2 x 128 tokens of 768.
    let shapes = [
        (1, 7, [11, 5, 2]),
        (65, 300, [1000, 70, 3]),
        (256, 768, [30522, 512, 2]),
    ];
    for (i, (rows, c, sizes)) in shapes.into_iter().enumerate() {
        let case = Case::new(40 + i as u64, rows, c, sizes);
        let mut cpu = nan_host(&[rows, c]);
        reference::bert_embeddings(&case.ids, &case.tables(), 1e-12, &mut cpu).expect("twin");
        let what = format!("bert_embeddings rows={rows} c={c}");
        // LayerNorm outputs are O(1): the f32 sums and reductions differ from the f64 twin by a
        // few ulps of the row's magnitude.
        assert_close(&what, &case.gpu(&case.ids), &cpu.data, 2e-5, 1e-5);
    }
}

#[test]
fn bert_embeddings_twin_equals_the_five_passes() {
    // embedding x3, add, layer_norm: the composition the fused kernel replaces, on the twins.
    let (rows, c) = (37, 96);
    let case = Case::new(7, rows, c, [500, 64, 2]);
    let mut fused = nan_host(&[rows, c]);
    reference::bert_embeddings(&case.ids, &case.tables(), 1e-12, &mut fused).expect("fused");
    let part = |k: usize| {
        let ids = case.ids.data[k * rows..(k + 1) * rows].to_vec();
        HostTensor::new(&[rows], ids).expect("ids")
    };
    let gather = |k: usize, table: &HostTensor| {
        let mut y = nan_host(&[rows, c]);
        reference::embedding(&part(k), table, &mut y).expect("embedding");
        y
    };
    let (w, p, t) = (
        gather(0, &case.word),
        gather(1, &case.position),
        gather(2, &case.token_type),
    );
    let mut sum = nan_host(&[rows, c]);
    reference::add(&w, &p, &mut sum).expect("add");
    let mut five = nan_host(&[rows, c]);
    reference::layer_norm(&sum, Some(&t), &case.gamma, &case.beta, 1e-12, &mut five)
        .expect("layer_norm");
    // The two differ only by the f32 rounding of word + position in the five-pass form.
    assert_close("fused vs five passes", &fused.data, &five.data, 1e-5, 1e-5);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn bert_embeddings_ids_past_a_table() {
    let (rows, c) = (4, 40);
    let case = Case::new(3, rows, c, [50, 8, 2]);
    // The twin refuses, naming which ids.
    let mut bad = case.ids.clone();
    bad.data[rows + 2] = 8; // a position id past the 8-row table
    let mut cpu = nan_host(&[rows, c]);
    let err = reference::bert_embeddings(&bad, &case.tables(), 1e-12, &mut cpu)
        .expect_err("position id 8 of 8");
    assert!(err.to_string().contains("position ids"), "{err}");
    // The GPU reads zeros for that row's position (never out of bounds): the result equals the
    // twin's with an all-zero position row.
    let mut zero_row = case.position.clone();
    zero_row.data.extend(std::iter::repeat_n(0.0, c));
    zero_row.shape[0] += 1;
    let tables = EmbeddingTables {
        position: &zero_row,
        ..case.tables()
    };
    reference::bert_embeddings(&bad, &tables, 1e-12, &mut cpu).expect("twin with a zero row");
    assert_close("id past the table", &case.gpu(&bad), &cpu.data, 2e-5, 1e-5);
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn bert_embeddings_shape_errors_name_the_argument() {
    let ctx = ctx();
    let case = Case::new(5, 3, 16, [10, 4, 2]);
    let up = |t: &HostTensor, label| upload(ctx, t, label);
    let (word, position, token_type) = (
        up(&case.word, "word"),
        up(&case.position, "position"),
        up(&case.token_type, "token_type"),
    );
    let (gamma, beta) = (up(&case.gamma, "gamma"), up(&case.beta, "beta"));
    let wrong_width = up(&random_host(&mut rng(1), &[4, 15], 1.0), "narrow");
    let tables = EmbeddingTables {
        word: &word,
        position: &wrong_width,
        token_type: &token_type,
        gamma: &gamma,
        beta: &beta,
    };
    let ids = upload_u32(ctx, &case.ids, "ids");
    let y: Tensor = nan_filled(ctx, &[3, 16], "y");
    let mut rec = Recorder::new(ctx);
    let err = kernels::bert_embeddings(&mut rec, &ids, &tables, 1e-12, &y).expect_err("width");
    assert!(err.to_string().contains("`position`"), "{err}");
    let tables = EmbeddingTables {
        position: &position,
        ..tables
    };
    let flat = upload_u32(
        ctx,
        &HostTensor::new(&[9], vec![0; 9]).expect("ids"),
        "flat",
    );
    let err = kernels::bert_embeddings(&mut rec, &flat, &tables, 1e-12, &y).expect_err("ids");
    assert!(err.to_string().contains("`ids`"), "{err}");
}
