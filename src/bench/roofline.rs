//! The roofline of a record: the least time its work can take on a known adapter, from its
//! FLOPs and the least bytes it must move, beside the time measured ("% of floor").
//!
//! floor = max(FLOPs / peak FLOP/s, min_bytes / memory bandwidth), with the f32 peak for f32
//! records and the dense f16 tensor-core peak for f16 records (what the cooperative-matrix
//! kernels can reach). Peaks come from the vendors' datasheets (shared PEERS.md); an adapter
//! not in [`KNOWN`] (every software adapter among them) gets no floor, printed "-".

use super::Record;

/// Datasheet peaks of one card.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    /// Matched as a substring of the adapter's name.
    pub name: &'static str,
    /// f32 FMA throughput, TFLOP/s.
    pub f32_tflops: f64,
    /// Dense f16 tensor-core throughput (f32 accumulation), TFLOP/s.
    pub f16_tflops: f64,
    /// Memory bandwidth, TB/s.
    pub tb_per_s: f64,
}

/// Cards whose peaks the bench knows (SXM parts: H100 80 GB HBM3, H200 141 GB HBM3e).
pub const KNOWN: [Peak; 2] = [
    Peak {
        name: "H100",
        f32_tflops: 67.0,
        f16_tflops: 989.4,
        tb_per_s: 3.35,
    },
    Peak {
        name: "H200",
        f32_tflops: 67.0,
        f16_tflops: 989.4,
        tb_per_s: 4.8,
    },
];

/// The peaks of the card an adapter name belongs to.
pub fn known_peak(adapter_name: &str) -> Option<Peak> {
    KNOWN
        .iter()
        .find(|p| adapter_name.contains(p.name))
        .copied()
}

impl Peak {
    /// The floor in ms of `flops` and `bytes` in storage `dtype` ("f32" or "f16").
    pub fn floor_ms(&self, flops: f64, bytes: f64, dtype: &str) -> f64 {
        let tflops = if dtype == "f16" {
            self.f16_tflops
        } else {
            self.f32_tflops
        };
        let compute = flops / (tflops * 1e12);
        let memory = bytes / (self.tb_per_s * 1e12);
        1e3 * compute.max(memory)
    }
}

impl Record {
    /// Sets the record's least bytes, and its floor and "% of floor" where its adapter's
    /// peaks are known (call after `dtype` is set).
    pub fn set_floor(&mut self, min_bytes: f64) {
        self.min_bytes = min_bytes;
        let Some(peak) = known_peak(&self.adapter) else {
            return;
        };
        let floor = peak.floor_ms(self.flops, min_bytes, &self.dtype);
        self.floor_ms = Some(floor);
        if self.gpu_ms.median.is_finite() && self.gpu_ms.median > 0.0 {
            self.pct_of_floor = Some(100.0 * floor / self.gpu_ms.median);
        }
    }
}

/// Bytes of one element in storage `dtype`.
pub fn element_bytes(dtype: crate::DType) -> f64 {
    match dtype {
        crate::DType::F16 => 2.0,
        _ => 4.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_are_the_slower_of_compute_and_memory() {
        let h200 = known_peak("NVIDIA H200").expect("known");
        // 4096³ f32: 137 GFLOP at 67 TFLOP/s = 2.05 ms; 201 MB at 4.8 TB/s = 0.04 ms.
        let flops = 2.0 * 4096f64.powi(3);
        let bytes = 3.0 * 4096.0 * 4096.0 * 4.0;
        let f32_floor = h200.floor_ms(flops, bytes, "f32");
        assert!(
            (f32_floor - 1e3 * flops / 67e12).abs() < 1e-9,
            "{f32_floor}"
        );
        // The same in f16 on tensor cores: 0.139 ms of compute.
        let f16_floor = h200.floor_ms(flops, bytes / 2.0, "f16");
        assert!(
            (f16_floor - 1e3 * flops / 989.4e12).abs() < 1e-9,
            "{f16_floor}"
        );
        // A memory-bound copy: 1 GB at 4.8 TB/s.
        assert!((h200.floor_ms(0.0, 1e9, "f32") - 1e3 / 4.8e3).abs() < 1e-9);
        assert!(known_peak("llvmpipe (LLVM 15.0.6, 256 bits)").is_none());
        assert_eq!(
            known_peak("NVIDIA H100 80GB HBM3").map(|p| p.tb_per_s),
            Some(3.35)
        );
    }
}
