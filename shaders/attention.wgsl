// attention: fused multi-head self-attention, flash-style (online softmax, no score matrix in
// memory), reading Q, K and V straight from the fused QKV projection and writing the merged
// heads, with the Hugging Face padding mask.
//   qkv:  (B, T, 3C) XT (f32 or f16 storage), row-major; for head h, q = [.., h*D .. (h+1)*D), k the same at C + h*D,
//         v at 2C + h*D, with C = H * D
//   mask: (B, T) u32; key t of batch entry b is attended to when mask[b, t] != 0. A masked
//         key gets the additive bias f32::MIN, as Hugging Face adds torch.finfo(float32).min
//         (never -inf: a fully masked row averages V uniformly instead of becoming NaN)
//   out:  (B, T, C) YT (f32 or f16), row-major; heads merged: out[b, t, h*D + d]
// scores = (q · k) * scale + bias, softmax over keys, out = softmax · V.
//
// A workgroup owns BQ = 64 consecutive queries of one (batch, head): grid (ceil(T/64), H, B).
// Each invocation keeps one query row and its output accumulator in registers; the
// workgroup walks the keys in tiles of KV_TILE, staging K and V tiles (and the mask bias) in
// workgroup memory (2 * KV_TILE * HEAD_DIM floats), and per tile rescales each query's
// running max, sum and accumulator once.
// Scores, softmax state and accumulators are f32 whatever the storage types.
// Specialisation: HEAD_DIM (D), KV_TILE, XT, YT.

struct Params {
    batch: u32,
    t: u32,
    heads: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<XT>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<YT>;

const BQ: u32 = 64u;
const MASKED: f32 = F32_LOWEST; // torch.finfo(torch.float32).min

// K and V tiles in the storage type of qkv: f16 storage halves this workgroup memory.
var<workgroup> k_tile: array<XT, KV_TILE * HEAD_DIM>;
var<workgroup> v_tile: array<XT, KV_TILE * HEAD_DIM>;
var<workgroup> bias_tile: array<f32, KV_TILE>;

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = params.t;
    let c = params.heads * HEAD_DIM;
    let b = wid.z;
    let h = wid.y;
    let query = wid.x * BQ + lid;
    let has_query = query < t;
    let row_stride = 3u * c;

    var q: array<f32, HEAD_DIM>;
    var acc: array<f32, HEAD_DIM>;
    if (has_query) {
        let q_at = (b * t + query) * row_stride + h * HEAD_DIM;
        for (var d = 0u; d < HEAD_DIM; d++) {
            q[d] = f32(qkv[q_at + d]);
        }
    }
    for (var d = 0u; d < HEAD_DIM; d++) {
        acc[d] = 0.0;
    }
    var running_max = MASKED;
    var running_sum = 0.0;

    for (var k0 = 0u; k0 < t; k0 += KV_TILE) {
        let keys = min(KV_TILE, t - k0);
        for (var l = lid; l < keys * HEAD_DIM; l += BQ) {
            let j = l / HEAD_DIM;
            let d = l % HEAD_DIM;
            let at = (b * t + k0 + j) * row_stride + h * HEAD_DIM + d;
            k_tile[l] = qkv[at + c];
            v_tile[l] = qkv[at + 2u * c];
        }
        for (var j = lid; j < keys; j += BQ) {
            bias_tile[j] = select(MASKED, 0.0, mask[b * t + k0 + j] != 0u);
        }
        workgroupBarrier();

        if (has_query) {
            // Scores of this tile, then one rescale of the running state per tile.
            var scores: array<f32, KV_TILE>;
            var tile_max = MASKED;
            for (var j = 0u; j < keys; j++) {
                var dot = 0.0;
                for (var d = 0u; d < HEAD_DIM; d++) {
                    dot = fma(q[d], f32(k_tile[j * HEAD_DIM + d]), dot);
                }
                scores[j] = dot * params.scale + bias_tile[j];
                tile_max = max(tile_max, scores[j]);
            }
            let new_max = max(running_max, tile_max);
            let correction = exp(running_max - new_max);
            running_sum *= correction;
            for (var d = 0u; d < HEAD_DIM; d++) {
                acc[d] *= correction;
            }
            for (var j = 0u; j < keys; j++) {
                let p = exp(scores[j] - new_max);
                running_sum += p;
                for (var d = 0u; d < HEAD_DIM; d++) {
                    acc[d] = fma(p, f32(v_tile[j * HEAD_DIM + d]), acc[d]);
                }
            }
            running_max = new_max;
        }
        workgroupBarrier();
    }

    if (has_query) {
        let inv = 1.0 / running_sum;
        let out_at = (b * t + query) * c + h * HEAD_DIM;
        for (var d = 0u; d < HEAD_DIM; d++) {
            out[out_at + d] = YT(acc[d] * inv);
        }
    }
}
