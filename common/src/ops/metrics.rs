//! Prometheus metrics: one global recorder per process, rendered by each service on
//! `GET /metrics` of a port of its own (`<service>.metrics_listen`), apart from what
//! clients and probes reach, so the scraper's view of the process stays internal.
//!
//! Every label takes known values only: routes are the router's patterns, methods the
//! standard ones (anything else is `other`), statuses the ones the server sends, review
//! reasons and webhook outcomes from fixed lists; a caller cannot mint a series.
//!
//! Every metric Paygate records is named here, with the function that records it, so
//! the README's "Metrics" list and the code cannot drift apart. The recorder is
//! installed the first time a service is built ([`install`]); before that (and in unit
//! tests that start no service) the functions record into nothing.
//!
//! Tests that start several services in one process share the recorder: they assert on
//! labels only their run has (its own topics, its own gateway codes), or on a change.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ::metrics::{counter, gauge, histogram};
use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds, from a cache hit to a gateway's slowest answer.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder once; later calls return the same handle. `None`
/// only if another recorder was installed first (then `/metrics` is empty).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS);
            match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "no Prometheus recorder; /metrics stays empty");
                    None
                }
            }
        })
        .as_ref()
}

/// The current metrics in Prometheus' text format.
pub fn render() -> String {
    match install() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    }
}

/// `GET /metrics`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/metrics", get(page))
}

/// Serves [`router`] on `listener`, its own port, until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    limits: crate::http_server::Limits,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    crate::http_server::serve(listener, router(), limits, shutdown).await
}

async fn page() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        render(),
    )
}

/// Middleware timing every request by its route pattern (never the raw path, whose ids
/// would make a series per transaction) and status. Add it with `Router::layer`, so the
/// matched route is known; unmatched requests count under `route="unmatched"`.
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    histogram!(
        "paygate_http_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string(),
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// A request method as a label: the standard ones by name, any other token (hyper
/// accepts any) as `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ]
    .iter()
    .find(|known| *known == method)
    .map_or("other", |known| known.as_str())
}

/// How a consumed message ended.
#[derive(Debug, Clone, Copy)]
pub enum MessageOutcome {
    /// Its handler succeeded (its offset may be stored).
    Handled,
    /// One attempt failed transiently (it is retried, or the consumer gives up).
    Failed,
    /// It can never succeed and went to the dead-letter topic.
    DeadLettered,
}

/// One message of `topic` ended as `outcome` after `took`.
pub fn message(topic: &str, outcome: MessageOutcome, took: Duration) {
    let topic = topic.to_owned();
    match outcome {
        MessageOutcome::Handled => {
            counter!("paygate_messages_handled_total", "topic" => topic.clone()).increment(1);
            histogram!("paygate_message_handling_duration_seconds", "topic" => topic)
                .record(took.as_secs_f64());
        }
        MessageOutcome::Failed => {
            counter!("paygate_messages_failed_total", "topic" => topic).increment(1);
        }
        MessageOutcome::DeadLettered => {
            counter!("paygate_messages_dead_lettered_total", "topic" => topic).increment(1);
        }
    }
}

/// A batch of `messages` was applied together, in one database commit (see `batch`):
/// a consumer's messages, a group commit's writes or the dispatcher's 2xx records.
pub fn batch_applied(messages: usize) {
    histogram!("paygate_consumer_batch_messages").record(messages as f64);
}

/// The consumer's lag on one partition: messages after the group's position, as
/// librdkafka's statistics report it.
pub fn consumer_lag(topic: &str, partition: i32, lag: i64) {
    gauge!(
        "paygate_consumer_lag",
        "topic" => topic.to_owned(),
        "partition" => partition.to_string(),
    )
    .set(lag as f64);
}

/// Partitions this process's consumer currently reads.
pub fn consumer_assigned(partitions: usize) {
    gauge!("paygate_consumer_assigned_partitions").set(partitions as f64);
}

/// One call to a payment gateway (`operation`: `submit`, `query`, `refund` or
/// `query_refund`) that ended as `outcome` after `took`.
pub fn gateway_call(gateway: &str, operation: &'static str, outcome: &'static str, took: Duration) {
    counter!(
        "paygate_gateway_calls_total",
        "gateway" => gateway.to_owned(),
        "operation" => operation,
        "outcome" => outcome,
    )
    .increment(1);
    histogram!(
        "paygate_gateway_call_duration_seconds",
        "gateway" => gateway.to_owned(),
        "operation" => operation,
    )
    .record(took.as_secs_f64());
}

