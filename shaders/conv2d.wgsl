// conv2d: 2-D convolution as an implicit GEMM (no im2col buffer), token-major output:
//   y[b, oy*Wo + ox, co] = bias[co] + sum_{ci, ky, kx} w[co, ci, ky, kx]
//                                     * x(b, ci, oy*stride - pad + ky, ox*stride - pad + kx)
// with x zero outside the image.
//   x:    (B, Cin, H, W) XT when X_NCHW (pixel values), else (B, H*W, Cin) XT token-major
//   w:    (Cout, Cin, KH, KW) WT (PyTorch's layout), read as a GEMM operand (Cout, Cin*KH*KW)
//   bias: (Cout) f32
//   y:    (B, Ho*Wo, Cout) YT, token-major (token = oy*Wo + ox)
// XT, WT, YT are f32 or f16 storage; sums are f32.
// GEMM view: M = B*Ho*Wo output positions, N = Cout, K = Cin*KH*KW. A workgroup owns a
// 64 x 64 tile of Y and walks K in steps of 16, gathering the input patch slice (the implicit
// im2col) and the weight slice into workgroup memory, k-major as padded vec4 rows; each of the
// 256 invocations accumulates a 4 x 4 block in registers (a mat4x4 updated by `outer_fma`:
// straight-line vector code, no loop-indexed local array). Edges are zero-filled on load and
// bounds-checked on store.
// Specialisation: X_NCHW, XT, WT, YT.

struct Params {
    batch: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<XT>;
@group(0) @binding(2) var<storage, read> w: array<WT>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<YT>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
const THREADS_M: u32 = 16u; // BM / 4
const THREADS_N: u32 = 16u; // BN / 4
const WG: u32 = 256u;
const A_STRIDE: u32 = 17u; // BM / 4 + 1 vec4s per k-row, padded
const B_STRIDE: u32 = 17u;

var<workgroup> tile_x: array<vec4<f32>, BK * A_STRIDE>;
var<workgroup> tile_w: array<vec4<f32>, BK * B_STRIDE>;

// Input value for output position m (flattened b, oy, ox) and reduction index kk (ci, ky, kx).
fn gather(m: u32, kk: u32) -> f32 {
    let plane = params.ho * params.wo;
    let b = m / plane;
    let pos = m % plane;
    let oy = pos / params.wo;
    let ox = pos % params.wo;
    let taps = params.kh * params.kw;
    let ci = kk / taps;
    let r = kk % taps;
    let iy = i32(oy * params.stride + r / params.kw) - i32(params.pad);
    let ix = i32(ox * params.stride + r % params.kw) - i32(params.pad);
    if (iy < 0 || ix < 0 || iy >= i32(params.h) || ix >= i32(params.w)) {
        return 0.0;
    }
    let p = u32(iy) * params.w + u32(ix);
    if (X_NCHW) {
        return f32(x[(b * params.cin + ci) * params.h * params.w + p]);
    }
    return f32(x[(b * params.h * params.w + p) * params.cin + ci]);
}

@compute @workgroup_size(256)
fn conv2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let m_total = params.batch * params.ho * params.wo;
    let n = params.cout;
    let k = params.cin * params.kh * params.kw;
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let tx = tid % THREADS_N;
    let ty = tid / THREADS_N;

    var acc = mat4x4<f32>(); // column r: row ty*4 + r's four outputs
    for (var k0 = 0u; k0 < k; k0 += BK) {
        for (var l = tid; l < BM * BK; l += WG) {
            let r = l / BK;
            let kk = l % BK;
            var v = 0.0;
            if (row0 + r < m_total && k0 + kk < k) {
                v = gather(row0 + r, k0 + kk);
            }
            tile_x[kk * A_STRIDE + r / 4u][r % 4u] = v;
        }
        for (var l = tid; l < BN * BK; l += WG) {
            let c = l / BK;
            let kk = l % BK;
            var v = 0.0;
            if (col0 + c < n && k0 + kk < k) {
                v = f32(w[(col0 + c) * k + k0 + kk]);
            }
            tile_w[kk * B_STRIDE + c / 4u][c % 4u] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            acc = outer_fma(tile_x[kk * A_STRIDE + ty], tile_w[kk * B_STRIDE + tx], acc);
        }
        workgroupBarrier();
    }

    let row = row0 + ty * 4u;
    let col = col0 + tx * 4u;
    store_row(acc[0], row, col);
    store_row(acc[1], row + 1u, col);
    store_row(acc[2], row + 2u, col);
    store_row(acc[3], row + 3u, col);
}

// Four outputs of one row from column `col` on, + bias, bounds-checked.
fn store_row(v: vec4<f32>, row: u32, col: u32) {
    let n = params.cout;
    if (row >= params.batch * params.ho * params.wo) {
        return;
    }
    let at = row * n + col;
    if (col < n) {
        y[at] = YT(v.x + bias[col]);
    }
    if (col + 1u < n) {
        y[at + 1u] = YT(v.y + bias[col + 1u]);
    }
    if (col + 2u < n) {
        y[at + 2u] = YT(v.z + bias[col + 2u]);
    }
    if (col + 3u < n) {
        y[at + 3u] = YT(v.w + bias[col + 3u]);
    }
}
