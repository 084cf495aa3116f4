// cswin_attention: one branch of CSWin's cross-shaped window attention with LePE, fused:
// windows are read straight from the QKV projection (no img2windows copy), attention runs in the
// flash-attention-2 structure per (window, head), the locally-enhanced positional encoding (3x3
// depthwise conv on V inside the window) is added in the same pass, and the result is written
// back in token order at the branch's channels, ready for `proj`.
//   qkv:    (B, H*W, 3C) XT (f32 or f16 storage), token-major (token = y*W + x); the branch's q, k, v channels are
//           [off, off + Cb) of each third, head h = channels [h*D, (h+1)*D) of the branch
//   lepe_w: (Cb, 3, 3) f32, the branch's `get_v` depthwise weight ((Cb, 1, 3, 3) in PyTorch)
//   lepe_b: (Cb) f32
//   out:    (B, H*W, C) YT (f32 or f16); this branch writes channels [off, off + Cb)
// Geometry (official code; the segmentation backbone's rule for other sizes): the map is
// zero-padded (after the qkv projection, so padded q = k = v = 0) to Hp x Wp, multiples of the
// window win_h x win_w, with pad_top = (Hp - H) / 2 and pad_left = (Wp - W) / 2; windows tile the
// padded map row-major. Attention has no mask: padded keys take softmax mass with logit 0.
// LePE sees zeros outside the window and in the padding. Padded queries are not written.
//   out[q] = softmax_k(scale * q.k) . v  +  lepe_b + sum_{3x3} lepe_w * v(neighbour in window)
//
// A workgroup of 64 invocations owns BQ consecutive window positions of one window and one
// head: grid (windows * ceil(win_h*win_w / BQ), heads, B). The structure is `attention`'s (see
// shaders/attention.wgsl): Q tile in workgroup memory, per key tile S = Q·Kᵀ and O += P·V as
// register blocks on an 8x8 grid of invocations, the online softmax by one invocation per row,
// K/V tiles in the storage type of qkv, and the same straight-line register blocks (mat4x4
// locals, no loop-indexed local array). LePE is added to each invocation's block of O at the end.
// Everything is computed in f32 whatever the storage types.
// Specialisation: HEAD_DIM (D), BQ, KV_TILE (see `attention::tiles`), XT, YT.

struct Params {
    batch: u32,
    h: u32,
    w: u32,
    c: u32,
    channel_offset: u32,
    heads: u32,
    win_h: u32,
    win_w: u32,
    pad_top: u32,
    pad_left: u32,
    windows_x: u32,
    q_tiles: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<XT>;
@group(0) @binding(2) var<storage, read> lepe_w: array<f32>;
@group(0) @binding(3) var<storage, read> lepe_b: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<YT>;

const WG: u32 = 64u;
const RQ: u32 = BQ / 8u; // query rows per invocation
const RK: u32 = KV_TILE / 8u; // keys per invocation in S
const DC: u32 = (HEAD_DIM + 7u) / 8u; // output columns per invocation
const ROW: u32 = HEAD_DIM + 1u; // padded row of the Q and K/V tiles
const G: u32 = (DC + 3u) / 4u; // 4-column blocks of O per invocation
const_assert ((RQ == 1u || RQ == 2u || RQ == 4u) && (RK == 1u || RK == 2u || RK == 4u) && G <= 4u);

var<workgroup> q_tile: array<XT, BQ * ROW>;
var<workgroup> kv_tile: array<XT, KV_TILE * ROW>;
var<workgroup> s_tile: array<f32, BQ * KV_TILE>;
var<workgroup> row_scale: array<f32, BQ>;
// This invocation's place on the 8 x 8 grid.
var<private> tr: u32;
var<private> tc: u32;

// Token index of window-local position (wy, wx) of window (win_y, win_x), or -1 in the padding.
fn token_at(win_y: u32, win_x: u32, wy: u32, wx: u32) -> i32 {
    let y = i32(win_y * params.win_h + wy) - i32(params.pad_top);
    let x = i32(win_x * params.win_w + wx) - i32(params.pad_left);
    if (y < 0 || x < 0 || y >= i32(params.h) || x >= i32(params.w)) {
        return -1;
    }
    return y * i32(params.w) + x;
}

// The qkv element of channel `channel` of window position `pos`, zero in the padding and past
// the window.
fn window_value(b: u32, win_y: u32, win_x: u32, pos: u32, channel: u32) -> XT {
    let win_tokens = params.win_h * params.win_w;
    if (pos >= win_tokens) {
        return XT(0.0);
    }
    let t = token_at(win_y, win_x, pos / params.win_w, pos % params.win_w);
    if (t < 0) {
        return XT(0.0);
    }
    return qkv[(b * params.h * params.w + u32(t)) * 3u * params.c + channel];
}

@compute @workgroup_size(64)
fn cswin_attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.z;
    let head = wid.y;
    let window = wid.x / params.q_tiles;
    let win_y = window / params.windows_x;
    let win_x = window % params.windows_x;
    let win_tokens = params.win_h * params.win_w;
    let q0 = (wid.x % params.q_tiles) * BQ;
    let channel = params.channel_offset + head * HEAD_DIM; // first q channel of this head
    tr = lid / 8u;
    tc = lid % 8u;

