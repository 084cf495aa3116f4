//! The bench's tables: plain text (one line per record as it is measured), Markdown (for
//! BENCHMARKS.md), dispatches and bytes per forward, and per-kernel GPU time.

use super::Record;

/// The header of [`table`], one line.
pub fn table_header() -> String {
    format!(
        "{:<10} {:<24} {:>5} {:>10} {:>21} {:>10} {:>9} {:>9} {:>10} {:>6} {:>10} {:>6} {:>9}  {}\n",
        "suite",
        "shape",
        "dtype",
        "gpu ms",
        "(min-max)",
        "wall ms",
        "host ms",
        "first ms",
        "GFLOP/s",
        "%peak",
        "floor ms",
        "%floor",
        "items/s",
        "check"
    )
}

/// One record as a line of [`table`].
pub fn table_row(r: &Record) -> String {
    let check = match &r.error {
        Some(e) => format!("FAIL: {}", e.replace('\n', " | ")),
        None => format!(
            "{} (max err {:.1e}, {}/{} values)",
            if r.check.passed { "PASS" } else { "FAIL" },
            r.check.max_abs_err,
            r.check.compared,
            r.check.total
        ),
    };
    format!(
        "{:<10} {:<24} {:>5} {:>10.4} {:>21} {:>10.3} {:>9} {:>9.1} {:>10.1} {:>6} {:>10} {:>6} {:>9}  {check}\n",
        r.suite,
        r.shape,
        r.dtype,
        r.gpu_ms.median,
        format!("({:.4}-{:.4})", r.gpu_ms.min, r.gpu_ms.max),
        r.wall_ms.median,
        r.host_ms.map_or("-".into(), |h| format!("{:.3}", h.median)),
        r.first_run_ms,
        r.gflops,
        r.pct_of_peak.map_or("-".into(), |p| format!("{p:.1}")),
        r.floor_ms.map_or("-".into(), |f| format!("{f:.4}")),
        r.pct_of_floor.map_or("-".into(), |p| format!("{p:.1}")),
        r.items_per_s.map_or("-".into(), |v| format!("{v:.1}")),
    )
}

/// A plain-text table of records.
pub fn table(records: &[Record]) -> String {
    let mut out = table_header();
    for r in records {
        out += &table_row(r);
    }
    out
}

/// A Markdown table of records (for BENCHMARKS.md).
pub fn markdown(records: &[Record]) -> String {
    let mut out = String::from(
        "| suite | shape | dtype | GPU ms (median) | min-max | wall ms | host ms | GFLOP/s | % peak | floor ms | % of floor | items/s | dispatches | MB moved | check |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in records {
        out += &format!(
            "| {} | {} | {} | {:.4} | {:.4}-{:.4} | {:.3} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.suite,
            r.shape,
            r.dtype,
            r.gpu_ms.median,
            r.gpu_ms.min,
            r.gpu_ms.max,
            r.wall_ms.median,
            r.host_ms.map_or("-".into(), |h| format!("{:.3}", h.median)),
            r.gflops,
            r.pct_of_peak.map_or("-".into(), |p| format!("{p:.1}")),
            r.floor_ms.map_or("-".into(), |f| format!("{f:.4}")),
            r.pct_of_floor.map_or("-".into(), |p| format!("{p:.1}")),
            r.items_per_s.map_or("-".into(), |v| format!("{v:.1}")),
            r.traffic.map_or("-".into(), |t| t.dispatches.to_string()),
            r.traffic.map_or("-".into(), |t| format!(
                "{:.1}",
                (t.bytes_read + t.bytes_written) as f64 / 1e6
            )),
            if r.passed() { "PASS" } else { "FAIL" },
        );
    }
    out
}

/// Dispatches and compulsory bytes per forward of model records, as text.
pub fn traffic_table(records: &[Record]) -> String {
    let mut out = String::new();
    for r in records {
        if let Some(t) = r.traffic {
            if out.is_empty() {
                out += &format!(
                    "{:<10} {:<24} {:>10} {:>12} {:>12}\n",
                    "model", "shape", "dispatches", "MB read", "MB written"
                );
            }
            out += &format!(
                "{:<10} {:<24} {:>10} {:>12.2} {:>12.2}\n",
                r.suite,
                r.shape,
                t.dispatches,
                t.bytes_read as f64 / 1e6,
                t.bytes_written as f64 / 1e6
            );
        }
    }
    out
}

/// Per-kernel GPU time of model records, as text.
pub fn breakdown_table(records: &[Record]) -> String {
    let mut out = String::new();
    for r in records.iter().filter(|r| !r.breakdown.is_empty()) {
        let total: f64 = r.breakdown.iter().map(|(_, ms)| ms).sum();
        out += &format!(
            "{} {}: GPU time by kernel (sum of passes {total:.3} ms)\n",
            r.suite, r.shape
        );
        for (kernel, ms) in &r.breakdown {
            out += &format!(
                "  {kernel:<14} {ms:>10.3} ms {:>6.1}%\n",
                100.0 * ms / total
            );
        }
    }
    out
}
