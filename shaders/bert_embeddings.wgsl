// bert_embeddings: BERT's embedding block in one pass. For each token row r,
//   s = (word[ids[0, r]] + position[ids[1, r]]) + token_type[ids[2, r]]
//   y[r] = (s - mean(s)) / sqrt(var(s) + eps) * gamma + beta
// (three gathers, the sums and LayerNorm: what embedding x3, add and layer_norm did in five
// passes with four intermediate [rows, C] tensors). Biased variance, two passes over the row,
// as layer_norm.
//   ids:        (3, rows) u32: token ids, then position ids, then token-type ids; an id past
//               its table contributes zeros (ids are checked on the host), so the GPU never
//               reads out of bounds
//   word:       (vocab, C) TT (f32 or f16 storage), row-major
//   position:   (positions, C) TT, row-major
//   token_type: (types, C) TT, row-major
//   gamma:      (C) f32
//   beta:       (C) f32
//   y:          (rows, C) YT (f32 or f16), row-major
// Sums and the normalisation are f32 whatever the storage types. Specialisation: TT, YT.
// One workgroup of 256 per row (grid spread over x and y), striding over C.

struct Params {
    rows: u32,
    c: u32,
    eps: f32,
    vocab: u32,
    positions: u32,
    types: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> word: array<TT>;
@group(0) @binding(3) var<storage, read> position: array<TT>;
@group(0) @binding(4) var<storage, read> token_type: array<TT>;
@group(0) @binding(5) var<storage, read> gamma: array<f32>;
@group(0) @binding(6) var<storage, read> beta: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<YT>;

// Row `id` of a table with `n` rows, element i; zero for an id out of range.
fn gather_word(id: u32, i: u32) -> f32 {
    return select(0.0, f32(word[id * params.c + i]), id < params.vocab);
}
fn gather_position(id: u32, i: u32) -> f32 {
    return select(0.0, f32(position[id * params.c + i]), id < params.positions);
}
fn gather_type(id: u32, i: u32) -> f32 {
    return select(0.0, f32(token_type[id * params.c + i]), id < params.types);
}

@compute @workgroup_size(256)
fn bert_embeddings(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let row = linear_group(wid, nwg);
    if (row >= params.rows) {
        return; // uniform: the whole workgroup leaves
    }
    let c = params.c;
    let tok = ids[row];
    let pos = ids[params.rows + row];
    let typ = ids[2u * params.rows + row];

    var sum = 0.0;
    for (var i = lid; i < c; i += REDUCE_WG) {
        sum += (gather_word(tok, i) + gather_position(pos, i)) + gather_type(typ, i);
    }
    let mean = workgroup_sum(lid, sum) / f32(c);

    var sq = 0.0;
    for (var i = lid; i < c; i += REDUCE_WG) {
        let d = (gather_word(tok, i) + gather_position(pos, i)) + gather_type(typ, i) - mean;
        sq += d * d;
    }
    let inv_std = inverseSqrt(workgroup_sum(lid, sq) / f32(c) + params.eps);

    let base = row * c;
    for (var i = lid; i < c; i += REDUCE_WG) {
        let s = (gather_word(tok, i) + gather_position(pos, i)) + gather_type(typ, i);
        y[base + i] = YT((s - mean) * inv_std * gamma[i] + beta[i]);
    }
}
