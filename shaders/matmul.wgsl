// matmul: Y = epilogue(alpha * X · Wᵀ), batched and strided, with a fused epilogue
// (+ bias[n]) (then the activation ACT: 0 none, 1 exact GELU, 2 tanh, 3 ReLU) (then + residual).
//   params:   MatmulParams (common.wgsl): sizes, leading dimensions, alpha, offsets, strides
//   x:        batch of (M, K) XT (f32, or f16 storage read as f32); element (b, m, k) at x_offset + outer(b)*x_outer
//             + inner(b)*x_inner + m*lda + k
//   w:        batch of (N, K) WT (f32 or f16) when W_NK (PyTorch Linear's [out, in]), element (b, n, k) at
//             w_offset + outer*w_outer + inner*w_inner + n*ldb + k; batch of (K, N) otherwise,
//             element (b, k, n) at ... + k*ldb + n
//   bias:     (N) f32 (dummy when !HAS_BIAS)
//   residual: laid out exactly as y, of y's storage type YT (dummy when !HAS_RESIDUAL)
//   y:        batch of (M, N) YT (f32 or f16); element (b, m, n) at y_offset + outer*y_outer
//             + inner*y_inner + m*ldc + n
//   x4, w4:   x and w again, seen as vec4s, for the vectorised loads (VEC_X, VEC_W)
// where batch index b = outer(b) * batch_inner + inner(b).
//
// Tiling: a workgroup owns a BM x BN tile of Y for one batch entry and walks K in steps of
// BK. Each step stages X's BM x BK and W's BK x BN slices in workgroup memory, k-major as
// vec4 rows (padded by one vec4 against bank conflicts). Each of the (BM/TM)*(BN/TN)
// invocations accumulates a TM x TN block of outputs in registers (TM, TN: 4 or 8), as
// (TM/4) x (TN/4) 4x4 sub-blocks spread over the tile so that workgroup-memory reads are whole
// vec4s and neighbouring invocations read neighbouring vec4s. Each sub-block is a mat4x4 local
// updated by straight-line vector code (`outer_fma`), never an array indexed in a loop, so
// drivers keep it in registers; the sub-blocks a tile size does not use are compiled out. Edges are bounds-checked on load (zero
// fill) and store, so any M, N, K works. When the contiguous dimension and every offset and
// stride of an operand are multiples of 4 (VEC_X, VEC_W), its global loads are vec4s.
// Products and the epilogue compute in f32 whatever the storage types; bias is f32.
// Split-K (SPLITS > 1, for products with few rows): workgroup z = batch entry * SPLITS + split,
// and split s walks only its range of K (SPLITS ranges of whole BK steps) and stores its
// partial product at y_base + s * y_split (f32, no epilogue: matmul_split_reduce sums the
// splits in order and applies it). SPLITS = 1 is the plain kernel.
// Specialisation: BM, BN, BK, TM, TN, SPLITS, W_NK, VEC_X, VEC_W, HAS_BIAS, HAS_RESIDUAL, ACT,
// and the storage types XT, WT, YT (aliases to f32 or f16).

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(1) var<storage, read> x: array<XT>;
@group(0) @binding(2) var<storage, read> w: array<WT>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<YT>;
@group(0) @binding(5) var<storage, read> x4: array<vec4<XT>>;
@group(0) @binding(6) var<storage, read> w4: array<vec4<WT>>;
@group(0) @binding(7) var<storage, read_write> y: array<YT>;

const THREADS_M: u32 = BM / TM;
const THREADS_N: u32 = BN / TN;
const WG: u32 = THREADS_M * THREADS_N;
const RM: u32 = TM / 4u; // 4-row sub-blocks per invocation
const RN: u32 = TN / 4u; // 4-column sub-blocks per invocation
const A_STRIDE: u32 = BM / 4u + 1u; // vec4s per k-row of the X tile, padded
const B_STRIDE: u32 = BN / 4u + 1u; // vec4s per k-row of the W tile, padded
const_assert ((TM == 4u || TM == 8u) && (TN == 4u || TN == 8u));

