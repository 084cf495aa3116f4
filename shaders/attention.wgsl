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
// halves them); rows are padded by one element against bank conflicts. The register blocks are
// straight-line code on mat4x4 locals (`outer_fma`): S is one 4 x 4 block (rows tr + 8i, keys
// tc + 8j; RQ, RK <= 4) and O is G = ceil(DC/4) blocks of four rows by four columns
// (tc + 8(4g + e)); lanes past RQ, RK or DC compute on zeros and are never stored, and the
// blocks a size does not use are compiled out. No local array is indexed in a loop. Scores, softmax state and
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
const G: u32 = (DC + 3u) / 4u; // 4-column blocks of O per invocation
const_assert ((RQ == 1u || RQ == 2u || RQ == 4u) && (RK == 1u || RK == 2u || RK == 4u) && G <= 4u);

var<workgroup> q_tile: array<XT, BQ * ROW>;
var<workgroup> kv_tile: array<XT, KV_TILE * ROW>;
var<workgroup> s_tile: array<f32, BQ * KV_TILE>;
var<workgroup> bias_tile: array<f32, KV_TILE>;
var<workgroup> row_scale: array<f32, BQ>;
// This invocation's place on the 8 x 8 grid.
var<private> tr: u32;
var<private> tc: u32;

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = params.t;
    let c = params.heads * HEAD_DIM;
    let b = wid.z;
    let q0 = wid.x * BQ;
    let row_stride = 3u * c;
    let head_at = b * t * row_stride + wid.y * HEAD_DIM; // q of token 0 of this (batch, head)
    tr = lid / 8u;
    tc = lid % 8u;

    for (var l = lid; l < BQ * HEAD_DIM; l += WG) {
        let r = l / HEAD_DIM;
        let d = l % HEAD_DIM;
        var v = XT(0.0);
        if (q0 + r < t) {
            v = qkv[head_at + (q0 + r) * row_stride + d];
        }
        q_tile[r * ROW + d] = v;
    }

    var o0 = mat4x4<f32>();
    var o1 = mat4x4<f32>();
    var o2 = mat4x4<f32>();
    var o3 = mat4x4<f32>();
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
        var sb = mat4x4<f32>();
        for (var d = 0u; d < HEAD_DIM; d++) {
            sb = outer_fma(q_rows(d), k_keys(d), sb);
        }
        let at = Tile(q0, k0, keys, t, wid.y);
        store_scores(sb[0], 0u, at);
        if (RQ > 1u) {
            store_scores(sb[1], 1u, at);
        }
        if (RQ > 2u) {
            store_scores(sb[2], 2u, at);
            store_scores(sb[3], 3u, at);
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
        let correction = row_values(row_scale_at(0u), row_scale_at(1u), row_scale_at(2u),
            row_scale_at(3u));
        o0 = scale_rows(o0, correction);
        o1 = scale_rows(o1, correction);
        o2 = scale_rows(o2, correction);
        o3 = scale_rows(o3, correction);
        for (var key = 0u; key < keys; key++) {
            let p = row_values(p_at(0u, key), p_at(1u, key), p_at(2u, key), p_at(3u, key));
            o0 = outer_fma(p, v_columns(key, 0u), o0);
            if (G > 1u) {
                o1 = outer_fma(p, v_columns(key, 1u), o1);
            }
            if (G > 2u) {
                o2 = outer_fma(p, v_columns(key, 2u), o2);
            }
            if (G > 3u) {
                o3 = outer_fma(p, v_columns(key, 3u), o3);
            }
        }
        workgroupBarrier();
    }

    if (lid < BQ) {
        row_scale[lid] = 1.0 / running_sum;
    }
    workgroupBarrier();
    let inv = row_values(row_scale_at(0u), row_scale_at(1u), row_scale_at(2u), row_scale_at(3u));
    let out_at = (b * t + q0) * c + wid.y * HEAD_DIM;
    store_block(scale_rows(o0, inv), 0u, out_at, q0, t, c);
    if (G > 1u) {
        store_block(scale_rows(o1, inv), 1u, out_at, q0, t, c);
    }
    if (G > 2u) {
        store_block(scale_rows(o2, inv), 2u, out_at, q0, t, c);
    }
    if (G > 3u) {
        store_block(scale_rows(o3, inv), 3u, out_at, q0, t, c);
    }
}

// Where a key tile sits: first query, first key, keys in the tile, sequence length, head.
struct Tile {
    q0: u32,
    k0: u32,
    keys: u32,
    t: u32,
    head: u32,
}

