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
        // The process's CPU seconds, resident memory and open file descriptors.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        registry.register(Box::new(process)).expect("registered once");
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

    /// Counts a request. `route` comes from the role's known routes (never from the raw
    /// path) and methods outside the usual few are `other`, so label values stay few whatever
    /// clients send.
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let method = match method {
            "GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" => method,
            _ => "other",
        };
        self.requests.with_label_values(&[method, route, &status.to_string()]).inc();
        self.latency.with_label_values(&[method, route]).observe(seconds);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_few_and_text_renders() {
        let m = Metrics::new("test");
        m.observe("GET", "/v2/peers", 200, 0.01);
        m.observe("BREW", "other", 404, 0.01);
        let text = m.render();
        assert!(
            text.contains("p2pstore_test_http_requests_total{method=\"GET\",route=\"/v2/peers\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("method=\"other\",route=\"other\""), "{text}");
        assert!(!text.contains("BREW"));
        assert!(text.contains("p2pstore_test_process_resident_memory_bytes"), "{text}");
    }
}