var<workgroup> tile_x: array<vec4<f32>, BK * A_STRIDE>;
var<workgroup> tile_w: array<vec4<f32>, BK * B_STRIDE>;

@compute @workgroup_size(WG)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let m = params.m;
    let n = params.n;
    let k = params.k;
    let split = wid.z % SPLITS;
    let entry = wid.z / SPLITS;
    let outer = entry / params.batch_inner;
    let inner = entry % params.batch_inner;
    let x_base = params.x_offset + outer * params.x_outer + inner * params.x_inner;
    let w_base = params.w_offset + outer * params.w_outer + inner * params.w_inner;
    let y_base = params.y_offset + outer * params.y_outer + inner * params.y_inner
        + split * params.y_split;
    // This split's K range: whole BK steps, the last range cut at K.
    let chunk = (k + SPLITS * BK - 1u) / (SPLITS * BK) * BK;
    let k_begin = min(k, split * chunk);
    let k_end = min(k, k_begin + chunk);
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let tx = tid % THREADS_N;
    let ty = tid / THREADS_N;

    // Sub-block (i, j) covers rows row0 + i*4*THREADS_M + ty*4 + 0..3 and columns
    // col0 + j*4*THREADS_N + tx*4 + 0..3.
    var acc00 = mat4x4<f32>();
    var acc01 = mat4x4<f32>();
    var acc10 = mat4x4<f32>();
    var acc11 = mat4x4<f32>();

    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        // Stage X[row0 .. row0+BM, k0 .. k0+BK], k-major: consecutive invocations read
        // consecutive k (four at a time when VEC_X; K % 4 == 0 then, so a vec4 is all in or out).
        if (VEC_X) {
            for (var l = tid; l < BM * BK / 4u; l += WG) {
                let r = l / (BK / 4u);
                let kq = (l % (BK / 4u)) * 4u;
                var v = vec4<f32>(0.0);
                if (row0 + r < m && k0 + kq < k_end) {
                    v = vec4<f32>(x4[(x_base + (row0 + r) * params.lda + k0 + kq) / 4u]);
                }
                let at = kq * A_STRIDE + r / 4u;
                tile_x[at][r % 4u] = v.x;
                tile_x[at + A_STRIDE][r % 4u] = v.y;
                tile_x[at + 2u * A_STRIDE][r % 4u] = v.z;
                tile_x[at + 3u * A_STRIDE][r % 4u] = v.w;
            }
        } else {
            for (var l = tid; l < BM * BK; l += WG) {
                let r = l / BK;
                let kk = l % BK;
                var v = 0.0;
                if (row0 + r < m && k0 + kk < k_end) {
                    v = f32(x[x_base + (row0 + r) * params.lda + k0 + kk]);
                }
                tile_x[kk * A_STRIDE + r / 4u][r % 4u] = v;
            }
        }
        // Stage W's slice as (BK, BN), k-major.
        if (VEC_W && W_NK) {
            // Four consecutive k of one W row per invocation (K % 4 == 0).
            for (var l = tid; l < BN * BK / 4u; l += WG) {
                let c = l / (BK / 4u);
                let kq = (l % (BK / 4u)) * 4u;
                var v = vec4<f32>(0.0);
                if (col0 + c < n && k0 + kq < k_end) {
                    v = vec4<f32>(w4[(w_base + (col0 + c) * params.ldb + k0 + kq) / 4u]);
                }
                let at = kq * B_STRIDE + c / 4u;
                tile_w[at][c % 4u] = v.x;
                tile_w[at + B_STRIDE][c % 4u] = v.y;
                tile_w[at + 2u * B_STRIDE][c % 4u] = v.z;
                tile_w[at + 3u * B_STRIDE][c % 4u] = v.w;
            }
        } else if (VEC_W) {
            // Four consecutive n of one W row per invocation (N % 4 == 0): one tile vec4.
            for (var l = tid; l < BN * BK / 4u; l += WG) {
                let kk = l / (BN / 4u);
                let cq = (l % (BN / 4u)) * 4u;
                var v = vec4<f32>(0.0);
                if (col0 + cq < n && k0 + kk < k_end) {
                    v = vec4<f32>(w4[(w_base + (k0 + kk) * params.ldb + col0 + cq) / 4u]);
                }
                tile_w[kk * B_STRIDE + cq / 4u] = v;
            }
        } else {
            for (var l = tid; l < BN * BK; l += WG) {
                var c: u32;
                var kk: u32;
                if (W_NK) {
                    c = l / BK;
                    kk = l % BK; // consecutive invocations read consecutive k of one W row
                } else {
                    kk = l / BN;
                    c = l % BN; // consecutive invocations read consecutive n of one W row
                }
                var v = 0.0;
                if (col0 + c < n && k0 + kk < k_end) {
                    if (W_NK) {
                        v = f32(w[w_base + (col0 + c) * params.ldb + k0 + kk]);
                    } else {
                        v = f32(w[w_base + (k0 + kk) * params.ldb + col0 + c]);
                    }
                }
                tile_w[kk * B_STRIDE + c / 4u][c % 4u] = v;
            }
        }
        workgroupBarrier();

        for (var kk = 0u; kk < BK; kk++) {
            let a0 = tile_x[kk * A_STRIDE + ty];
            let b0 = tile_w[kk * B_STRIDE + tx];
            acc00 = outer_fma(a0, b0, acc00);
            var b1 = b0;
            if (RN == 2u) {
                b1 = tile_w[kk * B_STRIDE + THREADS_N + tx];
                acc01 = outer_fma(a0, b1, acc01);
            }
            if (RM == 2u) {
                let a1 = tile_x[kk * A_STRIDE + THREADS_M + ty];
                acc10 = outer_fma(a1, b0, acc10);
                if (RN == 2u) {
                    acc11 = outer_fma(a1, b1, acc11);
                }
            }
        }
        workgroupBarrier();
    }

    // Epilogue, sub-block by sub-block.
    let row = row0 + ty * 4u;
    let col = col0 + tx * 4u;
    let row_step = 4u * THREADS_M;
    let col_step = 4u * THREADS_N;
    store_block(acc00, row, col, y_base);
    if (RN == 2u) {
        store_block(acc01, row, col + col_step, y_base);
    }
    if (RM == 2u) {
        store_block(acc10, row + row_step, col, y_base);
        if (RN == 2u) {
            store_block(acc11, row + row_step, col + col_step, y_base);
        }
    }
}

