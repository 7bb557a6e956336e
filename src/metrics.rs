//! Counters and histograms for `/metrics`, in the Prometheus text format.
//!
//! Plain integers owned by the loop thread: no atomics, no registry, no
//! allocation when counting. Label values are fixed sets of `&'static str`
//! (refusal codes, close reasons), so the number of series is bounded no
//! matter what clients send.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// A histogram with fixed upper bounds.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    total: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, total: 0 }
    }

    pub fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.total += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.total);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.total);
    }
}

const COMMIT_SECONDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
const BATCH_SIZE: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0];

/// Everything the loop counts.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub accepted: u64,
    /// Refused connections and requests, by error code.
    pub refused: BTreeMap<&'static str, u64>,
    /// Token failures, by reason.
    pub auth_failures: BTreeMap<&'static str, u64>,
    /// Server-initiated WebSocket closes, by reason.
    pub closes: BTreeMap<&'static str, u64>,
    pub published: u64,
    pub duplicates: u64,
    pub delivered: u64,
    pub replayed: u64,
    pub http_requests: u64,
    pub commits: u64,
    pub commit_failures: u64,
    pub commit_seconds: Histogram,
    pub batch_size: Histogram,
}

/// Values read at render time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub connections: usize,
    pub websockets: usize,
    pub subscriptions: usize,
    /// Presence members, those within their grace included.
    pub presence_members: usize,
    /// Webhook delivery (`None` without `--webhook`): events delivered,
    /// failed tries, events dropped, events waiting.
    pub webhook: Option<[u64; 4]>,
    pub store_bytes: u64,
    pub map_bytes: u64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            accepted: 0,
            refused: BTreeMap::new(),
            auth_failures: BTreeMap::new(),
            closes: BTreeMap::new(),
            published: 0,
            duplicates: 0,
            delivered: 0,
            replayed: 0,
            http_requests: 0,
            commits: 0,
            commit_failures: 0,
            commit_seconds: Histogram::new(COMMIT_SECONDS),
            batch_size: Histogram::new(BATCH_SIZE),
        }
    }
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn labeled(out: &mut String, name: &str, help: &str, label: &str, values: &BTreeMap<&'static str, u64>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (k, v) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
    }
}

impl Metrics {
    pub fn refuse(&mut self, code: &'static str) {
        *self.refused.entry(code).or_default() += 1;
    }

    pub fn auth_failure(&mut self, reason: &'static str) {
        *self.auth_failures.entry(reason).or_default() += 1;
    }

    pub fn close(&mut self, reason: &'static str) {
        *self.closes.entry(reason).or_default() += 1;
    }

    pub fn commit(&mut self, took: Duration, batch: usize) {
        self.commits += 1;
        self.commit_seconds.observe(took.as_secs_f64());
        self.batch_size.observe(batch as f64);
    }

    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        gauge(&mut out, "roostd_connections", "Open connections (WebSocket and HTTP).", g.connections as u64);
        gauge(&mut out, "roostd_websockets", "Open WebSocket connections.", g.websockets as u64);
        gauge(&mut out, "roostd_subscriptions", "Channel subscriptions held.", g.subscriptions as u64);
        let members = "Presence members (users per presence channel), those within their grace included.";
        gauge(&mut out, "roostd_presence_members", members, g.presence_members as u64);
        if let Some([delivered, failed, dropped, pending]) = g.webhook {
            counter(&mut out, "roostd_webhook_events_delivered_total", "Webhook events answered 2xx.", delivered);
            counter(&mut out, "roostd_webhook_failures_total", "Webhook requests that failed.", failed);
            let why = "Webhook events dropped: past --webhook-retry-for or --webhook-max-pending.";
            counter(&mut out, "roostd_webhook_events_dropped_total", why, dropped);
            gauge(&mut out, "roostd_webhook_events_pending", "Webhook events waiting in the store.", pending);
        }
        counter(&mut out, "roostd_connections_accepted_total", "TCP connections accepted.", self.accepted);
        labeled(
            &mut out,
            "roostd_refused_total",
            "Requests refused before or instead of an upgrade, by error code.",
            "code",
            &self.refused,
        );
        labeled(
            &mut out,
            "roostd_auth_failures_total",
            "Token verification failures, by reason.",
            "reason",
            &self.auth_failures,
        );
        labeled(
            &mut out,
            "roostd_disconnects_total",
            "WebSocket connections closed by the server, by reason.",
            "reason",
            &self.closes,
        );
        counter(
            &mut out,
            "roostd_messages_published_total",
            "Messages committed (new, not duplicates).",
            self.published,
        );
        counter(
            &mut out,
            "roostd_messages_duplicate_total",
            "Publishes acked with an earlier seq (same sub and id).",
            self.duplicates,
        );
        counter(&mut out, "roostd_messages_delivered_total", "Live messages queued to subscribers.", self.delivered);
        counter(
            &mut out,
            "roostd_messages_replayed_total",
            "Stored messages replayed to resuming subscribers.",
            self.replayed,
        );
        counter(&mut out, "roostd_http_requests_total", "HTTP API requests answered.", self.http_requests);
        counter(&mut out, "roostd_commits_total", "LMDB write transactions committed for publishes.", self.commits);
        counter(
            &mut out,
            "roostd_commit_failures_total",
            "Publish commits that failed (nothing of them was acked).",
            self.commit_failures,
        );
        self.commit_seconds.render(
            &mut out,
            "roostd_commit_duration_seconds",
            "Time from the start of a write transaction to its fsynced commit.",
        );
        self.batch_size.render(
            &mut out,
            "roostd_commit_batch_messages",
            "Messages per committed write transaction (group commit).",
        );
        gauge(&mut out, "roostd_store_used_bytes", "Bytes of the LMDB map in use.", g.store_bytes);
        gauge(&mut out, "roostd_store_map_bytes", "LMDB map size: the most the store may use.", g.map_bytes);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let mut m = Metrics::default();
        m.refuse("token_invalid");
        m.refuse("token_invalid");
        m.commit(Duration::from_millis(3), 5);
        let text = m.render(Gauges { connections: 2, ..Gauges::default() });
        assert!(text.contains("roostd_refused_total{code=\"token_invalid\"} 2\n"));
        assert!(text.contains("roostd_connections 2\n"));
        assert!(text.contains("roostd_commit_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("roostd_commit_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("roostd_commit_batch_messages_count 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("roostd_"), "{line}");
        }
    }
}
