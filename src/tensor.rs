//! GPU tensors: one storage buffer plus a row-major shape and an element type.

use crate::context::Context;
use crate::error::{DTypeName, Error, Result};

/// Element type of a tensor's storage. Kernels compute in f32; f16 is a storage format
/// (weights, activations) that kernels read and write where the adapter has `SHADER_F16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    U32,
}

impl DType {
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }

    pub const fn name(self) -> DTypeName {
        DTypeName(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
        })
    }
}

/// A tensor in GPU memory: a storage buffer, a row-major shape (outermost first) and a dtype.
/// Cloning is cheap and shares the buffer.
#[derive(Debug, Clone)]
pub struct Tensor {
    buffer: wgpu::Buffer,
    shape: Vec<usize>,
    dtype: DType,
}

impl Tensor {
    /// An uninitialised (zeroed by wgpu) tensor.
    pub fn empty(ctx: &Context, shape: &[usize], dtype: DType, label: &str) -> Result<Self> {
        let bytes = byte_size(shape, dtype, label)?;
        check_binding_size(ctx, bytes, label)?;
        ctx.check_device()?;
        let buffer = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Self {
            buffer,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// The same buffer seen with another shape of at most as many elements (same dtype).
    pub(crate) fn view_as(&self, shape: &[usize]) -> Self {
        debug_assert!(numel(shape) <= self.numel());
        Self {
            buffer: self.buffer.clone(),
            shape: shape.to_vec(),
            dtype: self.dtype,
        }
    }

    /// Uploads f32 data.
    pub fn from_f32(ctx: &Context, shape: &[usize], data: &[f32], label: &str) -> Result<Self> {
        Self::from_pod(ctx, shape, DType::F32, data, label)
    }

    /// Uploads f16 data (storage only: kernels that take f16 say so).
    pub fn from_f16(
        ctx: &Context,
        shape: &[usize],
        data: &[half::f16],
        label: &str,
    ) -> Result<Self> {
        Self::from_pod(ctx, shape, DType::F16, data, label)
    }

    /// Uploads u32 data (token ids, masks).
    pub fn from_u32(ctx: &Context, shape: &[usize], data: &[u32], label: &str) -> Result<Self> {
        Self::from_pod(ctx, shape, DType::U32, data, label)
    }

    fn from_pod<T: bytemuck::Pod>(
        ctx: &Context,
        shape: &[usize],
        dtype: DType,
        data: &[T],
        label: &str,
    ) -> Result<Self> {
        let expected = numel(shape);
        if data.len() != expected {
            return Err(Error::DataLength {
                what: format!("tensor `{label}`"),
                shape: shape.to_vec(),
                expected,
                found: data.len(),
            });
        }
        let tensor = Self::empty(ctx, shape, dtype, label)?;
        tensor.write(ctx, data)?;
        Ok(tensor)
    }

    /// Overwrites the whole tensor with host data of the same element count (queued; it
    /// happens before the next submission).
    pub fn write<T: bytemuck::Pod>(&self, ctx: &Context, data: &[T]) -> Result<()> {
        if data.len() != self.numel() || size_of::<T>() != self.dtype.size() {
            return Err(Error::DataLength {
                what: format!("write of {} bytes per element", size_of::<T>()),
                shape: self.shape.clone(),
                expected: self.numel(),
                found: data.len(),
            });
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len().is_multiple_of(4) {
            ctx.queue.write_buffer(&self.buffer, 0, bytes);
        } else {
            // Buffer writes go in multiples of 4 bytes: pad the odd f16 tail.
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            ctx.queue.write_buffer(&self.buffer, 0, &padded);
        }
        Ok(())
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// The same storage seen with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.numel() {
            return Err(Error::Shape {
                op: "reshape",
                arg: "shape",
                expected: format!("{} elements, as in {:?}", self.numel(), self.shape),
                found: shape.to_vec(),
            });
        }
        Ok(Self {
            buffer: self.buffer.clone(),
            shape: shape.to_vec(),
            dtype: self.dtype,
        })
    }

    /// Copies the tensor back to the host as f32 (f16 is widened). Works on the web: it only
    /// awaits the map callback.
    pub async fn read_f32(&self, ctx: &Context) -> Result<Vec<f32>> {
        self.f32_from_bytes(&self.read_bytes(ctx).await?)
    }

    /// This tensor's values, read back as `bytes` (its elements, no padding), as f32 (f16 is
    /// widened; u32 is refused).
    pub(crate) fn f32_from_bytes(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        Ok(match self.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec(bytes),
            DType::F16 => {
                let halves: Vec<half::f16> = bytemuck::pod_collect_to_vec(bytes);
                halves.iter().map(|h| h.to_f32()).collect()
            }
            DType::U32 => {
                return Err(Error::DType {
                    op: "read_f32",
                    arg: "self",
                    expected: DTypeName("f32 or f16"),
                    found: self.dtype.name(),
                });
            }
        })
    }

    /// Copies the tensor back as a host tensor of the same shape (f32).
    pub async fn read_host(&self, ctx: &Context) -> Result<crate::host::HostTensor> {
        crate::host::HostTensor::new(&self.shape, self.read_f32(ctx).await?)
    }

    /// Copies a u32 tensor back to the host.
    pub async fn read_u32(&self, ctx: &Context) -> Result<Vec<u32>> {
        check_dtype("read_u32", "self", self, DType::U32)?;
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(ctx).await?))
    }

    /// [`Tensor::read_f32`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32_blocking(&self, ctx: &Context) -> Result<Vec<f32>> {
        pollster::block_on(self.read_f32(ctx))
    }

    async fn read_bytes(&self, ctx: &Context) -> Result<Vec<u8>> {
        let len = (self.numel() * self.dtype.size()) as u64;
        let padded = len.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT).max(4);
        let staging = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("backbone.readback"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&self.buffer, 0, &staging, 0, Some(padded));
        ctx.queue.submit([encoder.finish()]);
        map_read(ctx, &staging, "tensor").await?;
        let bytes = {
            let view = staging.get_mapped_range(..).map_err(|e| Error::Readback {
                what: "tensor".into(),
                message: e.to_string(),
            })?;
            view[..len as usize].to_vec()
        };
        staging.unmap();
        Ok(bytes)
    }
}

