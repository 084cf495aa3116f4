// attention: fused multi-head self-attention in the flash-attention-2 structure (online softmax,
// no score matrix in memory), reading Q, K and V straight from the fused QKV projection and
// writing the merged heads, with the Hugging Face padding mask.
//   qkv:  (B, T, 3C) XT (f32 or f16 storage), row-major; for head h, q = [.., h*D .. (h+1)*D), k the same at C + h*D,
//         v at 2C + h*D, with C = H * D
//   mask: (B, T) u32; key t of batch entry b is attended to when mask[b, t] != 0. A masked
//         key gets the additive bias f32::MIN, as Hugging Face adds torch.finfo(float32).min
//         (never -inf: a fully masked row averages V uniformly instead of becoming NaN)
//   rel_bias: (H, 2T - 1) f32 when HAS_REL_BIAS (MPNet's relative position bias): head h adds
//         rel_bias[h, (k - q) + T - 1] to the score of query q and key k (a dummy otherwise)
//   out:  (B, T, C) YT (f32 or f16), row-major; heads merged: out[b, t, h*D + d]
// scores = (q · k) * scale [+ rel_bias] + mask bias (f32::MIN instead past the local window
// when params.window > 0), softmax over keys, out = softmax · V.
//
// A workgroup of 64 invocations owns BQ consecutive queries of one (batch, head): grid
// (ceil(T/BQ), H, B). The Q tile stays in workgroup memory; the keys are walked in tiles of
// KV_TILE. Per key tile, as tile products on an 8x8 grid of invocations:
//   1. K tile -> workgroup memory; S = Q·Kᵀ (BQ x KV_TILE): each invocation computes a
//      BQ/8 x KV_TILE/8 register block (rows tr + 8i, keys tc + 8j), scaled and biased into S;
//   2. V tile -> the same workgroup memory while invocations 0..BQ each update one row's
//      running max and sum and turn its scores into probabilities P (online softmax);
//   3. O = O·correction + P·V: each invocation owns a BQ/8 x ceil(D/8) register block of O
//      (rows tr + 8i, columns tc + 8j).
// No invocation holds a row of D values; K/V tiles are kept in the storage type of qkv (f16
// halves them); rows are padded by one element against bank conflicts. Scores, softmax state and
// accumulators are f32 whatever the storage types.
// Specialisation: HEAD_DIM (D), BQ, KV_TILE (multiples of 8; see `attention::tiles`), HAS_REL_BIAS,
// XT, YT.

struct Params {
    batch: u32,
    t: u32,
    heads: u32,
    scale: f32,
    // ModernBERT's local attention: keys farther than `window` from the query are masked
    // (0: every key).
    window: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<XT>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> rel_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<YT>;

const WG: u32 = 64u;
const RQ: u32 = BQ / 8u; // query rows per invocation
const RK: u32 = KV_TILE / 8u; // keys per invocation in S
const DC: u32 = (HEAD_DIM + 7u) / 8u; // output columns per invocation
const ROW: u32 = HEAD_DIM + 1u; // padded row of the Q and K/V tiles
const MASKED: f32 = F32_LOWEST; // torch.finfo(torch.float32).min

var<workgroup> q_tile: array<XT, BQ * ROW>;
var<workgroup> kv_tile: array<XT, KV_TILE * ROW>;
var<workgroup> s_tile: array<f32, BQ * KV_TILE>;
var<workgroup> bias_tile: array<f32, KV_TILE>;
var<workgroup> row_scale: array<f32, BQ>;

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = params.t;
    let c = params.heads * HEAD_DIM;
    let b = wid.z;
    let q0 = wid.x * BQ;
    let row_stride = 3u * c;
    let head_at = b * t * row_stride + wid.y * HEAD_DIM; // q of token 0 of this (batch, head)
    let tr = lid / 8u;
    let tc = lid % 8u;

    for (var l = lid; l < BQ * HEAD_DIM; l += WG) {
        let r = l / HEAD_DIM;
        let d = l % HEAD_DIM;
        var v = XT(0.0);
        if (q0 + r < t) {
            v = qkv[head_at + (q0 + r) * row_stride + d];
        }
        q_tile[r * ROW + d] = v;
    }

    var o: array<f32, RQ * DC>;
    for (var i = 0u; i < RQ * DC; i++) {
        o[i] = 0.0;
    }
    // Softmax state of row `lid` (invocations 0..BQ).
    var running_max = MASKED;
    var running_sum = 0.0;