    for (var l = lid; l < BQ * HEAD_DIM; l += WG) {
        let r = l / HEAD_DIM;
        let d = l % HEAD_DIM;
        q_tile[r * ROW + d] = window_value(b, win_y, win_x, q0 + r, channel + d);
    }

    var o0 = mat4x4<f32>();
    var o1 = mat4x4<f32>();
    var o2 = mat4x4<f32>();
    var o3 = mat4x4<f32>();
    // Softmax state of row `lid` (invocations 0..BQ).
    var running_max = F32_LOWEST;
    var running_sum = 0.0;

    for (var k0 = 0u; k0 < win_tokens; k0 += KV_TILE) {
        let keys = min(KV_TILE, win_tokens - k0);
        for (var l = lid; l < keys * HEAD_DIM; l += WG) {
            let j = l / HEAD_DIM;
            let d = l % HEAD_DIM;
            kv_tile[j * ROW + d] = window_value(b, win_y, win_x, k0 + j, params.c + channel + d);
        }
        workgroupBarrier();

        // 1. S = Q·Kᵀ, one register block per invocation (keys past `keys` are never used).
        var sb = mat4x4<f32>();
        for (var d = 0u; d < HEAD_DIM; d++) {
            sb = outer_fma(q_rows(d), k_keys(d), sb);
        }
        store_scores(sb[0], 0u);
        if (RQ > 1u) {
            store_scores(sb[1], 1u);
        }
        if (RQ > 2u) {
            store_scores(sb[2], 2u);
            store_scores(sb[3], 3u);
        }
        workgroupBarrier();

        // 2. V tile in place of K; online softmax of row `lid`.
        for (var l = lid; l < keys * HEAD_DIM; l += WG) {
            let j = l / HEAD_DIM;
            let d = l % HEAD_DIM;
            kv_tile[j * ROW + d] = window_value(b, win_y, win_x, k0 + j, 2u * params.c + channel + d);
        }
        if (lid < BQ) {
            let at = lid * KV_TILE;
            var tile_max = F32_LOWEST;
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

    // LePE (3x3 depthwise conv of V over this window, zero outside it and in the padding) added
    // to each owned element; padded queries and positions past the window are not written.
    let inv = row_values(row_scale_at(0u), row_scale_at(1u), row_scale_at(2u), row_scale_at(3u));
    let at = Window(b, win_y, win_x, q0, channel, head);
    o0 = scale_rows(o0, inv);
    o1 = scale_rows(o1, inv);
    o2 = scale_rows(o2, inv);
    o3 = scale_rows(o3, inv);
    store_row(0u, o0[0], o1[0], o2[0], o3[0], at);
    if (RQ > 1u) {
        store_row(1u, o0[1], o1[1], o2[1], o3[1], at);
    }
    if (RQ > 2u) {
        store_row(2u, o0[2], o1[2], o2[2], o3[2], at);
        store_row(3u, o0[3], o1[3], o2[3], o3[3], at);
    }
}

// Which window, queries and head a workgroup works on.
struct Window {
    b: u32,
    win_y: u32,
    win_x: u32,
    q0: u32,
    channel: u32, // first q channel of the head
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

// Row i's scores (keys tc + 8j), scaled, into the score tile.
fn store_scores(row: vec4<f32>, i: u32) {
    let at = (tr + 8u * i) * KV_TILE + tc;
    s_tile[at] = row.x * params.scale;
    if (RK > 1u) {
        s_tile[at + 8u] = row.y * params.scale;
    }
    if (RK > 2u) {
        s_tile[at + 16u] = row.z * params.scale;
        s_tile[at + 24u] = row.w * params.scale;
    }
}

// Row i of O (already divided by its softmax sum), blocks v0..v3, plus LePE, into `out` at the
// query's token; nothing for a padded query or a position past the window.
fn store_row(i: u32, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>, at: Window) {
    let pos = at.q0 + tr + 8u * i;
    if (pos >= params.win_h * params.win_w) {
        return;
    }
    let qy = i32(pos / params.win_w);
    let qx = i32(pos % params.win_w);
    let q_token = token_at(at.win_y, at.win_x, u32(qy), u32(qx));
    if (q_token < 0) {
        return;
    }
    let out_at = (at.b * params.h * params.w + u32(q_token)) * params.c + at.channel;
    store_group(v0 + lepe(0u, qy, qx, at), 0u, out_at);
    if (G > 1u) {
        store_group(v1 + lepe(1u, qy, qx, at), 1u, out_at);
    }
    if (G > 2u) {
        store_group(v2 + lepe(2u, qy, qx, at), 2u, out_at);
    }
    if (G > 3u) {
        store_group(v3 + lepe(3u, qy, qx, at), 3u, out_at);
    }
}

// LePE at window position (qy, qx) for this invocation's columns of block g: the bias plus
// the 3x3 depthwise conv of V over the window (zero outside it and in the padding).
fn lepe(g: u32, qy: i32, qx: i32, at: Window) -> vec4<f32> {
    let branch = at.head * HEAD_DIM; // channel within the branch
    let d = tc + 32u * g;
    let last = HEAD_DIM - 1u;
    let ch = vec4<u32>(min(d, last), min(d + 8u, last), min(d + 16u, last), min(d + 24u, last));
    var acc = vec4<f32>(lepe_b[branch + ch.x], lepe_b[branch + ch.y], lepe_b[branch + ch.z],
        lepe_b[branch + ch.w]);
    for (var tap = 0u; tap < 9u; tap++) {
        let ny = qy + i32(tap / 3u) - 1;
        let nx = qx + i32(tap % 3u) - 1;
        if (ny < 0 || nx < 0 || ny >= i32(params.win_h) || nx >= i32(params.win_w)) {
            continue;
        }
        let t = token_at(at.win_y, at.win_x, u32(ny), u32(nx));
        if (t < 0) {
            continue;
        }
        let v_at = (at.b * params.h * params.w + u32(t)) * 3u * params.c + 2u * params.c
            + at.channel;
        let wv = vec4<f32>(lepe_w[(branch + ch.x) * 9u + tap], lepe_w[(branch + ch.y) * 9u + tap],
            lepe_w[(branch + ch.z) * 9u + tap], lepe_w[(branch + ch.w) * 9u + tap]);
        let vv = vec4<f32>(f32(qkv[v_at + ch.x]), f32(qkv[v_at + ch.y]), f32(qkv[v_at + ch.z]),
            f32(qkv[v_at + ch.w]));
        acc = fma(wv, vv, acc);
    }
    return acc;
}

fn store_group(v: vec4<f32>, g: u32, out_at: u32) {
    let d = tc + 32u * g;
    if (d < HEAD_DIM) {
        out[out_at + d] = YT(v.x);
    }
    if (d + 8u < HEAD_DIM) {
        out[out_at + d + 8u] = YT(v.y);
    }
    if (d + 16u < HEAD_DIM) {
        out[out_at + d + 16u] = YT(v.z);
    }
    if (d + 24u < HEAD_DIM) {
        out[out_at + d + 24u] = YT(v.w);
    }
}
