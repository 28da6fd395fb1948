//! Minimal Prometheus text-format metrics: counters and histograms with
//! labels, rendered on demand. No global registry: each component owns its
//! metrics and renders them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

type Labels = Vec<(&'static str, String)>;

fn render_labels(labels: &Labels, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A counter family: one count per label set.
#[derive(Debug)]
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    values: Mutex<BTreeMap<Labels, u64>>,
}

impl CounterVec {
    /// A counter family named `name`.
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds one to the counter with `labels`.
    pub fn inc(&self, labels: &[(&'static str, &str)]) {
        let key: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        *self
            .values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert(0) += 1;
    }

    /// Appends the family in the text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        for (labels, v) in self.values.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "{}{} {v}", self.name, render_labels(labels, None));
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// A histogram family of durations, one histogram per label set.
#[derive(Debug)]
pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    values: Mutex<BTreeMap<Labels, Histogram>>,
}

impl HistogramVec {
    /// A histogram family named `name` (seconds).
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one observation.
    pub fn observe(&self, labels: &[(&'static str, &str)], d: Duration) {
        let secs = d.as_secs_f64();
        let key: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        let mut map = self.values.lock().unwrap_or_else(|e| e.into_inner());
        let h = map.entry(key).or_default();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Appends the family in the text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        for (labels, h) in self.values.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                let le = bound.to_string();
                let _ = writeln!(
                    out,
                    "{}_bucket{} {}",
                    self.name,
                    render_labels(labels, Some(("le", &le))),
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "{}_bucket{} {}",
                self.name,
                render_labels(labels, Some(("le", "+Inf"))),
                h.count
            );
            let _ = writeln!(
                out,
                "{}_sum{} {}",
                self.name,
                render_labels(labels, None),
                h.sum
            );
            let _ = writeln!(
                out,
                "{}_count{} {}",
                self.name,
                render_labels(labels, None),
                h.count
            );
        }
    }
}

/// Appends one gauge family with the given values.
pub fn render_gauge(out: &mut String, name: &str, help: &str, values: &[(Labels, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, v) in values {
        let _ = writeln!(out, "{name}{} {v}", render_labels(labels, None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_the_text_format() {
        let c = CounterVec::new("x_total", "things");
        c.inc(&[("route", "/a"), ("status", "200")]);
        c.inc(&[("route", "/a"), ("status", "200")]);
        c.inc(&[("route", "/b\"q"), ("status", "500")]);
        let mut out = String::new();
        c.render(&mut out);
        assert!(out.contains("# TYPE x_total counter"));
        assert!(out.contains("x_total{route=\"/a\",status=\"200\"} 2"));
        assert!(out.contains("x_total{route=\"/b\\\"q\",status=\"500\"} 1"));

        let h = HistogramVec::new("lat_seconds", "latency");
        h.observe(&[("route", "/a")], Duration::from_millis(3));
        h.observe(&[("route", "/a")], Duration::from_secs(7));
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.contains("lat_seconds_bucket{route=\"/a\",le=\"0.0025\"} 0"));
        assert!(out.contains("lat_seconds_bucket{route=\"/a\",le=\"0.005\"} 1"));
        assert!(out.contains("lat_seconds_bucket{route=\"/a\",le=\"+Inf\"} 2"));
        assert!(out.contains("lat_seconds_count{route=\"/a\"} 2"));
    }
}
