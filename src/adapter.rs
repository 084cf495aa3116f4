//! Finding an adapter: the ones this build reaches, the best of them (or the one
//! `BACKBONE_ADAPTER` names), and the limits a context asks for.

use crate::context::ContextOptions;
use crate::error::{Error, Result};

/// Adapters this build can reach, in the order `BACKBONE_ADAPTER=<index>` refers to.
#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters() -> Vec<wgpu::AdapterInfo> {
    let instance = new_instance(None);
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.iter().map(|a| a.get_info()).collect()
}

pub(crate) fn new_instance(backend: Option<wgpu::Backend>) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = match backend {
        Some(b) => wgpu::Backends::from(b),
        None => wgpu::Backends::all(),
    };
    wgpu::Instance::new(desc)
}

#[cfg(not(target_arch = "wasm32"))]
/// Lower is better: native APIs before GL (slow cold shader compiles on Mesa), real GPUs
/// before software ones.
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::BrowserWebGpu => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    };
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    (device, backend)
}

pub(crate) async fn select_adapter(
    instance: &wgpu::Instance,
    options: &ContextOptions,
) -> Result<wgpu::Adapter> {
    #[cfg(target_arch = "wasm32")]
    {
        let _ = options;
        return instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter {
                detail: format!(" ({e})"),
            });
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let backends = match options.backend {
            Some(b) => wgpu::Backends::from(b),
            None => wgpu::Backends::all(),
        };
        let adapters = instance.enumerate_adapters(backends).await;
        let names = || {
            adapters
                .iter()
                .map(|a| a.get_info().name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(pick) = &options.adapter {
            let chosen = match pick.parse::<usize>() {
                Ok(index) => adapters.get(index),
                Err(_) => {
                    let needle = pick.to_lowercase();
                    adapters
                        .iter()
                        .find(|a| a.get_info().name.to_lowercase().contains(&needle))
                }
            };
            return chosen.cloned().ok_or_else(|| Error::NoAdapter {
                detail: format!(
                    " matching BACKBONE_ADAPTER={pick:?} (adapters: [{}])",
                    names()
                ),
            });
        }
        let best = adapters.iter().min_by_key(|a| adapter_rank(&a.get_info()));
        best.cloned().ok_or_else(|| Error::NoAdapter {
            detail: match options.backend {
                Some(b) => format!(" for backend {b:?}"),
                None => String::new(),
            },
        })
    }
}

/// Each limit of `limits` lowered to `cap` (for "max" limits) or raised to it (for alignment
/// limits, where bigger is stricter).
pub(crate) fn cap_limits(limits: wgpu::Limits, cap: &wgpu::Limits) -> wgpu::Limits {
    let mut out = limits.clone();
    macro_rules! lower {
        ($($f:ident),*) => { $( out.$f = limits.$f.min(cap.$f); )* };
    }
    lower!(
        max_storage_buffer_binding_size,
        max_buffer_size,
        max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup,
        max_compute_workgroup_size_x,
        max_compute_workgroup_size_y,
        max_compute_workgroup_size_z,
        max_compute_workgroups_per_dimension,
        max_storage_buffers_per_shader_stage,
        max_uniform_buffer_binding_size
    );
    out
}
