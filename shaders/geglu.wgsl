// geglu: GeGLU's gate, as ModernBERT's MLP applies it between its two projections:
//   y[r, i] = GELU(x[r, i]) * x[r, I + i]      (exact-erf GELU; `input, gate = chunk(2)`)
//   x: (rows, 2I) XT (f32 or f16 storage), row-major
//   y: (rows, I) YT (f32 or f16)
// One invocation per output element, 256 per workgroup, grid spread over x and y.
// Specialisation: XT, YT.

struct Params {
    rows: u32,
    i: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<XT>;
@group(0) @binding(2) var<storage, read_write> y: array<YT>;

@compute @workgroup_size(256)
fn geglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let e = linear_group(wid, nwg) * 256u + lid;
    if (e >= params.rows * params.i) {
        return;
    }
    let row = e / params.i;
    let col = e % params.i;
    let at = row * 2u * params.i + col;
    y[e] = YT(gelu_erf(f32(x[at])) * f32(x[at + params.i]));
}
