// Helpers shared by every kernel. This file is prepended (after the specialisation
// constants) to each kernel's source; it declares no bindings and no entry points.

// The lowest finite f32, torch.finfo(torch.float32).min: Hugging Face's additive mask value
// and the start of running maxima. Written in hex: browsers' WGSL compilers reject a decimal
// literal that rounds past the f32 range.
const F32_LOWEST: f32 = -0x1.fffffep+127f;

// erf(x) by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), returned as the pair
// (erf(|x|), erfc(|x|)) so callers near -inf avoid the cancellation in 1 + erf(x).
fn erf_erfc_abs(x: f32) -> vec2<f32> {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741
        + t * (-1.453152027 + t * 1.061405429))));
    let erfc = poly * exp(-z * z);
    return vec2<f32>(1.0 - erfc, erfc);
}

// GELU, exact erf form as PyTorch's default: 0.5 * x * (1 + erf(x / sqrt(2))).
fn gelu_erf(x: f32) -> f32 {
    let e = erf_erfc_abs(x * 0.70710678118654752);
    // x >= 0: 1 + erf = 2 - erfc;  x < 0: 1 + erf(x) = 1 - erf(|x|) = erfc(|x|).
    let one_plus_erf = select(e.y, 2.0 - e.y, x >= 0.0);
    return 0.5 * x * one_plus_erf;
}

// A matmul epilogue's activation, by `Activation::code`: 0 none, 1 exact GELU, 2 tanh, 3 ReLU
// (the kernels pass their ACT constant, so the choice folds away).
fn activate(v: f32, act: u32) -> f32 {
    switch act {
        case 1u: { return gelu_erf(v); }
        case 2u: { return tanh(v); }
        case 3u: { return max(v, 0.0); }
        default: { return v; }
    }
}

// One K step of a 4 x 4 register block: acc + outer(a, b), where column r of the block holds
// row r's four outputs (a: four rows' values at this k, b: four columns' values). Straight-line
// code on vectors, so the block stays in registers (no loop-indexed local array to spill).
fn outer_fma(a: vec4<f32>, b: vec4<f32>, acc: mat4x4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(
        fma(vec4<f32>(a.x), b, acc[0]),
        fma(vec4<f32>(a.y), b, acc[1]),
        fma(vec4<f32>(a.z), b, acc[2]),
        fma(vec4<f32>(a.w), b, acc[3]),
    );
}

// A register block (as `outer_fma` keeps it: column r is row r) with row r scaled by v[r].
fn scale_rows(m: mat4x4<f32>, v: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(m[0] * v.x, m[1] * v.y, m[2] * v.z, m[3] * v.w);
}

// Linear workgroup index of a grid spread over x and y (see `pipeline::grid_1d`).
fn linear_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Row reductions: kernels that reduce one row per workgroup use REDUCE_WG invocations and
// this scratch array (a module-scope variable, since WGSL cannot pass workgroup pointers to
// functions; it costs nothing in kernels that do not use it). Call from uniform control
// flow; every invocation gets the result.
const REDUCE_WG: u32 = 256u;
var<workgroup> reduce_scratch: array<f32, REDUCE_WG>;

fn workgroup_sum(lid: u32, v: f32) -> f32 {
    reduce_scratch[lid] = v;
    workgroupBarrier();
    for (var s = REDUCE_WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            reduce_scratch[lid] += reduce_scratch[lid + s];
        }
        workgroupBarrier();
    }
    let total = reduce_scratch[0];
    workgroupBarrier();
    return total;
}

fn workgroup_max(lid: u32, v: f32) -> f32 {
    reduce_scratch[lid] = v;
    workgroupBarrier();
    for (var s = REDUCE_WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            reduce_scratch[lid] = max(reduce_scratch[lid], reduce_scratch[lid + s]);
        }
        workgroupBarrier();
    }
    let m = reduce_scratch[0];
    workgroupBarrier();
    return m;
}

// The uniform of the matmul kernels (matmul, matmul_coop, matmul_subgroup): sizes, leading
// dimensions, alpha, and each operand's offset and batch strides (`kernels::matmul::Params`).
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    batch_inner: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    alpha: f32,
    x_offset: u32,
    x_outer: u32,
    x_inner: u32,
    _pad0: u32,
    w_offset: u32,
    w_outer: u32,
    w_inner: u32,
    _pad1: u32,
    y_offset: u32,
    y_outer: u32,
    y_inner: u32,
    y_split: u32, // split-K: elements between the partial products of consecutive splits
}
