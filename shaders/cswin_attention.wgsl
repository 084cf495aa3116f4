// cswin_attention: one branch of CSWin's cross-shaped window attention with LePE, fused:
// windows are read straight from the QKV projection (no img2windows copy), attention runs
// flash-style per (window, head), the locally-enhanced positional encoding (3x3 depthwise conv
// on V inside the window) is added in the same pass, and the result is written back in token
// order at the branch's channels, ready for `proj`.
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
// A workgroup owns 64 consecutive query tokens of one window and one head: grid
// (windows * ceil(win_h*win_w / 64), heads, B). Each invocation keeps its query row and
// accumulator in registers; K and V tiles of KV_TILE keys are staged in workgroup memory.
// Everything is computed in f32 whatever the storage types.
// Specialisation: HEAD_DIM (D), KV_TILE, XT, YT.

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

const BQ: u32 = 64u;

// K and V tiles in the storage type of qkv: f16 storage halves this workgroup memory.
var<workgroup> k_tile: array<XT, KV_TILE * HEAD_DIM>;
var<workgroup> v_tile: array<XT, KV_TILE * HEAD_DIM>;

// Token index of window-local position (wy, wx) of window (win_y, win_x), or -1 in the padding.
fn token_at(win_y: u32, win_x: u32, wy: u32, wx: u32) -> i32 {
    let y = i32(win_y * params.win_h + wy) - i32(params.pad_top);
    let x = i32(win_x * params.win_w + wx) - i32(params.pad_left);
    if (y < 0 || x < 0 || y >= i32(params.h) || x >= i32(params.w)) {
        return -1;
    }
    return y * i32(params.w) + x;
}

@compute @workgroup_size(64)
fn cswin_attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.z;
    let head = wid.y;
    let window = wid.x / params.q_tiles;
    let win_y = window / params.windows_x;
    let win_x = window % params.windows_x;
    let win_tokens = params.win_h * params.win_w;
    let query = (wid.x % params.q_tiles) * BQ + lid;
    let row_stride = 3u * params.c;
    let channel = params.channel_offset + head * HEAD_DIM; // first q channel of this head
    let plane = params.h * params.w;

    var q_token = -1;
    if (query < win_tokens) {
        q_token = token_at(win_y, win_x, query / params.win_w, query % params.win_w);
    }
    let has_query = q_token >= 0;

    var q: array<f32, HEAD_DIM>;
    var acc: array<f32, HEAD_DIM>;
    for (var d = 0u; d < HEAD_DIM; d++) {
        q[d] = 0.0;
        acc[d] = 0.0;
    }
    if (has_query) {
        let at = (b * plane + u32(q_token)) * row_stride + channel;
        for (var d = 0u; d < HEAD_DIM; d++) {
            q[d] = f32(qkv[at + d]);
        }
    }
    var running_max = F32_LOWEST;
    var running_sum = 0.0;

    for (var k0 = 0u; k0 < win_tokens; k0 += KV_TILE) {
        let keys = min(KV_TILE, win_tokens - k0);
        for (var l = lid; l < keys * HEAD_DIM; l += BQ) {
            let j = k0 + l / HEAD_DIM;
            let d = l % HEAD_DIM;
            let t = token_at(win_y, win_x, j / params.win_w, j % params.win_w);
            var kv = vec2<f32>(0.0);
            if (t >= 0) {
                let at = (b * plane + u32(t)) * row_stride + channel + d;
                kv = vec2<f32>(f32(qkv[at + params.c]), f32(qkv[at + 2u * params.c]));
            }
            k_tile[l] = XT(kv.x);
            v_tile[l] = XT(kv.y);
        }
        workgroupBarrier();

        if (has_query) {
            var scores: array<f32, KV_TILE>;
            var tile_max = F32_LOWEST;
            for (var j = 0u; j < keys; j++) {
                var dot = 0.0;
                for (var d = 0u; d < HEAD_DIM; d++) {
                    dot = fma(q[d], f32(k_tile[j * HEAD_DIM + d]), dot);
                }
                scores[j] = dot * params.scale;
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

    if (!has_query) {
        return;
    }
    // LePE: 3x3 depthwise conv of V over this window, zero outside it and in the padding.
    let qy = i32(query / params.win_w);
    let qx = i32(query % params.win_w);
    let branch_channel = head * HEAD_DIM; // channel within the branch
    var lepe: array<f32, HEAD_DIM>;
    for (var d = 0u; d < HEAD_DIM; d++) {
        lepe[d] = lepe_b[branch_channel + d];
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
        for (var d = 0u; d < HEAD_DIM; d++) {
            lepe[d] = fma(lepe_w[(branch_channel + d) * 9u + tap], f32(qkv[at + d]), lepe[d]);
        }
    }
    let inv = 1.0 / running_sum;
    let out_at = (b * plane + u32(q_token)) * params.c + channel;
    for (var d = 0u; d < HEAD_DIM; d++) {
        out[out_at + d] = YT(acc[d] * inv + lepe[d]);
    }
}
