// rotary: rotary position embedding (RoPE, `rotate_half` form) of the query and key heads of a
// fused QKV projection; values are copied unchanged:
//   for head h and i < D/2, with (c, s) = table[0 / 1, t, i]:
//     out[q_i]       = q_i * c - q_{i+D/2} * s
//     out[q_{i+D/2}] = q_{i+D/2} * c + q_i * s          (the same for k)
//   qkv:   (B, T, 3C) XT (f32 or f16 storage), C = H * D, q at [0, C), k at [C, 2C), v at [2C, 3C)
//   table: (2, T, D/2) f32: cos then sin of position t times frequency i (computed on the host
//          in f32 as transformers does, so long positions keep their precision)
//   out:   (B, T, 3C) YT (f32 or f16)
// One invocation per output element, 256 per workgroup, grid spread over x and y.
// Specialisation: XT, YT.

struct Params {
    rows: u32,
    t: u32,
    c: u32,
    head_dim: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<XT>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<YT>;

@compute @workgroup_size(256)
fn rotary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let width = 3u * params.c;
    let e = linear_group(wid, nwg) * 256u + lid;
    if (e >= params.rows * width) {
        return;
    }
    let row = e / width;
    let col = e % width;
    if (col >= 2u * params.c) {
        out[e] = YT(f32(qkv[e]));
        return;
    }
    let d = params.head_dim;
    let half = d / 2u;
    let i = col % d;
    let pos = row % params.t;
    let j = i % half;
    let c = table[pos * half + j];
    let s = table[(params.t + pos) * half + j];
    let x = f32(qkv[e]);
    if (i < half) {
        out[e] = YT(x * c - f32(qkv[e + half]) * s);
    } else {
        out[e] = YT(x * c + f32(qkv[e - half]) * s);
    }
}
