// softmax: y[r, :] = exp(x[r, :] - max) / sum(exp(x[r, :] - max)), per row.
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
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = linear_group(wid, nwg);
    if (row >= params.rows) {
        return; // uniform: the whole workgroup leaves
    }
    let c = params.c;
    let base = row * c;

    var m = F32_LOWEST;
    for (var i = lid; i < c; i += REDUCE_WG) {
        m = max(m, x[base + i]);
    }
    let row_max = workgroup_max(lid, m);

    var sum = 0.0;
    for (var i = lid; i < c; i += REDUCE_WG) {
        sum += exp(x[base + i] - row_max);
    }
    let inv_sum = 1.0 / workgroup_sum(lid, sum);

    for (var i = lid; i < c; i += REDUCE_WG) {
        y[base + i] = exp(x[base + i] - row_max) * inv_sum;
    }
}
