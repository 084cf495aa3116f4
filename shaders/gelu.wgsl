// gelu: y = 0.5 * x * (1 + erf(x / sqrt(2))), elementwise (exact-erf GELU, as PyTorch).
//   x: (n) f32
//   y: (n) f32
// One invocation per element, 256 per workgroup, grid spread over x and y.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn gelu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wid, nwg) * 256u + lid;
    if (i < params.n) {
        y[i] = gelu_erf(x[i]);
    }
}
