//! Prometheus metrics. Counters and histograms are recorded in-process as
//! work happens; the queue gauges are read from the database at scrape time,
//! so every process reports the same, true queue.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

use crate::domain::{OperationKind, OperationState};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Installs the process-wide recorder (once) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .map(PrometheusBuilder::build_recorder);
            match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    if metrics::set_global_recorder(recorder).is_err() {
                        tracing::warn!("a metrics recorder was already installed");
                    }
                    register_zeroes();
                    handle
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics buckets refused; using defaults");
                    let recorder = PrometheusBuilder::new().build_recorder();
                    let handle = recorder.handle();
                    let _ = metrics::set_global_recorder(recorder);
                    handle
                }
            }
        })
        .clone()
}

/// Makes the counters that may stay at zero visible from the first scrape.
fn register_zeroes() {
    counter!("executord_lease_expiries_total").absolute(0);
    counter!("executord_throttle_waits_total").absolute(0);
}

/// A task run ended with `outcome` after `elapsed`.
pub fn task_ran(task_type: &str, outcome: &'static str, elapsed: Duration) {
    histogram!("executord_task_duration_seconds", "type" => task_type.to_owned(), "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// A step will be retried after a transient failure.
pub fn task_retried(task_type: &str) {
    counter!("executord_task_retries_total", "type" => task_type.to_owned()).increment(1);
}

/// One recording transaction took `outcomes` outcomes (their ratio is the
/// mean batch size).
pub fn outcomes_recorded(outcomes: usize) {
    counter!("executord_recording_transactions_total").increment(1);
    counter!("executord_outcomes_recorded_total").increment(outcomes as u64);
}

/// Leases expired and their tasks were queued again.
pub fn leases_expired(count: usize) {
    counter!("executord_lease_expiries_total").increment(count as u64);
}

/// A throttle step found no free slot and waits in line.
pub fn throttle_waited() {
    counter!("executord_throttle_waits_total").increment(1);
}

/// An operation ended.
pub fn operation_finished(kind: OperationKind, state: OperationState) {
    counter!("executord_operations_total", "kind" => kind.as_str(), "outcome" => state.as_str())
        .increment(1);
}

/// An HTTP request was answered. Every label must come from a closed set
/// (see `api::metrics::track`): a value a client chooses would add a series
/// for good.
pub fn http_request(method: &'static str, route: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    counter!("executord_http_requests_total", &labels).increment(1);
    histogram!("executord_http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
}

/// The HTTP connections open now.
pub fn http_connections_open(open: usize) {
    gauge!("executord_http_connections_open").set(open as f64);
}

/// The server closed a connection: its client did not send a request's head
/// in time (`header_timeout`), or it had no request in flight when a new
/// connection needed its place or the server stopped (`evicted`).
pub fn http_connection_closed(reason: &'static str) {
    counter!("executord_http_connections_closed_total", "reason" => reason).increment(1);
}

/// A call of a declared backend ended with `outcome` (`ok`, `transient`,
/// `permanent`, `not_found`, `bad_reply`, or `abandoned` when its time ran
/// out or its operation was cancelled). The backend and method names come
/// from the catalog, a closed set.
pub fn backend_call(backend: &str, method: &str, outcome: &'static str, elapsed: Duration) {
    let labels = [
        ("backend", backend.to_owned()),
        ("method", method.to_owned()),
    ];
    counter!("executord_backend_calls_total", &labels).increment(1);
    histogram!("executord_backend_call_duration_seconds", &labels).record(elapsed.as_secs_f64());
    if outcome != "ok" {
        counter!(
            "executord_backend_call_errors_total",
            "backend" => backend.to_owned(),
            "method" => method.to_owned(),
            "class" => outcome
        )
        .increment(1);
    }
}

/// A webhook delivery attempt ended with `outcome` (`delivered`, `failed`,
/// `refused` or `gone`).
pub fn webhook_delivered(outcome: &'static str) {
    counter!("executord_webhook_deliveries_total", "outcome" => outcome).increment(1);
}

/// The Prometheus text: queue gauges read now, then everything recorded.
pub async fn render(pool: &PgPool) -> anyhow::Result<String> {
    let handle = install();
    for (queue, depth) in crate::db::tasks::queue_depths(pool).await? {
        let labels = [("queue", queue.as_str())];
        gauge!("executord_tasks_ready", &labels).set(depth.ready as f64);
        gauge!("executord_oldest_ready_task_age_seconds", &labels).set(depth.oldest_ready_s);
        gauge!("executord_tasks_running", &labels).set(depth.running as f64);
    }
    gauge!("executord_webhook_outbox_oldest_age_seconds")
        .set(crate::db::webhooks::oldest_pending_age(pool).await?);
    Ok(handle.render())
}
