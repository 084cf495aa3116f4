// mean_pool: y[b, c] = sum_t mask[b, t] * x[b, t, c] / max(sum_t mask[b, t], 1e-9)
// (sentence-transformers' mean pooling over real tokens).
//   x:    (B, T, C) XT (f32 or f16 storage), row-major; sums in f32
//   mask: (B, T) u32, nonzero for a real token, 0 for padding
//   y:    (B, C) f32, row-major
// Specialisation: XT. One invocation per output (b, c), 256 per workgroup, grid spread over x and y.

struct Params {
    batch: u32,
    t: u32,
    c: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<XT>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn mean_pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wid, nwg) * 256u + lid;
    if (i >= params.batch * params.c) {
        return;
    }
    let b = i / params.c;
    let c = i % params.c;
    var sum = 0.0;
    var count = 0.0;
    for (var t = 0u; t < params.t; t++) {
        let m = select(0.0, 1.0, mask[b * params.t + t] != 0u);
        sum += m * f32(x[(b * params.t + t) * params.c + c]);
        count += m;
    }
    y[i] = sum / max(count, 1e-9);
}