// Four values of this invocation's rows tr + 8i (i < RQ; zero past RQ).
fn row_values(v0: f32, v1: f32, v2: f32, v3: f32) -> vec4<f32> {
    return vec4<f32>(v0, select(0.0, v1, RQ > 1u), select(0.0, v2, RQ > 2u),
        select(0.0, v3, RQ > 2u));
}

fn row_scale_at(i: u32) -> f32 {
    return row_scale[min(tr + 8u * i, BQ - 1u)];
}

fn p_at(i: u32, key: u32) -> f32 {
    return s_tile[min(tr + 8u * i, BQ - 1u) * KV_TILE + key];
}

// Q at column d of this invocation's rows.
fn q_rows(d: u32) -> vec4<f32> {
    let at = tr * ROW + d;
    let last = (BQ - 1u) * ROW + d;
    return row_values(f32(q_tile[at]), f32(q_tile[min(at + 8u * ROW, last)]),
        f32(q_tile[min(at + 16u * ROW, last)]), f32(q_tile[min(at + 24u * ROW, last)]));
}

// K at column d of this invocation's keys tc + 8j (j < RK; zero past RK).
fn k_keys(d: u32) -> vec4<f32> {
    let at = tc * ROW + d;
    let last = (KV_TILE - 1u) * ROW + d;
    return vec4<f32>(f32(kv_tile[at]),
        select(0.0, f32(kv_tile[min(at + 8u * ROW, last)]), RK > 1u),
        select(0.0, f32(kv_tile[min(at + 16u * ROW, last)]), RK > 2u),
        select(0.0, f32(kv_tile[min(at + 24u * ROW, last)]), RK > 2u));
}

// V of `key` at this invocation's columns tc + 8(4g + e), e < 4 (clamped to the head).
fn v_columns(key: u32, g: u32) -> vec4<f32> {
    let at = key * ROW;
    let d = tc + 32u * g;
    let last = HEAD_DIM - 1u;
    return vec4<f32>(f32(kv_tile[at + min(d, last)]), f32(kv_tile[at + min(d + 8u, last)]),
        f32(kv_tile[at + min(d + 16u, last)]), f32(kv_tile[at + min(d + 24u, last)]));
}

// Row i's scores (keys tc + 8j) scaled, biased and masked into the score tile.
fn store_scores(row: vec4<f32>, i: u32, at: Tile) {
    store_score(row.x, i, 0u, at);
    if (RK > 1u) {
        store_score(row.y, i, 1u, at);
    }
    if (RK > 2u) {
        store_score(row.z, i, 2u, at);
        store_score(row.w, i, 3u, at);
    }
}

fn store_score(v: f32, i: u32, j: u32, at: Tile) {
    let key = tc + 8u * j;
    var score = v * params.scale;
    let q = at.q0 + tr + 8u * i;
    if (HAS_REL_BIAS && key < at.keys && q < at.t) {
        score += rel_bias[at.head * (2u * at.t - 1u) + at.k0 + key + at.t - 1u - q];
    }
    score += bias_tile[key];
    let k = at.k0 + key;
    if (params.window > 0u && max(k, q) - min(k, q) > params.window) {
        score = MASKED;
    }
    s_tile[(tr + 8u * i) * KV_TILE + key] = score;
}

// Block g of O (rows tr + 8i, columns tc + 8(4g + e)) into `out`.
fn store_block(m: mat4x4<f32>, g: u32, out_at: u32, q0: u32, t: u32, c: u32) {
    store_row(m[0], 0u, g, out_at, q0, t, c);
    if (RQ > 1u) {
        store_row(m[1], 1u, g, out_at, q0, t, c);
    }
    if (RQ > 2u) {
        store_row(m[2], 2u, g, out_at, q0, t, c);
        store_row(m[3], 3u, g, out_at, q0, t, c);
    }
}

fn store_row(v: vec4<f32>, i: u32, g: u32, out_at: u32, q0: u32, t: u32, c: u32) {
    let r = tr + 8u * i;
    if (q0 + r >= t) {
        return;
    }
    let at = out_at + r * c;
    let d = tc + 32u * g;
    if (d < HEAD_DIM) {
        out[at + d] = YT(v.x);
    }
    if (d + 8u < HEAD_DIM) {
        out[at + d + 8u] = YT(v.y);
    }
    if (d + 16u < HEAD_DIM) {
        out[at + d + 16u] = YT(v.z);
    }
    if (d + 24u < HEAD_DIM) {
        out[at + d + 24u] = YT(v.w);
    }
}
