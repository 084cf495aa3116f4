//! The GPU context: adapter choice, device with the adapter's own limits and the optional
//! features we use, what we got ([`Capabilities`]), and the pipeline cache.

use std::fmt;

use crate::error::{Error, Result};
use crate::pipeline::PipelineCache;

/// How to pick and open the adapter. [`ContextOptions::from_env`] reads the documented
/// environment variables; the fields can also be set directly.
#[derive(Debug, Clone, Default)]
pub struct ContextOptions {
    /// Restrict to one backend (`BACKBONE_BACKEND`: vulkan|metal|dx12|gl|webgpu).
    pub backend: Option<wgpu::Backend>,
    /// Pick an adapter by its index in [`list_adapters`] or by a case-insensitive substring of
    /// its name (`BACKBONE_ADAPTER`).
    pub adapter: Option<String>,
    /// Cap the limits asked of the device (each field is the minimum of this and the adapter's
    /// own). `None` asks for everything the adapter offers. Useful to emulate a browser.
    pub limit_cap: Option<wgpu::Limits>,
    /// Enable `EXPERIMENTAL_COOPERATIVE_MATRIX` when the adapter has it. Set through
    /// [`ContextOptions::enable_experimental_cooperative_matrix`], which is `unsafe`.
    cooperative_matrix: bool,
    /// Measured kernel-variant choices (`BACKBONE_TUNE`: a file written by
    /// `backbone-bench tune`); used only on the adapter and driver that measured it.
    pub tune_table: Option<crate::tune::TuneTable>,
    /// Whether shader modules keep wgpu's runtime checks (`BACKBONE_SHADER_CHECKS`: on|off;
    /// default on). See [`ShaderChecks`].
    pub shader_checks: ShaderChecks,
    /// For testing the known-answer checks (`BACKBONE_SELF_TEST_FAULT`: a family name): that
    /// family's expected answer is deliberately wrong, so its check fails and turns it off.
    pub self_test_fault: Option<crate::selftest::Family>,
}

/// wgpu's runtime checks in the compiled shaders: index clamping of every buffer access and a
/// counter bounding every loop. They cost registers and instructions in every kernel (a probe
/// on an H100 saw register-tiled WGSL run 3-10x slower with them). Every kernel of this crate
/// guards its own indices and its loops end by construction; the kernel tests run in both modes
/// (outputs prefilled with NaN, sizes off every tile multiple, each compared with its CPU twin).
/// Only this crate's own kernels are ever compiled, never user-supplied WGSL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShaderChecks {
    /// wgpu's default: bounds checks and loop bounding on.
    #[default]
    On,
    /// Trusted modules: no index clamping, no loop bounding.
    Off,
}

impl ShaderChecks {
    /// `on` or `off` (as `BACKBONE_SHADER_CHECKS` and `--shader-checks` take it).
    pub fn parse(value: &str) -> Result<Self> {
        match value.to_ascii_lowercase().as_str() {
            "on" | "1" | "true" => Ok(Self::On),
            "off" | "0" | "false" => Ok(Self::Off),
            _ => Err(Error::InvalidOption {
                name: "BACKBONE_SHADER_CHECKS",
                value: value.to_string(),
                expected: "on or off",
            }),
        }
    }
}

impl ContextOptions {
    /// Options from `BACKBONE_BACKEND`, `BACKBONE_ADAPTER`, `BACKBONE_SHADER_CHECKS` (on|off)
    /// and `BACKBONE_TUNE` (a tune table file; a file that cannot be read or parsed is an
    /// error naming it).
    pub fn from_env() -> Result<Self> {
        let mut options = Self::from_values(
            std::env::var("BACKBONE_BACKEND").ok().as_deref(),
            std::env::var("BACKBONE_ADAPTER").ok().as_deref(),
        )?;
        if let Some(value) = std::env::var("BACKBONE_SHADER_CHECKS")
            .ok()
            .filter(|v| !v.is_empty())
        {
            options.shader_checks = ShaderChecks::parse(&value)?;
        }
        if let Some(value) = std::env::var("BACKBONE_SELF_TEST_FAULT")
            .ok()
            .filter(|v| !v.is_empty())
        {
            options.self_test_fault = Some(crate::selftest::Family::parse(&value)?);
        }
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(path) = std::env::var_os("BACKBONE_TUNE").filter(|p| !p.is_empty()) {
            options.tune_table = Some(crate::tune::TuneTable::load(std::path::Path::new(&path))?);
        }
        Ok(options)
    }

    /// Options from the values of `BACKBONE_BACKEND` and `BACKBONE_ADAPTER` (empty = unset).
    pub fn from_values(backend: Option<&str>, adapter: Option<&str>) -> Result<Self> {
        let backend = backend
            .filter(|s| !s.is_empty())
            .map(parse_backend)
            .transpose()?;
        let adapter = adapter.filter(|s| !s.is_empty()).map(str::to_string);
        Ok(Self {
            backend,
            adapter,
            ..Self::default()
        })
    }

