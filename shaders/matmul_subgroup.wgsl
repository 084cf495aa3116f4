// matmul_subgroup: the matmul (Y = epilogue(alpha * X · Wᵀ), batched and strided, the same
// operands, views, MatmulParams and epilogue as matmul.wgsl) for a few rows, as dot products reduced
// across a subgroup: the shape of a batch-1 head or pooler, where a tiled kernel computes mostly
// padding rows.
//   x:        batch of (M, K) XT, as matmul.wgsl
//   w:        batch of (N, K) WT when W_NK, else (K, N), as matmul.wgsl
//   bias:     (N) f32 (dummy when !HAS_BIAS)
//   residual: laid out exactly as y, YT (dummy when !HAS_RESIDUAL)
//   x4, w4:   x and w as vec4s, read when VEC_X and VEC_W (W_NK, K % 4 == 0, aligned views)
//   y:        batch of (M, N) YT
// A workgroup of 64 invocations owns MR rows and NC columns of Y for one batch entry: grid
// (ceil(N/NC), ceil(M/MR), batch). Each subgroup takes columns subgroup_id, subgroup_id +
// num_subgroups, ...; its invocations stride along K (four k at a time with vec4 loads),
// accumulating MR = 4 partial dot products of one W row with the X rows in one vec4 (straight-
// line per row, no loop-indexed local array), which one subgroupAdd then reduces; the first invocation of the subgroup applies the epilogue and writes. No
// workgroup memory and no barrier; any subgroup size works. f32 accumulation whatever the
// storage types. Needs the adapter's SUBGROUP feature.
// Specialisation: MR, NC, W_NK, VEC_X, VEC_W, HAS_BIAS, HAS_RESIDUAL, ACT, XT, WT, YT.

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(1) var<storage, read> x: array<XT>;
@group(0) @binding(2) var<storage, read> w: array<WT>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<YT>;
@group(0) @binding(5) var<storage, read> x4: array<vec4<XT>>;
@group(0) @binding(6) var<storage, read> w4: array<vec4<WT>>;
@group(0) @binding(7) var<storage, read_write> y: array<YT>;

const_assert (MR == 4u);

@compute @workgroup_size(64)
fn matmul_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) sg_count: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
) {
    let m = params.m;
    let n = params.n;
    let k = params.k;
    let outer = wid.z / params.batch_inner;
    let inner = wid.z % params.batch_inner;
    let x_base = params.x_offset + outer * params.x_outer + inner * params.x_inner;
    let w_base = params.w_offset + outer * params.w_outer + inner * params.w_inner;
    let y_base = params.y_offset + outer * params.y_outer + inner * params.y_inner;
    let row0 = wid.y * MR;
    let rows = min(MR, m - row0);

    for (var c = sg; c < NC; c += sg_count) {
        let col = wid.x * NC + c;
        if (col >= n) {
            break;
        }
        var acc = vec4<f32>(0.0); // rows row0 + 0..3
        if (VEC_X && VEC_W) {
            let w_at = (w_base + col * params.ldb) / 4u;
            let x_at = (x_base + row0 * params.lda) / 4u;
            let x_row = params.lda / 4u;
            for (var kq = lane; kq < k / 4u; kq += lanes) {
                let wv = vec4<f32>(w4[w_at + kq]);
                acc.x += dot(vec4<f32>(x4[x_at + kq]), wv);
                if (rows > 1u) {
                    acc.y += dot(vec4<f32>(x4[x_at + x_row + kq]), wv);
                }
                if (rows > 2u) {
                    acc.z += dot(vec4<f32>(x4[x_at + 2u * x_row + kq]), wv);
                }
                if (rows > 3u) {
                    acc.w += dot(vec4<f32>(x4[x_at + 3u * x_row + kq]), wv);
                }
            }
        } else {
            let x_at = x_base + row0 * params.lda;
            let x_row = params.lda;
            for (var kk = lane; kk < k; kk += lanes) {
                var wv: f32;
                if (W_NK) {
                    wv = f32(w[w_base + col * params.ldb + kk]);
                } else {
                    wv = f32(w[w_base + kk * params.ldb + col]);
                }
                acc.x = fma(f32(x[x_at + kk]), wv, acc.x);
                if (rows > 1u) {
                    acc.y = fma(f32(x[x_at + x_row + kk]), wv, acc.y);
                }
                if (rows > 2u) {
                    acc.z = fma(f32(x[x_at + 2u * x_row + kk]), wv, acc.z);
                }
                if (rows > 3u) {
                    acc.w = fma(f32(x[x_at + 3u * x_row + kk]), wv, acc.w);
                }
            }
        }
        let total = subgroupAdd(acc);
        if (lane == 0u) {
            store_one(total.x, row0, col, y_base);
            if (rows > 1u) {
                store_one(total.y, row0 + 1u, col, y_base);
            }
            if (rows > 2u) {
                store_one(total.z, row0 + 2u, col, y_base);
            }
            if (rows > 3u) {
                store_one(total.w, row0 + 3u, col, y_base);
            }
        }
    }
}

// alpha, + bias, activation, + residual, then Y in its storage type.
fn store_one(acc: f32, row: u32, col: u32, y_base: u32) {
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
