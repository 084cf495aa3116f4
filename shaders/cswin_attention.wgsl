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
// K/V tiles in the storage type of qkv. LePE is added to each invocation's block of O at the end.
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

var<workgroup> q_tile: array<XT, BQ * ROW>;
var<workgroup> kv_tile: array<XT, KV_TILE * ROW>;
var<workgroup> s_tile: array<f32, BQ * KV_TILE>;
var<workgroup> row_scale: array<f32, BQ>;

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
    let tr = lid / 8u;
    let tc = lid % 8u;

    for (var l = lid; l < BQ * HEAD_DIM; l += WG) {
        let r = l / HEAD_DIM;
        let d = l % HEAD_DIM;
        q_tile[r * ROW + d] = window_value(b, win_y, win_x, q0 + r, channel + d);
    }

    var o: array<f32, RQ * DC>;
    for (var i = 0u; i < RQ * DC; i++) {
        o[i] = 0.0;
    }
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
                s_tile[(tr + 8u * i) * KV_TILE + tc + 8u * j] = s[i * RK + j] * params.scale;
            }
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

    // LePE (3x3 depthwise conv of V over this window, zero outside it and in the padding) added
    // to each owned element; padded queries and positions past the window are not written.
    let plane = params.h * params.w;
    let row_stride = 3u * params.c;
    let branch_channel = head * HEAD_DIM; // channel within the branch
    for (var i = 0u; i < RQ; i++) {
        let r = tr + 8u * i;
        let pos = q0 + r;
        if (pos >= win_tokens) {
            continue;
        }
        let qy = i32(pos / params.win_w);
        let qx = i32(pos % params.win_w);
        let q_token = token_at(win_y, win_x, u32(qy), u32(qx));
        if (q_token < 0) {
            continue;
        }
        let inv = row_scale[r];
        var lepe: array<f32, DC>;
        for (var j = 0u; j < DC; j++) {
            lepe[j] = lepe_b[branch_channel + min(tc + 8u * j, HEAD_DIM - 1u)];
        }
        for (var tap = 0u; tap < 9u; tap++) {
            let ny = qy + i32(tap / 3u) - 1;
            let nx = qx + i32(tap % 3u) - 1;
            if (ny < 0 || nx < 0 || ny >= i32(params.win_h) || nx >= i32(params.win_w)) {
                continue;
            }
            let t = token_at(win_y, win_x, u32(ny), u32(nx));
            if (t < 0) {
                continue;
            }
            let at = (b * plane + u32(t)) * row_stride + 2u * params.c + channel;
            for (var j = 0u; j < DC; j++) {
                let d = min(tc + 8u * j, HEAD_DIM - 1u);
                lepe[j] = fma(lepe_w[(branch_channel + d) * 9u + tap], f32(qkv[at + d]), lepe[j]);
            }
        }
        let out_at = (b * plane + u32(q_token)) * params.c + channel;
        for (var j = 0u; j < DC; j++) {
            let d = tc + 8u * j;
            if (d < HEAD_DIM) {
                out[out_at + d] = YT(o[i * DC + j] * inv + lepe[j]);
            }
        }
    }
}
