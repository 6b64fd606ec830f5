//! Percentiles of one run, and medians with their spread over several runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The `p`th percentile (0–100) of `sorted`, interpolating between ranks
/// (the same definition as `loadgen.py`), or `NaN` when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (sorted.len() - 1) as f64 * p / 100.0;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Sorts `values` (NaN last) and returns them.
pub(crate) fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// p50 / p95 / p99 / max of a sample, in its own unit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) n: usize,
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Latency {
    pub(crate) fn of(values: Vec<f64>) -> Self {
        let s = sorted(values);
        Self {
            n: s.len(),
            p50: percentile(&s, 50.0),
            p95: percentile(&s, 95.0),
            p99: percentile(&s, 99.0),
            max: s.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// Adds `p50`, `p95`, `p99` and `max` under `prefix` to a run's metrics.
    pub(crate) fn into_metrics(self, prefix: &str, unit: &str, metrics: &mut Metrics) {
        metrics.add(format!("{prefix} p50"), unit, self.p50);
        metrics.add(format!("{prefix} p95"), unit, self.p95);
        metrics.add(format!("{prefix} p99"), unit, self.p99);
        metrics.add(format!("{prefix} max"), unit, self.max);
    }

    pub(crate) fn line(&self, unit: &str) -> String {
        format!(
            "p50 {:.2} / p95 {:.2} / p99 {:.2} / max {:.2} {unit} (n={})",
            self.p50, self.p95, self.p99, self.max, self.n
        )
    }
}

/// The named figures of one run, in the order they were added.
#[derive(Debug, Default, Clone)]
pub(crate) struct Metrics {
    order: Vec<String>,
    values: BTreeMap<String, (String, f64)>,
}

impl Metrics {
    pub(crate) fn add(&mut self, name: impl Into<String>, unit: &str, value: f64) {
        let name = name.into();
        if !self.values.contains_key(&name) {
            self.order.push(name.clone());
        }
        self.values.insert(name, (unit.to_owned(), value));
    }

    /// Appends `other`'s figures after this one's.
    pub(crate) fn extend(&mut self, other: Metrics) {
        for name in other.order {
            if let Some((unit, value)) = other.values.get(&name) {
                self.add(name.clone(), unit, *value);
            }
        }
    }
}

/// Several runs of one workload: prints each figure's median and min–max.
pub(crate) fn summarize(title: &str, runs: &[Metrics]) -> String {
    let mut out = String::new();
    let Some(first) = runs.first() else {
        return format!("{title}: no runs\n");
    };
    let _ = writeln!(out, "{title}: median of {} run(s) [min – max]", runs.len());
    let width = first.order.iter().map(String::len).max().unwrap_or(0);
    for name in &first.order {
        let Some((unit, _)) = first.values.get(name) else {
            continue;
        };
        let values = sorted(
            runs.iter()
                .filter_map(|r| r.values.get(name).map(|(_, v)| *v))
                .collect(),
        );
        let median = percentile(&values, 50.0);
        let lo = values.first().copied().unwrap_or(f64::NAN);
        let hi = values.last().copied().unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "  {name:<width$}  {} {unit}  [{} – {}]",
            fmt(median),
            fmt(lo),
            fmt(hi)
        );
    }
    out
}

/// A figure with sensible precision: whole numbers from 100 up.
pub(crate) fn fmt(value: f64) -> String {
    if value.is_nan() {
        "n/a".to_owned()
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let s = sorted(vec![4.0, 1.0, 3.0, 2.0]);
        assert_eq!(percentile(&s, 0.0), 1.0);
        assert_eq!(percentile(&s, 50.0), 2.5);
        assert_eq!(percentile(&s, 100.0), 4.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn summaries_show_median_and_spread() {
        let runs: Vec<Metrics> = [3.0, 1.0, 2.0]
            .iter()
            .map(|v| {
                let mut m = Metrics::default();
                m.add("rate", "x/s", *v);
                m
            })
            .collect();
        let text = summarize("t", &runs);
        assert!(text.contains("rate  2.00 x/s  [1.00 – 3.00]"), "{text}");
    }
}
