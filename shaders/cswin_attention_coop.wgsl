// cswin_attention_coop: `cswin_attention` (same operands, geometry, Params and output; see
// cswin_attention.wgsl) with its two tile products on cooperative matrices (tensor cores): f16
// fragments, f32 accumulation.
//   qkv:    (B, H*W, 3C) XT (f32 or f16 storage), token-major, as cswin_attention.wgsl
//   lepe_w: (Cb, 3, 3) f32;  lepe_b: (Cb) f32
//   out:    (B, H*W, C) YT (f32 or f16); this branch writes channels [off, off + Cb)
// One workgroup is one subgroup of SG invocations and owns FT window positions of one window
// and one head (FT = the fragment size): grid (windows * ceil(win_h*win_w / FT), heads, B).
// The structure is attention_coop.wgsl's (Q tile as f16; per key tile of KV_FRAGS * FT keys,
// S = Q·Kᵀ on fragments, the online softmax in f32 by one invocation per row, P as f16,
// O += P·V on fragments into an f32 output tile in workgroup memory); padded keys are zeros
// with logit 0 as in the official code, keys past the window get no mass. LePE is added to
// the output tile at the end, as in cswin_attention.
// Needs HEAD_DIM a multiple of FT (other heads use `cswin_attention`).
// Specialisation: FT, SG, KV_FRAGS, HEAD_DIM, FRAG_A, FRAG_B, FRAG_C, XT, YT.

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

const KV: u32 = KV_FRAGS * FT; // keys per tile
const DF: u32 = HEAD_DIM / FT; // fragments across the head

var<workgroup> sq: array<f16, FT * HEAD_DIM>; // Q rows, row-major
var<workgroup> skv: array<f16, KV * HEAD_DIM>; // K, then V, key-major
var<workgroup> ss: array<f32, FT * KV>; // scores, row-major
var<workgroup> sp: array<f16, FT * KV>; // probabilities, row-major
var<workgroup> so: array<f32, FT * HEAD_DIM>; // output accumulator, row-major
var<workgroup> row_scale: array<f32, FT>;

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
fn window_value(b: u32, win_y: u32, win_x: u32, pos: u32, channel: u32) -> f32 {
    let win_tokens = params.win_h * params.win_w;
    if (pos >= win_tokens) {
        return 0.0;
    }
    let t = token_at(win_y, win_x, pos / params.win_w, pos % params.win_w);
    if (t < 0) {
        return 0.0;
    }
    return f32(qkv[(b * params.h * params.w + u32(t)) * 3u * params.c + channel]);
}

@compute @workgroup_size(SG)
fn cswin_attention_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.z;
    let head = wid.y;
    let window = wid.x / params.q_tiles;
    let win_y = window / params.windows_x;
    let win_x = window % params.windows_x;
    let win_tokens = params.win_h * params.win_w;
    let q0 = (wid.x % params.q_tiles) * FT;
    let channel = params.channel_offset + head * HEAD_DIM; // first q channel of this head

    for (var l = lid; l < FT * HEAD_DIM; l += SG) {
        sq[l] = f16(window_value(b, win_y, win_x, q0 + l / HEAD_DIM, channel + l % HEAD_DIM));
        so[l] = 0.0;
    }
    // Softmax state of row `lid` (invocations 0..FT).
    var running_max = F32_LOWEST;
    var running_sum = 0.0;

    for (var k0 = 0u; k0 < win_tokens; k0 += KV) {
        let keys = min(KV, win_tokens - k0);
        for (var l = lid; l < KV * HEAD_DIM; l += SG) {
            let at = params.c + channel + l % HEAD_DIM;
            skv[l] = f16(window_value(b, win_y, win_x, k0 + l / HEAD_DIM, at));
        }
        workgroupBarrier();

        // 1. S = Q·Kᵀ, one FT x FT block of keys at a time.
        for (var kb = 0u; kb < KV_FRAGS; kb++) {
            var s = FRAG_C();
            for (var df = 0u; df < DF; df++) {
                let q = coopLoadT<FRAG_A>(&sq[df * FT], HEAD_DIM);
                let k = coopLoad<FRAG_B>(&skv[kb * FT * HEAD_DIM + df * FT], HEAD_DIM);
                s = coopMultiplyAdd(q, k, s);
            }
            coopStoreT(s, &ss[kb * FT], KV);
        }
        workgroupBarrier();

        // 2. V tile over K; online softmax of row `lid`.
        for (var l = lid; l < KV * HEAD_DIM; l += SG) {
            let at = 2u * params.c + channel + l % HEAD_DIM;
            skv[l] = f16(window_value(b, win_y, win_x, k0 + l / HEAD_DIM, at));
        }
        if (lid < FT) {
            let at = lid * KV;
            var tile_max = F32_LOWEST;
            for (var j = 0u; j < keys; j++) {
                tile_max = max(tile_max, ss[at + j] * params.scale);
            }
            let new_max = max(running_max, tile_max);
            let correction = exp(running_max - new_max);
            running_sum *= correction;
            for (var j = 0u; j < KV; j++) {
                var p = 0.0;
                if (j < keys) {
                    p = exp(ss[at + j] * params.scale - new_max);
                }
                sp[at + j] = f16(p);
                running_sum += p;
            }
            running_max = new_max;
            row_scale[lid] = correction;
        }
        workgroupBarrier();
        for (var l = lid; l < FT * HEAD_DIM; l += SG) {
            so[l] *= row_scale[l / HEAD_DIM];
        }
        workgroupBarrier();

        // 3. O += P·V, one FT-column block of the head at a time.
        for (var df = 0u; df < DF; df++) {
            var o = coopLoadT<FRAG_C>(&so[df * FT], HEAD_DIM);
            for (var kb = 0u; kb < KV_FRAGS; kb++) {
                let p = coopLoadT<FRAG_A>(&sp[kb * FT], KV);
                let v = coopLoadT<FRAG_B>(&skv[kb * FT * HEAD_DIM + df * FT], HEAD_DIM);
                o = coopMultiplyAdd(p, v, o);
            }
            coopStoreT(o, &so[df * FT], HEAD_DIM);
        }
        workgroupBarrier();
    }

    if (lid < FT) {
        row_scale[lid] = 1.0 / running_sum;
    }
    workgroupBarrier();

    // LePE (3x3 depthwise conv of V over this window, zero outside it and in the padding) added
    // to each element; padded queries and positions past the window are not written.
    let plane = params.h * params.w;
    let row_stride = 3u * params.c;
    let branch_channel = head * HEAD_DIM; // channel within the branch
    for (var l = lid; l < FT * HEAD_DIM; l += SG) {
        let r = l / HEAD_DIM;
        let d = l % HEAD_DIM;
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
        var lepe = lepe_b[branch_channel + d];
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
            let at = (b * plane + u32(t)) * row_stride + 2u * params.c + channel + d;
            lepe = fma(lepe_w[(branch_channel + d) * 9u + tap], f32(qkv[at]), lepe);
        }
        out[(b * plane + u32(q_token)) * params.c + channel + d] = YT(so[l] * row_scale[r] + lepe);
    }
}
