//! Prometheus metrics (the `prometheus` crate): requests and latencies by route for every
//! server, plus what each role registers of its own, served as text at `GET /metrics`.

use std::sync::Arc;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl Metrics {
    /// A registry whose metric names start with `p2pstore_<role>_`.
    pub fn new(role: &str) -> Arc<Metrics> {
        let registry = Registry::new_custom(Some(format!("p2pstore_{role}")), None).expect("valid prefix");
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by method, route and status"),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_seconds", "HTTP request latency by method and route"),
            &["method", "route"],
        )
        .expect("valid metric");
        registry.register(Box::new(requests.clone())).expect("registered once");
        registry.register(Box::new(latency.clone())).expect("registered once");
        Arc::new(Metrics { registry, requests, latency })
    }

    pub fn observe(&self, method: &str, path: &str, status: u16, seconds: f64) {
        let route = route_label(path);
        self.requests.with_label_values(&[method, &route, &status.to_string()]).inc();
        self.latency.with_label_values(&[method, &route]).observe(seconds);
    }

    /// Registers a metric of the role's own; returns it for updating.
    pub fn add<M: prometheus::core::Collector + Clone + 'static>(&self, m: M) -> M {
        self.registry.register(Box::new(m.clone())).expect("registered once");
        m
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// A route for labels: ids (long hex, numbers) become `:id`, so label values stay few.
pub fn route_label(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let id =
                (s.len() >= 16 && s.bytes().all(|b| b.is_ascii_hexdigit())) || s.bytes().all(|b| b.is_ascii_digit());
            if id { ":id" } else { s }
        })
        .take(4)
        .collect();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_folded_and_text_renders() {
        assert_eq!(route_label(&format!("/v2/shards/{}", "ab".repeat(32))), "/v2/shards/:id");
        assert_eq!(route_label("/v2/files/0123456789abcdef0123/manifest"), "/v2/files/:id/manifest");
        assert_eq!(route_label("/"), "/");
        let m = Metrics::new("test");
        m.observe("GET", "/v2/peers", 200, 0.01);
        let text = m.render();
        assert!(
            text.contains("p2pstore_test_http_requests_total{method=\"GET\",route=\"/v2/peers\",status=\"200\"} 1"),
            "{text}"
        );
    }
}
