// matmul_coop: the matmul (Y = epilogue(alpha * X · Wᵀ), batched and strided, the same
// operands, views, MatmulParams and epilogue as matmul.wgsl) on cooperative matrices (tensor cores):
// f16 A and B fragments, f32 accumulation.
//   x:        batch of (M, K) XT (f32 or f16 storage), as matmul.wgsl
//   w:        batch of (N, K) WT when W_NK, else (K, N), as matmul.wgsl
//   bias:     (N) f32 (dummy when !HAS_BIAS)
//   residual: laid out exactly as y, YT (dummy when !HAS_RESIDUAL)
//   x4, w4:   bound for the layout's sake (the same bindings as matmul), unused
//   y:        batch of (M, N) YT
// One workgroup is one subgroup of SG invocations (the adapter's subgroup size) and owns a
// 2T x 2T tile of Y (T = the fragment size, 16 on NVIDIA/AMD Vulkan, 8 on Metal) as four
// accumulators. Each K step of T stages X's 2T x T and W's 2T x T slices as f16 in workgroup
// memory (zero-filled past the edges, W transposed to n-major when !W_NK), loads two A and two
// B fragments and does four multiply-adds. The accumulators are stored to workgroup memory,
// then every invocation applies the epilogue to its share of the tile, bounds-checked, so any
// M, N, K works. The fragment types come from the specialisation (FRAG_A, FRAG_B, FRAG_C).
// Specialisation: T, SG, FRAG_A, FRAG_B, FRAG_C, W_NK, HAS_BIAS, HAS_RESIDUAL, ACT, XT, WT, YT.

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(1) var<storage, read> x: array<XT>;
@group(0) @binding(2) var<storage, read> w: array<WT>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<YT>;
@group(0) @binding(5) var<storage, read> x4: array<vec4<XT>>;
@group(0) @binding(6) var<storage, read> w4: array<vec4<WT>>;
@group(0) @binding(7) var<storage, read_write> y: array<YT>;

const TILE: u32 = 2u * T; // rows (and columns) of Y per workgroup

// X slice, row-major (TILE rows of T); W slice n-major (TILE rows of T): as B = Wᵀ it is
// column-major with stride T.
var<workgroup> sx: array<f16, TILE * T>;
var<workgroup> sw: array<f16, TILE * T>;
// The accumulated tile, row-major.
var<workgroup> sc: array<f32, TILE * TILE>;

@compute @workgroup_size(SG)
fn matmul_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let m = params.m;
    let n = params.n;
    let k = params.k;
    let outer = wid.z / params.batch_inner;
    let inner = wid.z % params.batch_inner;
    let x_base = params.x_offset + outer * params.x_outer + inner * params.x_inner;
    let w_base = params.w_offset + outer * params.w_outer + inner * params.w_inner;
    let y_base = params.y_offset + outer * params.y_outer + inner * params.y_inner;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;

    var acc00 = FRAG_C();
    var acc01 = FRAG_C();
    var acc10 = FRAG_C();
    var acc11 = FRAG_C();
    for (var k0 = 0u; k0 < k; k0 += T) {
        for (var l = tid; l < TILE * T; l += SG) {
            let r = l / T;
            let kk = l % T;
            var xv = 0.0;
            if (row0 + r < m && k0 + kk < k) {
                xv = f32(x[x_base + (row0 + r) * params.lda + k0 + kk]);
            }
            sx[l] = f16(xv);
            var wv = 0.0;
            if (col0 + r < n && k0 + kk < k) {
                if (W_NK) {
                    wv = f32(w[w_base + (col0 + r) * params.ldb + k0 + kk]);
                } else {
                    wv = f32(w[w_base + (k0 + kk) * params.ldb + col0 + r]);
                }
            }
            sw[l] = f16(wv);
        }
        workgroupBarrier();
        let a0 = coopLoadT<FRAG_A>(&sx[0], T);
        let a1 = coopLoadT<FRAG_A>(&sx[T * T], T);
        let b0 = coopLoad<FRAG_B>(&sw[0], T);
        let b1 = coopLoad<FRAG_B>(&sw[T * T], T);
        acc00 = coopMultiplyAdd(a0, b0, acc00);
        acc01 = coopMultiplyAdd(a0, b1, acc01);
        acc10 = coopMultiplyAdd(a1, b0, acc10);
        acc11 = coopMultiplyAdd(a1, b1, acc11);
        workgroupBarrier();
    }
    coopStoreT(acc00, &sc[0], TILE);
    coopStoreT(acc01, &sc[T], TILE);
    coopStoreT(acc10, &sc[T * TILE], TILE);
    coopStoreT(acc11, &sc[T * TILE + T], TILE);
    workgroupBarrier();

    for (var l = tid; l < TILE * TILE; l += SG) {
        let row = row0 + l / TILE;
        let col = col0 + l % TILE;
        if (row < m && col < n) {
            var v = params.alpha * sc[l];
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
    }
}
