//! Liveness, readiness and metrics for every service: `/healthz` answers while the
//! process runs; `/readyz` only while what the service needs answers too (PostgreSQL,
//! Redis where it takes locks, a Kafka broker, and for a consumer, partitions to read),
//! so an orchestrator stops sending work to a replica that cannot do it. (`/metrics` has
//! a port of its own: see [`crate::metrics`].)
//!
//! Each check is bounded by [`CHECK_TIMEOUT`], so a dependency that hangs makes the
//! replica unready quickly instead of making the probe time out. A result is reused
//! for [`CHECK_REUSE`] by the callers that share it: `/readyz` needs no credentials,
//! and a flood of it costs PostgreSQL, Redis and the broker one check each per second.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use redis::aio::ConnectionManager;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::kafka::{Assignment, Producer};

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a readiness result answers later probes.
pub const CHECK_REUSE: Duration = Duration::from_secs(1);

/// A readiness result: each check's name, and what failed (`None`: passed).
type Checked = Vec<(&'static str, Option<String>)>;

/// What `/readyz` checks. Cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    /// The last result and when it was taken; probes in between wait on the lock and
    /// take it, rather than checking again.
    recent: std::sync::Arc<tokio::sync::Mutex<Option<(std::time::Instant, Checked)>>>,
    pool: PgPool,
    redis: Option<ConnectionManager>,
    /// A client whose metadata request proves a broker answers, and the topic asked about.
    broker: Option<(Producer, String)>,
    consumer: Option<Assignment>,
}

impl Readiness {
    /// Checks PostgreSQL only; add the rest with the `with_` methods.
    pub fn new(pool: PgPool) -> Self {
        Readiness {
            recent: Default::default(),
            pool,
            redis: None,
            broker: None,
            consumer: None,
        }
    }

    /// Also checks that Redis answers `PING`.
    pub fn with_redis(mut self, redis: ConnectionManager) -> Self {
        self.redis = Some(redis);
        self
    }

    /// Also checks that a broker answers a metadata request about `topic`.
    pub fn with_broker(mut self, producer: Producer, topic: &str) -> Self {
        self.broker = Some((producer, topic.to_owned()));
        self
    }

    /// Also checks that the consumer has partitions to read.
    pub fn with_consumer(mut self, assignment: Assignment) -> Self {
        self.consumer = Some(assignment);
        self
    }

    /// Every check's result, at most [`CHECK_REUSE`] old; each name with `None` when it
    /// passed, or what failed.
    pub async fn check(&self) -> Checked {
        let mut recent = self.recent.lock().await;
        if let Some((at, checked)) = recent.as_ref() {
            if at.elapsed() < CHECK_REUSE {
                return checked.clone();
            }
        }
        let checked = self.check_now().await;
        *recent = Some((std::time::Instant::now(), checked.clone()));
        checked
    }

    /// Runs every check at once.
    async fn check_now(&self) -> Checked {
        let postgres = bounded(async {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(|_| "does not answer".to_owned())
        });
        let redis = async {
            match &self.redis {
                Some(redis) => Some(
                    bounded(async {
                        redis::cmd("PING")
                            .query_async::<String>(&mut redis.clone())
                            .await
                            .map(|_| ())
                            .map_err(|_| "does not answer".to_owned())
                    })
                    .await,
                ),
                None => None,
            }
        };
        let broker = async {
            match &self.broker {
                Some((producer, topic)) => Some(
                    producer
                        .reachable(topic, CHECK_TIMEOUT)
                        .await
                        .map_err(|_| "no broker answers".to_owned()),
                ),
                None => None,
            }
        };
        let (postgres, redis, broker) = tokio::join!(postgres, redis, broker);
        let consumer = self.consumer.as_ref().map(|assignment| {
            if assignment.partitions() > 0 {
                Ok(())
            } else {
                Err("no partitions assigned".to_owned())
            }
        });
        [
            ("postgres", Some(postgres)),
            ("redis", redis),
            ("broker", broker),
            ("consumer", consumer),
        ]
        .into_iter()
        .filter_map(|(name, result)| result.map(|r| (name, r.err())))
        .collect()
    }
}

async fn bounded(
    check: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")))
}

/// The health routes, for services that serve nothing else. (Time them with
/// [`crate::metrics::track_http`] once every route is merged in.)
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `200 {"status":"ready","checks":{…}}`, or `503` naming what failed in `failed`.
pub async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, Json<Value>) {
    let results = readiness.check().await;
    let mut checks = Map::new();
    let mut failed = Vec::new();
    for (name, failure) in results {
        match failure {
            None => {
                checks.insert(name.to_owned(), json!("ok"));
            }
            Some(reason) => {
                checks.insert(name.to_owned(), json!(reason));
                failed.push(name);
            }
        }
    }
    if failed.is_empty() {
        (
            StatusCode::OK,
            Json(json!({"status": "ready", "checks": checks})),
        )
    } else {
        tracing::warn!(?failed, "not ready");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "checks": checks, "failed": failed})),
        )
    }
}

/// Binds `address` (port 0 picks a free one).
pub async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))
}

/// The port `listener` is bound to (the real one when bound to port 0).
pub fn port(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or_default()
}
