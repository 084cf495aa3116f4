// attention_coop: `attention` (same operands, mask, Params and output; see attention.wgsl) with
// its two tile products on cooperative matrices (tensor cores): f16 fragments, f32 accumulation.
//   qkv:  (B, T, 3C) XT (f32 or f16 storage), as attention.wgsl
//   mask: (B, T) u32, 0 = padding (additive f32::MIN, as Hugging Face)
//   rel_bias: (H, 2T - 1) f32 when HAS_REL_BIAS, as attention.wgsl
//   out:  (B, T, C) YT (f32 or f16), heads merged
// One workgroup is one subgroup of SG invocations and owns FT queries of one (batch, head),
// FT = the fragment size (16 on NVIDIA/AMD Vulkan, 8 on Metal): grid (ceil(T/FT), H, B).
// The Q tile is staged once as f16; the keys are walked in tiles of KV = KV_FRAGS * FT:
//   1. K tile -> workgroup memory (f16, zero past the sequence); for each block of FT keys,
//      S = Σ over HEAD_DIM/FT steps of Q-fragment · Kᵀ-fragment, stored to the f32 score tile;
//   2. V tile over K; invocations 0..FT each run one row's online softmax in f32 (scale, mask
//      bias, running max and sum) and write the probabilities P as f16 (0 past the sequence);
//      the f32 output tile is rescaled by each row's correction;
//   3. O += P · V per FT-column block of the head, FT keys per multiply-add.
// The output tile lives in workgroup memory in f32 between key tiles (fragments cannot be
// rescaled per row); the running sums are f32 over the unrounded probabilities.
// Needs HEAD_DIM a multiple of FT (other heads use `attention`).
// Specialisation: FT, SG, KV_FRAGS, HEAD_DIM, HAS_REL_BIAS, FRAG_A, FRAG_B, FRAG_C, XT, YT.

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

const KV: u32 = KV_FRAGS * FT; // keys per tile
const DF: u32 = HEAD_DIM / FT; // fragments across the head
const MASKED: f32 = F32_LOWEST; // torch.finfo(torch.float32).min

var<workgroup> sq: array<f16, FT * HEAD_DIM>; // Q rows, row-major
var<workgroup> skv: array<f16, KV * HEAD_DIM>; // K, then V, key-major
var<workgroup> ss: array<f32, FT * KV>; // scores, row-major
var<workgroup> sp: array<f16, FT * KV>; // probabilities, row-major
var<workgroup> so: array<f32, FT * HEAD_DIM>; // output accumulator, row-major
var<workgroup> bias_tile: array<f32, KV>;
var<workgroup> row_scale: array<f32, FT>;

@compute @workgroup_size(SG)
fn attention_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = params.t;
    let c = params.heads * HEAD_DIM;
    let b = wid.z;
    let q0 = wid.x * FT;
    let row_stride = 3u * c;
    let head_at = b * t * row_stride + wid.y * HEAD_DIM; // q of token 0 of this (batch, head)

    for (var l = lid; l < FT * HEAD_DIM; l += SG) {
        let r = l / HEAD_DIM;
        var v = 0.0;
        if (q0 + r < t) {
            v = f32(qkv[head_at + (q0 + r) * row_stride + l % HEAD_DIM]);
        }
        sq[l] = f16(v);
        so[l] = 0.0;
    }
    // Softmax state of row `lid` (invocations 0..FT).
    var running_max = MASKED;
    var running_sum = 0.0;

    for (var k0 = 0u; k0 < t; k0 += KV) {
        let keys = min(KV, t - k0);
        for (var l = lid; l < KV * HEAD_DIM; l += SG) {
            let j = l / HEAD_DIM;
            var v = 0.0;
            if (j < keys) {
                v = f32(qkv[head_at + (k0 + j) * row_stride + c + l % HEAD_DIM]);
            }
            skv[l] = f16(v);
        }
        for (var j = lid; j < keys; j += SG) {
            bias_tile[j] = select(MASKED, 0.0, mask[b * t + k0 + j] != 0u);
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
            let j = l / HEAD_DIM;
            var v = 0.0;
            if (j < keys) {
                v = f32(qkv[head_at + (k0 + j) * row_stride + 2u * c + l % HEAD_DIM]);
            }
            skv[l] = f16(v);
        }
        if (lid < FT) {
            let at = lid * KV;
            // The query's scores, scaled, with the relative bias and the mask bias.
            for (var j = 0u; j < keys; j++) {
                var score = ss[at + j] * params.scale;
                let q = q0 + lid;
                if (HAS_REL_BIAS && q < t) {
                    score += rel_bias[wid.y * (2u * t - 1u) + k0 + j + t - 1u - q];
                }
                score += bias_tile[j];
                let k = k0 + j;
                if (params.window > 0u && max(k, q) - min(k, q) > params.window) {
                    score = MASKED;
                }
                ss[at + j] = score;
            }
            var tile_max = MASKED;
            for (var j = 0u; j < keys; j++) {
                tile_max = max(tile_max, ss[at + j]);
            }
            let new_max = max(running_max, tile_max);
            let correction = exp(running_max - new_max);
            running_sum *= correction;
            for (var j = 0u; j < KV; j++) {
                var p = 0.0;
                if (j < keys) {
                    p = exp(ss[at + j] - new_max);
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
    for (var l = lid; l < FT * HEAD_DIM; l += SG) {
        let r = l / HEAD_DIM;
        if (q0 + r < t) {
            out[(b * t + q0 + r) * c + wid.y * HEAD_DIM + l % HEAD_DIM] = YT(so[l] * row_scale[r]);
        }
    }
}