// The epilogue of a 4 x 4 sub-block whose top-left output is (row, col): column r of `block`
// is row `row + r`.
fn store_block(block: mat4x4<f32>, row: u32, col: u32, y_base: u32) {
    store_row(block[0], row, col, y_base);
    store_row(block[1], row + 1u, col, y_base);
    store_row(block[2], row + 2u, col, y_base);
    store_row(block[3], row + 3u, col, y_base);
}

fn store_row(v: vec4<f32>, row: u32, col: u32, y_base: u32) {
    if (row >= params.m) {
        return;
    }
    store_one(v.x, row, col, y_base);
    store_one(v.y, row, col + 1u, y_base);
    store_one(v.z, row, col + 2u, y_base);
    store_one(v.w, row, col + 3u, y_base);
}

// alpha, + bias, activation, + residual, then Y in its storage type (bounds-checked).
fn store_one(acc: f32, row: u32, col: u32, y_base: u32) {
    if (col >= params.n) {
        return;
    }
    var v = params.alpha * acc;
    if (HAS_BIAS) {
        v += bias[col];
    }
    v = activate(v, ACT);
    let at = y_base + row * params.ldc + col;
    if (HAS_RESIDUAL) {
        v += f32(residual[at]);
    }
    y[at] = YT(v);
}
