// layer_norm: y = (s - mean(s)) / sqrt(var(s) + eps) * gamma + beta, per row, where
// s = x + residual when HAS_RESIDUAL (the post-norm transformer's "add & norm") and s = x
// otherwise. Biased variance, two passes over the row (mean, then squared deviations), as
// PyTorch computes it.
//   x:        (rows, C) XT (f32 or f16 storage), row-major
//   residual: (rows, C) XT, row-major (bound to a dummy buffer when !HAS_RESIDUAL)
//   gamma:    (C) f32
//   beta:     (C) f32
//   y:        (rows, C) YT (f32 or f16), row-major
// Sums and the normalisation are f32 whatever the storage types.
// Specialisation: HAS_RESIDUAL, XT, YT. One workgroup of 256 per row (grid spread over x and y).

struct Params {
    rows: u32,
    c: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<XT>;
@group(0) @binding(2) var<storage, read> residual: array<XT>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<YT>;

fn load(i: u32) -> f32 {
    if (HAS_RESIDUAL) {
        return f32(x[i]) + f32(residual[i]);
    }
    return f32(x[i]);
}

@compute @workgroup_size(256)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = linear_group(wid, nwg);
    if (row >= params.rows) {
        return; // uniform: the whole workgroup leaves
    }
    let c = params.c;
    let base = row * c;

    var sum = 0.0;
    for (var i = lid; i < c; i += REDUCE_WG) {
        sum += load(base + i);
    }
    let mean = workgroup_sum(lid, sum) / f32(c);

    var sq = 0.0;
    for (var i = lid; i < c; i += REDUCE_WG) {
        let d = load(base + i) - mean;
        sq += d * d;
    }
    let inv_std = inverseSqrt(workgroup_sum(lid, sq) / f32(c) + params.eps);

    for (var i = lid; i < c; i += REDUCE_WG) {
        y[base + i] = YT((load(base + i) - mean) * inv_std * gamma[i] + beta[i]);
    }
}