    /// Opt in to wgpu's experimental cooperative-matrix (tensor core) feature.
    ///
    /// # Safety
    /// wgpu marks experimental features unsafe: their implementation may contain bugs that lead
    /// to undefined behaviour. See `wgpu::ExperimentalFeatures::enabled`.
    pub unsafe fn enable_experimental_cooperative_matrix(mut self) -> Self {
        self.cooperative_matrix = true;
        self
    }
}

fn parse_backend(value: &str) -> Result<wgpu::Backend> {
    Ok(match value.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => wgpu::Backend::Vulkan,
        "metal" => wgpu::Backend::Metal,
        "dx12" | "d3d12" => wgpu::Backend::Dx12,
        "gl" | "gles" | "opengl" => wgpu::Backend::Gl,
        "webgpu" | "browser" => wgpu::Backend::BrowserWebGpu,
        // wgpu's do-nothing backend (also needs WGPU_NOOP_BACKEND=1): kernels do not run, so
        // it serves only to measure what recording costs the host without a driver.
        "noop" => wgpu::Backend::Noop,
        _ => {
            return Err(Error::InvalidOption {
                name: "BACKBONE_BACKEND",
                value: value.to_string(),
                expected: "one of vulkan, metal, dx12, gl, webgpu, noop",
            });
        }
    })
}

/// What the opened device can do.
#[derive(Debug, Clone)]
pub struct Capabilities {
    pub adapter: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    /// Smallest and largest subgroup size the adapter may use (0 when SUBGROUP is missing).
    pub subgroup_size: (u32, u32),
    /// Cooperative-matrix shapes the adapter offers (empty unless the feature was enabled).
    pub cooperative_matrix: Vec<wgpu::CooperativeMatrixProperties>,
    /// Nanoseconds per timestamp tick.
    pub timestamp_period_ns: f32,
    /// Whether the shader modules keep wgpu's runtime checks.
    pub shader_checks: ShaderChecks,
}

impl Capabilities {
    pub fn has(&self, feature: wgpu::Features) -> bool {
        self.features.contains(feature)
    }

    /// Whether kernels can store f16 (`SHADER_F16`, WebGPU's `shader-f16`).
    pub fn shader_f16(&self) -> bool {
        self.has(wgpu::Features::SHADER_F16)
    }

