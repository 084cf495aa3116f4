//! Offline shader checks (no GPU needed): every kernel in every specialisation the library
//! can compile is parsed and validated by naga, then translated for each native backend:
//! SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12). A construct one backend cannot take fails
//! here even without that platform. The cooperative-matrix matmul translates to SPIR-V and
//! MSL; DX12 has no cooperative matrices (checked: HLSL refuses them). The SPIR-V, written
//! under wgpu's bounds policies, must index no function-local array or matrix with a
//! non-constant: register blocks are straight-line code that drivers keep in registers.

use backbone::{Kernel, kernels, shader_source};
use naga::back::{hlsl, msl, spv};
use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Validates with the capabilities the variant needs: f16 storage needs SHADER_FLOAT16 (the
/// adapter's `SHADER_F16`); everything else none.
fn validate(label: &str, source: &str, f16: bool) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{label}: WGSL parse error:\n{}", e.emit_to_string(source)));
    let mut caps = Capabilities::empty();
    if f16 {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    if source.contains("enable wgpu_cooperative_matrix;") {
        caps |= Capabilities::COOPERATIVE_MATRIX;
    }
    let subgroups = source.contains("subgroupAdd");
    if subgroups {
        caps |= Capabilities::SUBGROUP;
    }
    let mut validator = Validator::new(ValidationFlags::all(), caps);
    if subgroups {
        validator
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    let info = validator
        .validate(&module)
        .unwrap_or_else(|e| panic!("{label}: validation error:\n{}", e.emit_to_string(source)));
    (module, info)
}

#[test]
fn every_kernel_variant_validates_and_translates_to_spirv_msl_hlsl() {
    let variants = kernels::shader_variants();
    assert!(
        variants.len() > Kernel::ALL.len(),
        "specialised variants are listed"
    );
    for (kernel, spec) in variants {
        let source = shader_source(kernel, &spec);
        let label = format!(
            "{} [{}]",
            kernel.name(),
            format!("{spec:?}").replace('\n', " ")
        );
        let (module, info) = validate(&label, &source, spec.uses_f16());
        assert!(
            module
                .entry_points
                .iter()
                .any(|ep| ep.name == kernel.name()),
            "{label}: no entry point named `{}`",
            kernel.name()
        );

        // SPIR-V as wgpu writes it for Vulkan: index and buffer accesses clamped (Restrict,
        // runtime checks on) or left alone (Unchecked, BACKBONE_SHADER_CHECKS=off).
        let pipeline = spv::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: kernel.name().into(),
        };
        for policy in [BoundsCheckPolicy::Restrict, BoundsCheckPolicy::Unchecked] {
            let options = spv::Options {
                // OpNames, so a finding names its variable
                flags: spv::Options::default().flags | spv::WriterFlags::DEBUG,
                bounds_check_policies: BoundsCheckPolicies {
                    index: policy,
                    buffer: policy,
                    image_load: policy,
                    binding_array: policy,
                },
                ..Default::default()
            };
            let words = spv::write_vec(&module, &info, &options, Some(&pipeline))
                .unwrap_or_else(|e| panic!("{label}: SPIR-V: {e}"));
            let dynamic = function_arrays_indexed_dynamically(&words);
            assert!(
                dynamic.is_empty(),
                "{label} ({policy:?}): function-local arrays indexed by a non-constant (drivers \
                 spill them to memory; write the register block as vectors or unrolled \
                 scalars): {dynamic:?}"
            );
        }

        // Cooperative matrices are Metal's simdgroup matrices, from MSL 2.3 (Metal's adapters
        // report 8x8 fragments, so only that variant is picked there at run time).
        let coop = spec.uses_cooperative_matrix();
        let msl_options = msl::Options {
            lang_version: if coop {
                (2, 3)
            } else {
                msl::Options::default().lang_version
            },
            ..Default::default()
        };
        msl::write_string(
            &module,
            &info,
            &msl_options,
            &msl::PipelineOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{label}: MSL: {e}"));

        // DX12 takes f16 from shader model 6.2 (DXC), as wgpu asks for with SHADER_F16.
        let options = hlsl::Options {
            shader_model: if spec.uses_f16() {
                hlsl::ShaderModel::V6_2
            } else {
                hlsl::Options::default().shader_model
            },
            ..Default::default()
        };
        let pipeline = hlsl::PipelineOptions::default();
        let mut out = String::new();
        let hlsl = hlsl::Writer::new(&mut out, &options, &pipeline).write(&module, &info, None);
        if coop {
            // DX12 has no cooperative matrices in wgpu (its adapters never report the feature,
            // so this variant is never chosen there) and naga's HLSL writer refuses them. If
            // this starts to pass, the variant can be tested on DX12.
            assert!(
                hlsl.is_err(),
                "{label}: HLSL now takes cooperative matrices"
            );
        } else {
            hlsl.unwrap_or_else(|e| panic!("{label}: HLSL: {e}"));
        }
    }
}

/// `OpAccessChain`s into a Function-storage array or matrix (a local variable, or one naga
/// made to index a value) whose index is not a constant: what drivers tend to place in local
/// memory instead of registers. Each is named by its variable's `OpName` where it has one.
fn function_arrays_indexed_dynamically(words: &[u32]) -> Vec<String> {
    use std::collections::{HashMap, HashSet};
    const OP_NAME: u32 = 5;
    const OP_TYPE_MATRIX: u32 = 24;
    const OP_TYPE_ARRAY: u32 = 28;
    const OP_TYPE_POINTER: u32 = 32;
    const OP_CONSTANT: u32 = 43;
    const OP_SPEC_CONSTANT: u32 = 50;
    const OP_VARIABLE: u32 = 59;
    const OP_ACCESS_CHAIN: u32 = 65;
    const OP_IN_BOUNDS_ACCESS_CHAIN: u32 = 66;
    const FUNCTION: u32 = 7;
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut aggregates = HashSet::new(); // array and matrix type ids
    let mut pointers: HashMap<u32, (u32, u32)> = HashMap::new(); // type id -> (storage, pointee)
    let mut constants = HashSet::new();
    let mut arrays: HashMap<u32, u32> = HashMap::new(); // pointer id -> the variable it is in
    let mut found = Vec::new();
    let mut at = 5; // past the header
    while at < words.len() {
        let (count, op) = ((words[at] >> 16) as usize, words[at] & 0xffff);
        assert!(
            count > 0 && at + count <= words.len(),
            "malformed SPIR-V at word {at}"
        );
        let ins = &words[at + 1..at + count];
        match op {
            OP_NAME => {
                let bytes: Vec<u8> = ins[1..].iter().flat_map(|w| w.to_le_bytes()).collect();
                let name = bytes.split(|&b| b == 0).next().unwrap_or_default();
                names.insert(ins[0], String::from_utf8_lossy(name).into_owned());
            }
            OP_TYPE_MATRIX | OP_TYPE_ARRAY => {
                aggregates.insert(ins[0]);
            }
            OP_TYPE_POINTER => {
                pointers.insert(ins[0], (ins[1], ins[2]));
            }
            OP_CONSTANT | OP_SPEC_CONSTANT => {
                constants.insert(ins[1]);
            }
            OP_VARIABLE
                if ins[2] == FUNCTION
                    && pointers
                        .get(&ins[0])
                        .is_some_and(|p| aggregates.contains(&p.1)) =>
            {
                arrays.insert(ins[1], ins[1]);
            }
            OP_ACCESS_CHAIN | OP_IN_BOUNDS_ACCESS_CHAIN => {
                let (ty, id, base) = (ins[0], ins[1], ins[2]);
                if let Some(&var) = arrays.get(&base) {
                    if !constants.contains(&ins[3]) {
                        let name = names.get(&var).cloned().unwrap_or(format!("%{var}"));
                        found.push(name);
                    }
                    if pointers.get(&ty).is_some_and(|p| aggregates.contains(&p.1)) {
                        arrays.insert(id, var);
                    }
                }
            }
            _ => {}
        }
        at += count;
    }
    found.sort();
    found.dedup();
    found
}

/// Every `.wgsl` file is a kernel the library knows (or the shared helpers), opens with a
/// header comment naming itself, and every kernel has its file.
#[test]
fn shader_files_match_the_kernel_list() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("shaders/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".wgsl"))
        .collect();
    files.sort();
    let mut expected: Vec<String> = Kernel::ALL
        .iter()
        .map(|k| format!("{}.wgsl", k.name()))
        .collect();
    expected.push("common.wgsl".into());
    expected.sort();
    assert_eq!(files, expected, "shaders/ and Kernel::ALL disagree");
    for kernel in Kernel::ALL {
        let header = format!("// {}:", kernel.name());
        assert!(
            kernel.wgsl().starts_with(&header),
            "shaders/{}.wgsl must open with a header comment `{header} ...`",
            kernel.name()
        );
    }
}

/// Browsers' WGSL compilers (Tint) reject a decimal literal that rounds past the f32 range,
/// where naga rounds it quietly: the f32 extremes must be written in hex (`F32_LOWEST`).
#[test]
fn no_decimal_literal_outside_the_f32_range() {
    let files = Kernel::ALL
        .iter()
        .map(|k| (k.name(), k.wgsl()))
        .chain([("common", include_str!("../shaders/common.wgsl"))]);
    for (name, source) in files {
        for (i, line) in source.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("e+38") && !code.contains("e38"),
                "shaders/{name}.wgsl:{}: {line}",
                i + 1
            );
        }
    }
}
