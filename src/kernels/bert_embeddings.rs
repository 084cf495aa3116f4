//! BERT's embedding block fused: three gathers, their sum and LayerNorm in one pass.

use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel, Spec, grid_1d};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::{DType, Tensor, check_dtype, check_float};

/// The tables of BERT's embedding block, on the GPU (`T = Tensor`) or the host.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingTables<'a, T> {
    /// [vocab, C]
    pub word: &'a T,
    /// [positions, C]
    pub position: &'a T,
    /// [types, C]
    pub token_type: &'a T,
    /// LayerNorm weight and bias, [C] each.
    pub gamma: &'a T,
    pub beta: &'a T,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    eps: f32,
    vocab: u32,
    positions: u32,
    types: u32,
    _pad: [u32; 2],
}

/// Shapes shared by the kernel and its twin: `ids` [3, rows] (token, position and token-type
/// ids), tables [*, C], `y` with `rows x C` elements and last dimension C. Returns
/// (rows, C, [vocab, positions, types]).
pub fn bert_embeddings_dims(
    ids: &[usize],
    tables: [&[usize]; 3],
    norm: [&[usize]; 2],
    y: &[usize],
) -> Result<(usize, usize, [usize; 3])> {
    let shape_error = |arg: &'static str, expected: String, found: &[usize]| Error::Shape {
        op: "bert_embeddings",
        arg,
        expected,
        found: found.to_vec(),
    };
    let &[3, rows] = ids else {
        return Err(shape_error("ids", "[3, rows]".into(), ids));
    };
    let &[vocab, c] = tables[0] else {
        return Err(shape_error("word", "[vocab, C]".into(), tables[0]));
    };
    let mut sizes = [vocab, 0, 0];
    for (k, (arg, t)) in [("position", tables[1]), ("token_type", tables[2])]
        .into_iter()
        .enumerate()
    {
        match *t {
            [n, tc] if tc == c => sizes[k + 1] = n,
            _ => return Err(shape_error(arg, format!("[rows, {c}]"), t)),
        }
    }
    for (arg, t) in [("gamma", norm[0]), ("beta", norm[1])] {
        if t != [c] {
            return Err(shape_error(arg, format!("[{c}]"), t));
        }
    }
    if y.last() != Some(&c) || y.iter().product::<usize>() != rows * c {
        return Err(shape_error("y", format!("{rows} rows of {c}"), y));
    }
    Ok((rows, c, sizes))
}

/// Specialisation: the storage types of the three tables and of `y`.
pub(super) fn spec(f16: (bool, bool)) -> Spec {
    Spec::new().storage("TT", f16.0).storage("YT", f16.1)
}

/// `y = LayerNorm((word[ids[0]] + position[ids[1]]) + token_type[ids[2]])` per row, as BERT's
/// embedding block (and its five separate passes) computes it. Ids past a table contribute
/// zeros on the GPU: check them on the host with [`super::check_ids`].
pub fn bert_embeddings(
    rec: &mut Recorder<'_>,
    ids: &Tensor,
    tables: &EmbeddingTables<'_, Tensor>,
    eps: f32,
    y: &Tensor,
) -> Result<()> {
    check_dtype("bert_embeddings", "ids", ids, DType::U32)?;
    let ctx = rec.context();
    let f16 = (
        check_float(ctx, "bert_embeddings", "word", tables.word)?,
        check_float(ctx, "bert_embeddings", "y", y)?,
    );
    let named = [
        ("position", tables.position, tables.word.dtype()),
        ("token_type", tables.token_type, tables.word.dtype()),
        ("gamma", tables.gamma, DType::F32),
        ("beta", tables.beta, DType::F32),
    ];
    for (arg, t, dtype) in named {
        check_dtype("bert_embeddings", arg, t, dtype)?;
    }
    let (rows, c, [vocab, positions, types]) = bert_embeddings_dims(
        ids.shape(),
        [
            tables.word.shape(),
            tables.position.shape(),
            tables.token_type.shape(),
        ],
        [tables.gamma.shape(), tables.beta.shape()],
        y.shape(),
    )?;
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::Argument {
            op: "bert_embeddings",
            arg: "eps",
            reason: format!("{eps} is not a positive finite number"),
        });
    }
    let params = Params {
        rows: rows as u32,
        c: c as u32,
        eps,
        vocab: vocab as u32,
        positions: positions as u32,
        types: types as u32,
        _pad: [0; 2],
    };
    rec.dispatch(Dispatch {
        kernel: Kernel::Embeddings,
        spec: spec(f16),
        params: bytemuck::bytes_of(&params),
        buffers: &[
            ids.buffer(),
            tables.word.buffer(),
            tables.position.buffer(),
            tables.token_type.buffer(),
            tables.gamma.buffer(),
            tables.beta.buffer(),
            y.buffer(),
        ],
        groups: grid_1d(rec.context(), rows as u32),
        // ids, three gathered rows and the norm's parameters read; one row written.
        traffic: Traffic {
            read: (4 * 3 * rows + 3 * rows * c * tables.word.dtype().size() + 4 * 2 * c) as u64,
            written: (rows * c * y.dtype().size()) as u64,
        },
    })
}
