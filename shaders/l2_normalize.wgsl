// l2_normalize: y[r, :] = x[r, :] / max(||x[r, :]||_2, 1e-12), per row (torch's F.normalize,
// which sentence-transformers applies to pooled embeddings).
//   x: (rows, C) f32, row-major
//   y: (rows, C) f32, row-major
// One workgroup of 256 per row (grid spread over x and y).

struct Params {
    rows: u32,
    c: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn l2_normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let row = linear_group(wid, nwg);
    if (row >= params.rows) {
        return; // uniform: the whole workgroup leaves
    }
    let c = params.c;
    let base = row * c;

    var sq = 0.0;
    for (var i = lid; i < c; i += REDUCE_WG) {
        let v = x[base + i];
        sq += v * v;
    }
    let inv_norm = 1.0 / max(sqrt(workgroup_sum(lid, sq)), 1e-12);

    for (var i = lid; i < c; i += REDUCE_WG) {
        y[base + i] = x[base + i] * inv_norm;
    }
}
