//! What the benchmarks share.

/// `n` scaled by `FOLDHOST_BENCH_SCALE` (e.g. 0.1 for a quick pass), and at least `floor`.
pub fn scale(n: usize, floor: usize) -> usize {
    let factor: f64 = std::env::var("FOLDHOST_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(floor)
}