    for (var k0 = 0u; k0 < t; k0 += KV_TILE) {
        let keys = min(KV_TILE, t - k0);
        for (var l = lid; l < keys * HEAD_DIM; l += WG) {
            let j = l / HEAD_DIM;
            let d = l % HEAD_DIM;
            kv_tile[j * ROW + d] = qkv[head_at + (k0 + j) * row_stride + c + d];
        }
        for (var j = lid; j < keys; j += WG) {
            bias_tile[j] = select(MASKED, 0.0, mask[b * t + k0 + j] != 0u);
        }
        workgroupBarrier();

        // 1. S = Q·Kᵀ, one register block per invocation (keys past `keys` are never used).
        var s: array<f32, RQ * RK>;
        for (var i = 0u; i < RQ * RK; i++) {
            s[i] = 0.0;
        }
        for (var d = 0u; d < HEAD_DIM; d++) {
            var k: array<f32, RK>;
            for (var j = 0u; j < RK; j++) {
                k[j] = f32(kv_tile[(tc + 8u * j) * ROW + d]);
            }
            for (var i = 0u; i < RQ; i++) {
                let q = f32(q_tile[(tr + 8u * i) * ROW + d]);
                for (var j = 0u; j < RK; j++) {
                    s[i * RK + j] = fma(q, k[j], s[i * RK + j]);
                }
            }
        }
        for (var i = 0u; i < RQ; i++) {
            for (var j = 0u; j < RK; j++) {
                let key = tc + 8u * j;
                var score = s[i * RK + j] * params.scale;
                let q = q0 + tr + 8u * i;
                if (HAS_REL_BIAS && key < keys && q < t) {
                    score += rel_bias[wid.y * (2u * t - 1u) + k0 + key + t - 1u - q];
                }
                score += bias_tile[key];
                let k = k0 + key;
                if (params.window > 0u && max(k, q) - min(k, q) > params.window) {
                    score = MASKED;
                }
                s_tile[(tr + 8u * i) * KV_TILE + key] = score;
            }
        }
        workgroupBarrier();

        // 2. V tile in place of K; online softmax of row `lid`.
        for (var l = lid; l < keys * HEAD_DIM; l += WG) {
            let j = l / HEAD_DIM;
            let d = l % HEAD_DIM;
            kv_tile[j * ROW + d] = qkv[head_at + (k0 + j) * row_stride + 2u * c + d];
        }
        if (lid < BQ) {
            let at = lid * KV_TILE;
            var tile_max = MASKED;
            for (var j = 0u; j < keys; j++) {
                tile_max = max(tile_max, s_tile[at + j]);
            }
            let new_max = max(running_max, tile_max);
            let correction = exp(running_max - new_max);
            running_sum *= correction;
            for (var j = 0u; j < keys; j++) {
                let p = exp(s_tile[at + j] - new_max);
                s_tile[at + j] = p;
                running_sum += p;
            }
            running_max = new_max;
            row_scale[lid] = correction;
        }
        workgroupBarrier();

        // 3. O = O·correction + P·V.
        for (var i = 0u; i < RQ; i++) {
            let correction = row_scale[tr + 8u * i];
            for (var j = 0u; j < DC; j++) {
                o[i * DC + j] *= correction;
            }
        }
        for (var key = 0u; key < keys; key++) {
            var v: array<f32, DC>;
            for (var j = 0u; j < DC; j++) {
                v[j] = f32(kv_tile[key * ROW + min(tc + 8u * j, HEAD_DIM - 1u)]);
            }
            for (var i = 0u; i < RQ; i++) {
                let p = s_tile[(tr + 8u * i) * KV_TILE + key];
                for (var j = 0u; j < DC; j++) {
                    o[i * DC + j] = fma(p, v[j], o[i * DC + j]);
                }
            }
        }
        workgroupBarrier();
    }

    if (lid < BQ) {
        row_scale[lid] = 1.0 / running_sum;
    }
    workgroupBarrier();
    for (var i = 0u; i < RQ; i++) {
        let r = tr + 8u * i;
        if (q0 + r >= t) {
            continue;
        }
        let inv = row_scale[r];
        let out_at = (b * t + q0 + r) * c + wid.y * HEAD_DIM;
        for (var j = 0u; j < DC; j++) {
            let d = tc + 8u * j;
            if (d < HEAD_DIM) {
                out[out_at + d] = YT(o[i * DC + j] * inv);
            }
        }
    }
}
