// matmul_split_reduce: the second half of a split-K matmul (see matmul.wgsl, SPLITS > 1):
//   y[i] = epilogue(alpha * (partial[0, i] + partial[1, i] + ... + partial[splits - 1, i]))
// summed in split order (the same answer on every run), then matmul's epilogue: + bias[n],
// the activation ACT (0 none, 1 exact GELU, 2 tanh, 3 ReLU), + residual.
//   params:   total = rows * N outputs, N, splits, alpha
//   partial:  (splits, rows, N) f32, contiguous: each split's product over its range of K
//   bias:     (N) f32 (dummy when !HAS_BIAS)
//   residual: (rows, N) YT, contiguous (dummy when !HAS_RESIDUAL)
//   y:        (rows, N) YT (f32 or f16), contiguous
// One invocation per output, 256 per workgroup, grid spread over x and y.
// Specialisation: HAS_BIAS, HAS_RESIDUAL, ACT, YT.

struct Params {
    total: u32,
    n: u32,
    splits: u32,
    alpha: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> residual: array<YT>;
@group(0) @binding(4) var<storage, read_write> y: array<YT>;

@compute @workgroup_size(256)
fn matmul_split_reduce(@builtin(workgroup_id) wid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wid, nwg) * 256u + lid;
    if (i >= params.total) {
        return;
    }
    var sum = 0.0;
    for (var s = 0u; s < params.splits; s++) {
        sum += partial[s * params.total + i];
    }
    var v = params.alpha * sum;
    if (HAS_BIAS) {
        v += bias[i % params.n];
    }
    v = activate(v, ACT);
    if (HAS_RESIDUAL) {
        v += f32(residual[i]);
    }
    y[i] = YT(v);
}