/// A gateway's circuit: 0 closed, 1 half-open, 2 open.
pub fn circuit_state(gateway: &str, state: u8) {
    gauge!("paygate_circuit_state", "gateway" => gateway.to_owned()).set(f64::from(state));
}

/// Events waiting in the outbox to be published.
pub fn outbox_backlog(events: i64) {
    gauge!("paygate_outbox_backlog").set(events as f64);
}

/// One outbox batch of `events`, claimed, published and marked, after `took`.
pub fn outbox_published(events: usize, took: Duration) {
    counter!("paygate_outbox_published_total").increment(events as u64);
    histogram!("paygate_outbox_publish_duration_seconds").record(took.as_secs_f64());
}

/// An outbox event the broker refused for good, set aside (see `outbox`).
pub fn outbox_set_aside() {
    counter!("paygate_outbox_set_aside_total").increment(1);
}

/// A payment flagged for a human (`charged_but_failed`, `no_callback`, …).
pub fn review_required(reason: &str) {
    counter!("paygate_review_required_total", "reason" => review_label(reason)).increment(1);
}

/// A review reason as a label: the known ones, anything else as `other` (labels stay
/// bounded whatever a caller passes).
fn review_label(reason: &str) -> &'static str {
    crate::transactions::review::ALL
        .iter()
        .copied()
        .find(|known| *known == reason)
        .unwrap_or("other")
}

/// A difference a settlement run found for the first time, by `kind` (one of the
/// fixed kinds, else `other`) and `resolution`: `open` (it needs a human) or
/// `settled_from_report` (the report settled an unresolved payment).
pub fn settlement_difference(gateway: &str, kind: &'static str, resolution: &'static str) {
    counter!(
        "paygate_settlement_differences_total",
        "gateway" => gateway.to_owned(),
        "kind" => kind,
        "resolution" => resolution
    )
    .increment(1);
}

/// A settlement run that ended: `completed` or `failed`.
pub fn settlement_run(gateway: &str, outcome: &'static str, took: Duration) {
    counter!("paygate_settlement_runs_total", "gateway" => gateway.to_owned(), "outcome" => outcome)
        .increment(1);
    histogram!("paygate_settlement_run_seconds", "gateway" => gateway.to_owned())
        .record(took.as_secs_f64());
}

/// A definite gateway answer that arrived after the payment had moved on.
pub fn late_answer(outcome: &'static str) {
    counter!("paygate_gateway_late_answers_total", "outcome" => outcome).increment(1);
}

/// One webhook attempt, by what became of its delivery: `delivered`, `pending` (to be
/// retried) or `failed` (no retry left).
pub fn webhook_attempt(outcome: &str) {
    let outcome = ["delivered", "pending", "failed"]
        .into_iter()
        .find(|known| *known == outcome)
        .unwrap_or("other");
    counter!("paygate_webhook_attempts_total", "outcome" => outcome).increment(1);
}

/// How long a worker waited for a transaction's lock, and whether it got it.
pub fn lock_wait(acquired: bool, took: Duration) {
    let outcome = if acquired { "acquired" } else { "timed_out" };
    histogram!("paygate_lock_wait_duration_seconds", "outcome" => outcome)
        .record(took.as_secs_f64());
}

/// Scrape-side helpers: reading one sample out of a rendered page.
pub mod scrape {
    /// The value of the sample `name{labels}` in `page`, where `labels` are
    /// `key="value"` pairs that must all be present (others may be too).
    pub fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        page.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .find(|(series, _)| {
                let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
                metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .and_then(|(_, value)| value.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::scrape::sample;

    #[test]
    fn a_method_outside_the_standard_ones_is_labelled_other() {
        use axum::http::Method;
        assert_eq!(super::method_label(&Method::POST), "POST");
        assert_eq!(super::method_label(&Method::HEAD), "HEAD");
        let made_up = Method::from_bytes(b"XYZZY-1234").unwrap();
        assert_eq!(super::method_label(&made_up), "other");
        assert_eq!(super::method_label(&Method::CONNECT), "other");
    }

    #[test]
    fn a_sample_is_found_by_name_and_some_of_its_labels() {
        let page = "# TYPE x counter\nx{a=\"1\",b=\"2\"} 3\nx_total 4\ny{a=\"1\"} 5\n";
        assert_eq!(sample(page, "x", &[("b", "2")]), Some(3.0));
        assert_eq!(sample(page, "x_total", &[]), Some(4.0));
        assert_eq!(sample(page, "x", &[("b", "3")]), None);
        assert_eq!(sample(page, "z", &[]), None);
    }
}