/// Maps `buffer` for reading and waits for it (polling the device on native).
pub(crate) async fn map_read(ctx: &Context, buffer: &wgpu::Buffer, what: &str) -> Result<()> {
    ctx.check_device()?;
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    buffer.map_async(wgpu::MapMode::Read, .., move |result| {
        sender.send(result).ok();
    });
    #[cfg(not(target_arch = "wasm32"))]
    ctx.poll_wait()?;
    #[cfg(target_arch = "wasm32")]
    let _ = ctx;
    match receiver.receive().await {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(Error::Readback {
            what: what.into(),
            message: e.to_string(),
        }),
        None => Err(Error::Readback {
            what: what.into(),
            message: "map callback dropped".into(),
        }),
    }
}

pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn byte_size(shape: &[usize], dtype: DType, label: &str) -> Result<u64> {
    let bytes = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| Error::Argument {
            op: "Tensor::empty",
            arg: "shape",
            reason: format!("{shape:?} overflows for tensor `{label}`"),
        })?;
    // Whole vec4s, so any tensor can also be bound as array<vec4<f32>> (the matmul's vector
    // loads); wgpu buffers may not be empty when bound.
    Ok(bytes.next_multiple_of(16).max(16))
}

fn check_binding_size(ctx: &Context, bytes: u64, label: &str) -> Result<()> {
    let limits = ctx.limits();
    let binding = limits.max_storage_buffer_binding_size;
    if bytes > binding {
        return Err(Error::Limit {
            what: format!("tensor `{label}`"),
            requested: bytes,
            limit: binding,
            limit_name: "max_storage_buffer_binding_size",
        });
    }
    if bytes > limits.max_buffer_size {
        return Err(Error::Limit {
            what: format!("tensor `{label}`"),
            requested: bytes,
            limit: limits.max_buffer_size,
            limit_name: "max_buffer_size",
        });
    }
    Ok(())
}

/// Accepts an f32 tensor, or an f16 one where the adapter has `SHADER_F16` (an error naming
/// the feature otherwise); returns whether it is f16.
pub(crate) fn check_float(
    ctx: &Context,
    op: &'static str,
    arg: &'static str,
    t: &Tensor,
) -> Result<bool> {
    match t.dtype {
        DType::F32 => Ok(false),
        DType::F16 if ctx.capabilities().has(wgpu::Features::SHADER_F16) => Ok(true),
        DType::F16 => Err(Error::Argument {
            op,
            arg,
            reason: "f16 storage needs the adapter feature SHADER_F16, which this adapter \
                     does not have"
                .into(),
        }),
        DType::U32 => Err(Error::DType {
            op,
            arg,
            expected: DTypeName("f32 or f16"),
            found: t.dtype.name(),
        }),
    }
}

pub(crate) fn check_dtype(
    op: &'static str,
    arg: &'static str,
    t: &Tensor,
    dtype: DType,
) -> Result<()> {
    if t.dtype != dtype {
        return Err(Error::DType {
            op,
            arg,
            expected: dtype.name(),
            found: t.dtype.name(),
        });
    }
    Ok(())
}

/// Checks that `t` has exactly `shape`.
pub(crate) fn check_shape(
    op: &'static str,
    arg: &'static str,
    t: &Tensor,
    shape: &[usize],
) -> Result<()> {
    if t.shape != shape {
        return Err(Error::Shape {
            op,
            arg,
            expected: format!("{shape:?}"),
            found: t.shape.clone(),
        });
    }
    Ok(())
}