    /// Whether timestamp queries around compute passes work.
    pub fn timestamps(&self) -> bool {
        self.has(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// A CPU adapter (lavapipe, llvmpipe, WARP, SwiftShader): correct but slow.
    pub fn is_software(&self) -> bool {
        self.adapter.device_type == wgpu::DeviceType::Cpu
    }
}

impl AsRef<wgpu::AdapterInfo> for Capabilities {
    fn as_ref(&self) -> &wgpu::AdapterInfo {
        &self.adapter
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.adapter;
        let name = if a.name.is_empty() {
            "unnamed adapter"
        } else {
            &a.name
        };
        write!(f, "{name} ({:?}, {:?}", a.backend, a.device_type)?;
        if !a.driver.is_empty() {
            write!(f, ", driver {} {}", a.driver, a.driver_info)?;
        }
        let mut names = Vec::new();
        for (flag, name) in [
            (wgpu::Features::SHADER_F16, "f16"),
            (wgpu::Features::SUBGROUP, "subgroup"),
            (wgpu::Features::TIMESTAMP_QUERY, "timestamps"),
            (wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX, "coopmat"),
        ] {
            if self.has(flag) {
                names.push(name);
            }
        }
        write!(f, "; features [{}]", names.join(", "))?;
        if self.shader_checks == ShaderChecks::Off {
            write!(f, "; shader runtime checks off")?;
        }
        write!(
            f,
            "; workgroup storage {} B, {} invocations, storage binding {} MiB)",
            self.limits.max_compute_workgroup_storage_size,
            self.limits.max_compute_invocations_per_workgroup,
            self.limits.max_storage_buffer_binding_size >> 20
        )
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use crate::adapter::list_adapters;

/// One opened GPU device, with the pipelines compiled for it. Cheap to share by reference;
/// all methods take `&self`.
pub struct Context {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    caps: Capabilities,
    pub(crate) pipelines: PipelineCache,
    /// A small zeroed buffer bound where an optional input (bias, residual) is absent.
    pub(crate) dummy: wgpu::Buffer,
    /// Why the device was lost, once wgpu has said so.
    lost: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// The tune table, when one was given for this adapter and driver.
    tune: Option<crate::tune::TuneTable>,
    created: Created,
    /// Kernel families turned off because their known-answer check failed, with why.
    disabled: std::sync::Mutex<Vec<(crate::selftest::Family, String)>>,
    /// Split-K's partial products: one f32 buffer, grown to the largest asked for and reused
    /// by every split product (dispatches on one queue run in order, so they can share it).
    split_scratch: std::sync::Mutex<Option<crate::Tensor>>,
}

/// Live GPU objects of a device, and how many this crate has created so far
/// ([`Context::resource_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceCounts {
    /// Live buffers (wgpu's own, e.g. the staging of queued writes, included).
    pub buffers: u64,
    pub buffer_bytes: u64,
    /// Live bind groups.
    pub bind_groups: u64,
    /// Buffers this crate has created on this context since it was opened.
    pub buffers_created: u64,
    /// Bind groups this crate has created on this context since it was opened.
    pub bind_groups_created: u64,
}

/// What this crate has created on a context (cumulative).
#[derive(Debug, Default)]
struct Created {
    buffers: std::sync::atomic::AtomicU64,
    bind_groups: std::sync::atomic::AtomicU64,
}

impl Context {
    /// Opens the best adapter allowed by `options`.
    pub async fn new(options: ContextOptions) -> Result<Self> {
        let instance = crate::adapter::new_instance(options.backend);
        let adapter = crate::adapter::select_adapter(&instance, &options).await?;
        Self::from_adapter(adapter, &options).await
    }

    /// [`Context::new`] with [`ContextOptions::from_env`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_env_blocking() -> Result<Self> {
        pollster::block_on(Self::new(ContextOptions::from_env()?))
    }

    async fn from_adapter(adapter: wgpu::Adapter, options: &ContextOptions) -> Result<Self> {
        let available = adapter.features();
        let mut wanted = wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        let mut experimental = wgpu::ExperimentalFeatures::disabled();
        if options.cooperative_matrix {
            wanted |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            // SAFETY: the caller opted in through the unsafe
            // `ContextOptions::enable_experimental_cooperative_matrix`.
            experimental = unsafe { wgpu::ExperimentalFeatures::enabled() };
        }
        let features = available & wanted;
        let mut limits = adapter.limits();
        if let Some(cap) = &options.limit_cap {
            limits = crate::adapter::cap_limits(limits, cap);
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("backbone"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: experimental,
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await?;
        Self::assemble(&adapter, device, queue, options, true).await
    }

    /// A context on a device the caller already has (an application's renderer, say), opened
    /// from `adapter` with the features and limits the caller chose: `SHADER_F16`, `SUBGROUP`
    /// and `TIMESTAMP_QUERY` are used where that device has them. The known-answer checks run
    /// on it as on a device this crate opens. The device's error and device-lost callbacks stay
    /// the caller's (this crate sets none on a device it did not open), so a lost device shows
    /// as wgpu errors rather than [`Error::DeviceLost`]. wgpu devices and queues are handles:
    /// pass clones and keep using them.
    pub async fn from_device(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: &ContextOptions,
    ) -> Result<Self> {
        Self::assemble(adapter, device, queue, options, false).await
    }

    /// [`Context::from_device`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_device_blocking(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: &ContextOptions,
    ) -> Result<Self> {
        pollster::block_on(Self::from_device(adapter, device, queue, options))
    }

    /// The context around an opened device; `own`: this crate opened it and may set its
    /// callbacks.
    async fn assemble(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: &ContextOptions,
        own: bool,
    ) -> Result<Self> {
        let features = device.features();
        let lost = std::sync::Arc::new(std::sync::Mutex::new(None));
        if own {
            // Errors outside our error scopes (from code that uses the device directly) are
            // logged rather than panicking, wgpu's default.
            device.on_uncaptured_error(std::sync::Arc::new(|e| log::error!("wgpu: {e}")));
            // A lost device (driver reset, unplugged GPU, `destroy`) turns every later call into
            // an `Error::DeviceLost` instead of work on dead objects.
            let flag = lost.clone();
            device.set_device_lost_callback(move |reason, message| {
                log::error!("wgpu: device lost ({reason:?}): {message}");
                *flag.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("{reason:?}: {message}"));
            });
        }
        let info = adapter.get_info();
        let cooperative_matrix =
            if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
                adapter.cooperative_matrix_properties()
            } else {
                Vec::new()
            };
        let subgroup_size = if features.contains(wgpu::Features::SUBGROUP) {
            (info.subgroup_min_size, info.subgroup_max_size)
        } else {
            (0, 0)
        };
        let caps = Capabilities {
            adapter: info,
            features: device.features(),
            limits: device.limits(),
            subgroup_size,
            cooperative_matrix,
            timestamp_period_ns: queue.get_timestamp_period(),
            shader_checks: options.shader_checks,
        };
        let tune = match &options.tune_table {
            Some(t) if t.matches(&caps) => Some(t.clone()),
            Some(t) => {
                log::warn!(
                    "tune table measured on {} ({}, driver {}) ignored on {}: the built-in \
                     choices apply",
                    t.adapter,
                    t.backend,
                    t.driver,
                    caps.adapter.name
                );
                None
            }
            None => None,
        };
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("backbone.dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let ctx = Self {
            device,
            queue,
            caps,
            pipelines: PipelineCache::default(),
            dummy,
            lost,
            tune,
            created: Created::default(),
            disabled: std::sync::Mutex::new(Vec::new()),
            split_scratch: std::sync::Mutex::new(None),
        };
        crate::selftest::run(&ctx, options.self_test_fault).await;
        Ok(ctx)
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.caps.limits
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Whether shader modules are built with wgpu's runtime checks ([`ShaderChecks`]).
    pub fn shader_checks(&self) -> bool {
        self.caps.shader_checks == ShaderChecks::On
    }

    /// The tune table in use (given, and measured on this adapter and driver).
    pub fn tune_table(&self) -> Option<&crate::tune::TuneTable> {
        self.tune.as_ref()
    }

    /// `Err(Error::DeviceLost)` once the device is lost: a new `Context` is needed then.
    pub fn check_device(&self) -> Result<()> {
        match &*self.lost.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(reason) => Err(Error::DeviceLost {
                reason: reason.clone(),
            }),
        }
    }

    /// Live GPU objects of this device, after freeing what finished work released: for
    /// checking that long runs do not leak. Zeros where the backend keeps no counts (the web).
    pub fn resource_counts(&self) -> ResourceCounts {
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.device.poll(wgpu::PollType::Poll);
        let c = self.device.get_internal_counters();
        let created =
            |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        ResourceCounts {
            buffers: c.hal.buffers.read().max(0) as u64,
            buffer_bytes: c.hal.buffer_memory.read().max(0) as u64,
            bind_groups: c.hal.bind_groups.read().max(0) as u64,
            buffers_created: created(&self.created.buffers),
            bind_groups_created: created(&self.created.bind_groups),
        }
    }

    /// Creates a buffer, counted in [`ResourceCounts::buffers_created`].
    /// An f32 scratch tensor of `shape` for split-K partial products, sharing the context's
    /// one scratch buffer (grown when too small; the old one lives on in recorded work).
    pub(crate) fn split_scratch(&self, shape: &[usize]) -> crate::Result<crate::Tensor> {
        let mut slot = self
            .split_scratch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let needed = crate::tensor::numel(shape);
        if slot.as_ref().is_none_or(|t| t.numel() < needed) {
            *slot = Some(crate::Tensor::empty(
                self,
                &[needed],
                crate::DType::F32,
                "split-K partial products",
            )?);
        }
        let scratch = slot.as_ref().expect("just filled");
        Ok(scratch.view_as(shape))
    }

    pub(crate) fn create_buffer(&self, desc: &wgpu::BufferDescriptor<'_>) -> wgpu::Buffer {
        (self.created.buffers).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.device.create_buffer(desc)
    }

    /// Creates a bind group, counted in [`ResourceCounts::bind_groups_created`].
    pub(crate) fn create_bind_group(
        &self,
        desc: &wgpu::BindGroupDescriptor<'_>,
    ) -> wgpu::BindGroup {
        (self.created.bind_groups).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.device.create_bind_group(desc)
    }

    /// The compiled pipeline of `kernel` with `spec` (compiled on first use; a pipeline that
    /// fails to build is an error and is not kept).
    pub(crate) fn pipeline(
        &self,
        kernel: crate::pipeline::Kernel,
        spec: &crate::pipeline::Spec,
    ) -> Result<std::sync::Arc<crate::pipeline::Pipeline>> {
        self.pipelines
            .get(&self.device, kernel, spec, self.shader_checks())
    }

    /// Whether `family` may be used: not turned off by a failed known-answer check.
    pub fn family_enabled(&self, family: crate::selftest::Family) -> bool {
        !self
            .disabled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(f, _)| *f == family)
    }

    /// Kernel families turned off when the context opened because their known-answer check
    /// failed on this adapter, each with the reason (adapter and driver named).
    pub fn disabled_families(&self) -> Vec<(crate::selftest::Family, String)> {
        self.disabled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn disable_family(&self, family: crate::selftest::Family, reason: String) {
        let mut disabled = self.disabled.lock().unwrap_or_else(|e| e.into_inner());
        if !disabled.iter().any(|(f, _)| *f == family) {
            disabled.push((family, reason));
        }
    }

    /// Number of distinct compiled pipelines so far (each (kernel, specialisation) once).
    pub fn pipelines_compiled(&self) -> usize {
        self.pipelines.len()
    }

    /// Blocks until all submitted work is done (native only: the web has no blocking waits).
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn poll_wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Gpu {
                during: "waiting for the GPU".into(),
                message: e.to_string(),
            })
    }
}
