// layer_norm_subgroup: layer_norm (the same operands, parameters and result; see
// layer_norm.wgsl) with one subgroup per row, for adapters with subgroups:
//   x:        (rows, C) XT, row-major;  x4: the same buffer as vec4s (read when VEC)
//   residual: (rows, C) XT (dummy when !HAS_RESIDUAL);  residual4: the same as vec4s
//   gamma, beta: (C) f32
//   y:        (rows, C) YT
// A workgroup of 128 invocations owns ROWS consecutive rows; subgroup s takes rows s,
// s + num_subgroups, ... of them. Its lanes stride along the row (vec4 loads when VEC, i.e.
// C % 4 == 0) accumulating, in one pass, the sum and the sum of squares of s - shift (shift:
// the row's first value, so the variance E[d²] - E[d]² does not cancel), which one subgroupAdd
// reduces; a second pass normalises and writes. No workgroup memory and no barrier; any
// subgroup size works. Sums in f32 whatever the storage types.
// Specialisation: HAS_RESIDUAL, VEC, XT, YT.

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
@group(0) @binding(5) var<storage, read> x4: array<vec4<XT>>;
@group(0) @binding(6) var<storage, read> residual4: array<vec4<XT>>;
@group(0) @binding(7) var<storage, read_write> y: array<YT>;

const ROWS: u32 = 4u;

fn load(i: u32) -> f32 {
    if (HAS_RESIDUAL) {
        return f32(x[i]) + f32(residual[i]);
    }
    return f32(x[i]);
}

fn load4(i: u32) -> vec4<f32> {
    if (HAS_RESIDUAL) {
        return vec4<f32>(x4[i]) + vec4<f32>(residual4[i]);
    }
    return vec4<f32>(x4[i]);
}

@compute @workgroup_size(128)
fn layer_norm_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) sg_count: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
) {
    let first = linear_group(wid, nwg) * ROWS;
    let c = params.c;
    for (var r = sg; r < ROWS; r += sg_count) {
        let row = first + r;
        if (row >= params.rows) {
            break; // the same for every lane of the subgroup
        }
        let base = row * c;
        let shift = load(base);
        var sums = vec2<f32>(0.0);
        if (VEC) {
            for (var i = lane; i < c / 4u; i += lanes) {
                let d = load4(base / 4u + i) - vec4<f32>(shift);
                sums += vec2<f32>(dot(d, vec4<f32>(1.0)), dot(d, d));
            }
        } else {
            for (var i = lane; i < c; i += lanes) {
                let d = load(base + i) - shift;
                sums += vec2<f32>(d, d * d);
            }
        }
        let total = subgroupAdd(sums) / f32(c);
        let mean = shift + total.x;
        let inv_std = inverseSqrt(max(total.y - total.x * total.x, 0.0) + params.eps);
        for (var i = lane; i < c; i += lanes) {
            y[base + i] = YT((load(base + i) - mean) * inv_std * gamma[i] + beta[i]);
        }
    }
}
