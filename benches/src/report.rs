//! Results as a table (for people), JSON and CSV (for scripts).

use std::io::Write;

use crate::load::LevelResult;

pub fn table(results: &[LevelResult]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<18} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}\n",
        "level", "infer/s", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "errors", "stable"
    ));
    for r in results {
        out.push_str(&format!(
            "{:<18} {:>12.0} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>7}\n",
            r.label,
            r.infer_per_sec,
            r.requests_per_sec,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.p999_ms,
            r.error_count,
            r.stable
        ));
        for (kind, n) in &r.errors {
            out.push_str(&format!("    error {kind}: {n}\n"));
        }
    }
    out
}

pub fn json(results: &[LevelResult]) -> Result<String, String> {
    serde_json::to_string_pretty(results).map_err(|e| e.to_string())
}

pub fn csv(results: &[LevelResult], out: impl Write) -> Result<(), String> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "label",
        "concurrency",
        "rate",
        "requests",
        "seconds",
        "infer_per_sec",
        "requests_per_sec",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
        "mean_ms",
        "errors",
        "stable",
    ])
    .map_err(|e| e.to_string())?;
    for r in results {
        w.write_record([
            r.label.clone(),
            r.concurrency.map(|c| c.to_string()).unwrap_or_default(),
            r.rate.map(|c| c.to_string()).unwrap_or_default(),
            r.requests.to_string(),
            format!("{:.3}", r.seconds),
            format!("{:.1}", r.infer_per_sec),
            format!("{:.1}", r.requests_per_sec),
            format!("{:.3}", r.p50_ms),
            format!("{:.3}", r.p90_ms),
            format!("{:.3}", r.p99_ms),
            format!("{:.3}", r.p999_ms),
            format!("{:.3}", r.mean_ms),
            r.error_count.to_string(),
            r.stable.to_string(),
        ])
        .map_err(|e| e.to_string())?;
    }
    w.flush().map_err(|e| e.to_string())
}
