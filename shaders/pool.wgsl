// pool: one of sentence-transformers' token poolings (Pooling._forward_padded) of x into the
// columns [col0, col0 + C) of y, so that several modes concatenate as sentence-transformers
// concatenates them:
//   MODE 0 cls:          x at the first token with keep != 0 (token 0 when there is none)
//   MODE 1 max:          max over tokens with keep != 0 (-inf when there is none)
//   MODE 2 mean:         sum_t keep*x / max(count, 1e-9)
//   MODE 3 mean_sqrt_len_tokens: sum_t keep*x / sqrt(max(count, 1e-9))
//   MODE 4 weightedmean: weights w_t = (t + 1 - first real token of mask) * keep_t;
//                        sum_t w_t*x / max(sum_t w_t, 1e-9)
//   MODE 5 lasttoken:    x at the last token with keep != 0 (zeros when there is none)
//   x:    (B, T, C) XT (f32 or f16 storage), row-major; sums in f32
//   mask: (B, T) u32, the attention mask (weightedmean's left-padding offset)
//   keep: (B, T) u32, the tokens pooled: the attention mask, with the prompt's tokens zeroed
//         when the folder's include_prompt is false
//   y:    (B, ldy) f32, row-major
// Specialisation: XT, MODE. One invocation per output (b, c), 256 per workgroup, grid spread
// over x and y.

struct Params {
    batch: u32,
    t: u32,
    c: u32,
    ldy: u32,
    col0: u32,
    // -inf, from the host: browsers' WGSL compilers reject an infinite constant.
    neg_inf: f32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<XT>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> keep: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wid, nwg) * 256u + lid;
    if (i >= params.batch * params.c) {
        return;
    }
    let b = i / params.c;
    let c = i % params.c;
    let t_len = params.t;
    let row = b * t_len;
    var value = 0.0;
    if (MODE == 0u || MODE == 5u) {
        var at = 0u;
        var found = false;
        for (var t = 0u; t < t_len; t++) {
            if (keep[row + t] != 0u && (MODE == 5u || !found)) {
                at = t;
                found = true;
            }
        }
        if (MODE == 5u && !found) {
            value = 0.0;
        } else {
            value = f32(x[(row + at) * params.c + c]);
        }
    } else if (MODE == 1u) {
        value = params.neg_inf; // as masked_fill(-inf).max()
        for (var t = 0u; t < t_len; t++) {
            if (keep[row + t] != 0u) {
                value = max(value, f32(x[(row + t) * params.c + c]));
            }
        }
    } else {
        var start = 0u; // first real token of the attention mask (argmax), for weightedmean
        if (MODE == 4u) {
            for (var t = t_len; t > 0u; t--) {
                if (mask[row + t - 1u] != 0u) {
                    start = t - 1u;
                }
            }
        }
        var sum = 0.0;
        var weight = 0.0;
        for (var t = 0u; t < t_len; t++) {
            var w = select(0.0, 1.0, keep[row + t] != 0u);
            if (MODE == 4u) {
                w *= f32(t + 1u) - f32(start);
            }
            sum += w * f32(x[(row + t) * params.c + c]);
            weight += w;
        }
        weight = max(weight, 1e-9);
        if (MODE == 3u) {
            weight = sqrt(weight);
        }
        value = sum / weight;
    }
    y[b * params.ldy + params.col0 + c] = value;
}
