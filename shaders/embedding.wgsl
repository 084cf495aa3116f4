// embedding: y[i, :] = table[ids[i], :] (row gather).
//   ids:   (n) u32, every id < vocab (checked on the host; an id >= vocab writes zeros here
//          so the GPU never reads out of bounds)
//   table: (vocab, C) f32, row-major
//   y:     (n, C) f32, row-major
// One workgroup of 256 per output row (grid spread over x and y), striding over C.

struct Params {
    n: u32,
    c: u32,
    vocab: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let row = linear_group(wid, nwg);
    if (row >= params.n) {
        return;
    }
    let id = ids[row];
    let valid = id < params.vocab;
    for (var c = lid; c < params.c; c += 256u) {
        var v = 0.0;
        if (valid) {
            v = table[id * params.c + c];
        }
        y[row * params.c + c] = v;
    }
}
