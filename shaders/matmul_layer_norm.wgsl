// matmul_layer_norm: the post-norm transformer's "linear, add & norm" in one dispatch:
//   s = X · Wᵀ (+ bias) + residual,   y = (s - mean(s)) / sqrt(var(s) + eps) * gamma + beta
// per row (biased variance, two passes over the row: mean, then squared deviations).
//   params:   m, n, k, eps
//   x:        (M, K) XT (f32 or f16 storage), row-major
//   w:        (N, K) WT (f32 or f16), row-major (PyTorch Linear's [out, in])
//   bias:     (N) f32 (dummy when !HAS_BIAS)
//   residual: (M, N) YT, row-major
//   gamma:    (N) f32
//   beta:     (N) f32
//   y:        (M, N) YT (f32 or f16), row-major
// A workgroup owns BM = 16 whole rows of Y. It walks the columns in chunks of BN = 256 and,
// per chunk, K in steps of KT = 8: X's 16 x 8 and W's 8 x 256 slices are staged in workgroup
// memory (W read 8 consecutive k per column), and each of the 256 invocations (4 row groups x
// 64 column lanes) accumulates a 4 x 4 block (4 rows x 4 neighbouring columns) in four vec4s,
// 16 multiply-adds per two vec4 reads. The sums s go to y in its storage type (exactly what
// the unfused matmul would store for the norm to read); after a storage barrier the workgroup
// reads its own rows back, 16 invocations per row, for the mean, the variance and the
// normalised values. Edges are bounds-checked (zero fill on load, no store past M or N), so
// any M, N, K works. Products, sums and the normalisation compute in f32.
// Specialisation: HAS_BIAS and the storage types XT, WT, YT.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<XT>;
@group(0) @binding(2) var<storage, read> w: array<WT>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<YT>;
@group(0) @binding(5) var<storage, read> gamma: array<f32>;
@group(0) @binding(6) var<storage, read> beta: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<YT>;

const BM: u32 = 16u;
const BN: u32 = 256u;
const KT: u32 = 8u;
const WG: u32 = 256u;
const LANES: u32 = WG / BM; // invocations per row in the norm

// X's slice as vec4s of 4 rows: element (row r, k kk) at tile_x[kk * 4 + r / 4][r % 4].
var<workgroup> tile_x: array<vec4<f32>, KT * 4u>;
// W's slice as vec4s of 4 columns: element (k kk, column c) at tile_w[kk * 64 + c / 4][c % 4].
var<workgroup> tile_w: array<vec4<f32>, KT * (BN / 4u)>;
var<workgroup> row_sums: array<f32, WG>;

// The sum over each row's LANES invocations (lid / LANES is the row); every invocation gets
// its row's sum. Call from uniform control flow.
fn row_sum(lid: u32, v: f32) -> f32 {
    row_sums[lid] = v;
    workgroupBarrier();
    let lane = lid % LANES;
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            row_sums[lid] += row_sums[lid + s];
        }
        workgroupBarrier();
    }
    let total = row_sums[lid - lane];
    workgroupBarrier();
    return total;
}

// y[row, c..c+4] = sums + bias + residual, for the columns and row inside Y.
fn store_sums(row: u32, c: u32, v: vec4<f32>, b: vec4<f32>) {
    if (row >= params.m) {
        return;
    }
    let s = v + b;
    let i = row * params.n + c;
    if (c < params.n) { y[i] = YT(s.x + f32(residual[i])); }
    if (c + 1u < params.n) { y[i + 1u] = YT(s.y + f32(residual[i + 1u])); }
    if (c + 2u < params.n) { y[i + 2u] = YT(s.z + f32(residual[i + 2u])); }
    if (c + 3u < params.n) { y[i + 3u] = YT(s.w + f32(residual[i + 3u])); }
}

fn bias_at(c: u32) -> f32 {
    if (HAS_BIAS && c < params.n) {
        return bias[c];
    }
    return 0.0;
}

@compute @workgroup_size(256)
fn matmul_layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let m = params.m;
    let n = params.n;
    let k = params.k;
    let row0 = linear_group(wid, nwg) * BM;
    if (row0 >= m) {
        return; // uniform: the whole workgroup leaves
    }
    let ty = lid / (BN / 4u); // row group: rows row0 + 4 ty .. + 3
    let tx = lid % (BN / 4u); // column lane: columns col0 + 4 tx .. + 3

    // s = X · Wᵀ + bias + residual, into y.
    for (var col0 = 0u; col0 < n; col0 += BN) {
        var acc0 = vec4<f32>(0.0);
        var acc1 = vec4<f32>(0.0);
        var acc2 = vec4<f32>(0.0);
        var acc3 = vec4<f32>(0.0);
        for (var k0 = 0u; k0 < k; k0 += KT) {
            if (lid < BM * KT) {
                let r = lid / KT;
                let kk = lid % KT;
                var v = 0.0;
                if (row0 + r < m && k0 + kk < k) {
                    v = f32(x[(row0 + r) * k + k0 + kk]);
                }
                tile_x[kk * 4u + r / 4u][r % 4u] = v;
            }
            for (var i = 0u; i < KT; i++) {
                let idx = i * WG + lid;
                let c = idx / KT;
                let kk = idx % KT;
                var v = 0.0;
                if (col0 + c < n && k0 + kk < k) {
                    v = f32(w[(col0 + c) * k + k0 + kk]);
                }
                tile_w[kk * (BN / 4u) + c / 4u][c % 4u] = v;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < KT; kk++) {
                let a = tile_x[kk * 4u + ty];
                let b = tile_w[kk * (BN / 4u) + tx];
                acc0 += a.x * b;
                acc1 += a.y * b;
                acc2 += a.z * b;
                acc3 += a.w * b;
            }
            workgroupBarrier();
        }
        let c = col0 + 4u * tx;
        let b = vec4<f32>(bias_at(c), bias_at(c + 1u), bias_at(c + 2u), bias_at(c + 3u));
        let r = row0 + 4u * ty;
        store_sums(r, c, acc0, b);
        store_sums(r + 1u, c, acc1, b);
        store_sums(r + 2u, c, acc2, b);
        store_sums(r + 3u, c, acc3, b);
    }
    storageBarrier();

    // LayerNorm of each of the 16 rows, LANES invocations per row.
    let row = row0 + lid / LANES;
    let lane = lid % LANES;
    let live = row < m;
    let base = row * n;
    var sum = 0.0;
    if (live) {
        for (var c = lane; c < n; c += LANES) {
            sum += f32(y[base + c]);
        }
    }
    let mean = row_sum(lid, sum) / f32(n);
    var sq = 0.0;
    if (live) {
        for (var c = lane; c < n; c += LANES) {
            let d = f32(y[base + c]) - mean;
            sq += d * d;
        }
    }
    let inv_std = inverseSqrt(row_sum(lid, sq) / f32(n) + params.eps);
    if (live) {
        for (var c = lane; c < n; c += LANES) {
            y[base + c] = YT((f32(y[base + c]) - mean) * inv_std * gamma[c] + beta[c]);
        }
    }
}
