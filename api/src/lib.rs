//! Paygate's api: merchants' REST intake, gateways' callback intake, and an outbox
//! relay that publishes what the api (and anyone else) committed to the event table.
//!
//! [`Application::build`] connects and binds; [`Application::run`] serves until the
//! shutdown token is cancelled. Tests start it on port 0 exactly as `main` does.
//!
//! [`routes`] lists every route once, and from it come both the router and the OpenAPI
//! document served at `/openapi.json` (see [`openapi`]).
//!
//! Its listeners: `api.listen` (merchants, gateways, probes), `api.metrics_listen`
//! (the scraper's `/metrics`), and, when `admin.listen` is set, an internal one that
//! alone serves the admin API and the console. Every one is bounded as
//! `paygate_common::http_server` says; a request body must arrive within
//! `api.body_read_timeout_ms`, inside the request's deadline.
//!
//! Its modules are rooms named by audience: [`merchant`] (intake, queries, JWKS),
//! [`gateways`] (callbacks), [`admin`] (the admin API, merchants, interventions, the
//! demo seed) and [`console`] (the operators' HTML pages), over [`http`], what they all
//! share (format negotiation, extractors, the error contract, limits, API keys).

pub mod admin;
pub mod console;
pub mod gateways;
pub mod http;
pub mod merchant;
pub mod openapi;
pub mod purge;

// The paths other crates and the tests use.
pub use admin::{demo, merchants};
pub use http::{api_keys, error};

use gateways::callbacks;
use http::{client_limit, format, rate_limit};
use merchant::{idempotency, payments, queries, refunds, webhook_keys};

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::Router;
use sqlx::PgPool;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use rate_limit::RateLimiter;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use paygate_common::cards::{CvvVault, KeyRing};
use paygate_common::group_commit::GroupCommit;
use paygate_common::health::Readiness;
use paygate_common::http_server::{self, Limits};
use paygate_common::kafka::Producer;
use paygate_common::outbox::Relay;
use paygate_common::supervisor::Supervisor;
use paygate_common::{
    backlog, db, health, metrics, redis_connection, trace, transactions, Settings,
};

/// What every handler can reach: one [`Shared`] behind a reference count. Every
/// extractor takes its own copy of the router's state, several a request, so a copy is
/// one atomic increment rather than a clone of each field (that was 4 % of the api's
/// CPU under load, `perf` at `scripts/bench --rate 420`).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The pools, caches and clients the api's handlers share.
pub struct Shared {
    pub pool: PgPool,
    pub settings: Settings,
    /// The card ring: seals card numbers at intake.
    pub cards: KeyRing,
    /// The secrets ring: seals and opens webhook and callback secrets and signing keys.
    pub secrets: KeyRing,
    /// Recognises `Idempotency-Key` requests.
    pub fingerprints: idempotency::Fingerprints,
    /// Keeps card CVVs for the acquirer.
    pub cvvs: CvvVault,
    pub limiter: RateLimiter,
    /// Gateways as callbacks look them up.
    pub gateways: paygate_common::gateway::GatewayCache,
    /// What `/readyz` checks: PostgreSQL, Redis and the broker.
    pub readiness: Readiness,
    /// Merchants' API keys as requests check them.
    pub api_keys: api_keys::ApiKeyCache,
    /// What a client may cost per address before it has authenticated.
    pub clients: client_limit::ClientLimits,
    /// Payments taken at one moment, committed together.
    pub intake: GroupCommit<transactions::PendingPayment>,
    /// Gateway callbacks kept at one moment, committed together.
    pub callbacks: GroupCommit<transactions::NewCallback>,
    /// Produces the commands that are not a payment's events (settlement runs asked for
    /// by operators), straight to their topic: no database write goes with them.
    pub producer: Producer,
}

/// Every route the api documents, and the document they make. Each handler's
/// `#[utoipa::path]` gives its path and method, and `routes!` registers the handler in
/// the router and its operation in the document together: a route added here is
/// documented, and the document names no route that is not served. (The router's
/// `.route()` would add a route without documenting it: none is added that way.)
pub fn routes() -> OpenApiRouter<AppState> {
    public_routes().nest("/admin/v1", admin::router())
}

/// The routes of [`routes`] for merchants, gateways and probes: all but the admin API.
fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(payments::create_deposit))
        .routes(routes!(payments::create_withdrawal))
        .routes(routes!(payments::create_legacy_deposit))
        .routes(routes!(payments::create_legacy_withdrawal))
        .routes(routes!(queries::list_transactions))
        .routes(routes!(payments::get_transaction))
        .routes(routes!(queries::transaction_events))
        .routes(routes!(refunds::create_refund, refunds::list_refunds))
        .routes(routes!(refunds::get_refund))
        .routes(routes!(queries::list_deliveries))
        .routes(routes!(queries::replay_delivery))
        .routes(routes!(webhook_keys::jwks))
        .routes(routes!(callbacks::receive))
        .routes(routes!(callbacks::receive_legacy))
        .routes(routes!(healthz))
        .routes(routes!(ready))
}

/// The OpenAPI document of [`routes`], as `GET /openapi.json` serves it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// Answers 503 `request_timeout` when a request is not done within
/// `api.request_timeout_ms` of its arrival (reading its body included, see
/// [`format::negotiate`]), dropping its work (inside the JSON/XML negotiation, so the
/// error comes in the client's format).
async fn request_deadline(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let limit = state.settings.api.request_timeout_ms;
    let arrived = request
        .extensions()
        .get::<format::Arrived>()
        .map_or_else(tokio::time::Instant::now, |arrived| arrived.0);
    let deadline = arrived + Duration::from_millis(limit);
    match tokio::time::timeout_at(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error::ApiError::TimedOut(limit).into_response(),
    }
}

/// Everything on one listener: [`routes`] (the admin API included), `/openapi.json`,
/// `/docs` and the console. What `scripts/up` and the tests serve.
pub fn router(state: AppState) -> Router {
    let (routes, document) = routes().split_for_parts();
    with_api_layers(routes.merge(openapi::serve(document)), state.clone())
        // The operator console: HTML pages with their own errors, outside the JSON/XML
        // negotiation.
        .merge(console::router(state))
}

/// The public listener when operators have one of their own: [`routes`] without the
/// admin API, `/openapi.json` (the whole document) and `/docs`; no console.
pub fn public_router(state: AppState) -> Router {
    let (routes, _) = public_routes().split_for_parts();
    with_api_layers(routes.merge(openapi::serve(openapi_document())), state)
}

/// The operators' listener: the admin API under `/admin/v1` and the console.
pub fn operator_router(state: AppState) -> Router {
    let (routes, _) = OpenApiRouter::<AppState>::new()
        .nest("/admin/v1", admin::router())
        .split_for_parts();
    with_api_layers(routes, state.clone()).merge(console::router(state))
}

/// One error contract for unknown routes and methods, the request deadline, JSON/XML
/// negotiation (with the body read within its timeout), metrics and the request span.
fn with_api_layers(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(|| async { error::ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { error::ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            format::negotiate,
        ))
        .layer(axum::middleware::from_fn(metrics::track_http))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// The span of one request. `transaction_id` and `trace_id` are filled in by the
/// handler once it knows the payment (see `paygate_common::trace::record_transaction`),
/// so every later line of the request carries them; a caller's own `traceparent` is
/// kept as `caller_trace`.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let caller_trace = request
        .headers()
        .get(trace::TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(trace::TraceContext::parse)
        .map(|context| context.trace_id());
    tracing::info_span!(
        "request",
        method = %request.method(),
        route = route.as_deref().unwrap_or("unmatched"),
        caller_trace = caller_trace.as_deref(),
        transaction_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    )
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "Alive.", body = openapi::HealthStatus)),
)]
async fn healthz() -> impl IntoResponse {
    health::healthz().await
}

/// Readiness: PostgreSQL, Redis and a Kafka broker answer.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready.", body = openapi::HealthStatus),
        (status = 503, description = "PostgreSQL, Redis or the broker does not answer; the message names which (`not ready: broker`).", body = error::ErrorEnvelope),
    ),
)]
async fn ready(State(state): State<AppState>) -> axum::response::Response {
    let (status, body) = health::readyz(State(state.readiness.clone())).await;
    if status.is_success() {
        return (status, body).into_response();
    }
    // On the api's port an error answers in the one error contract.
    let failed: Vec<&str> = body["failed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|check| check.as_str())
        .collect();
    error::ErrorBody {
        code: "service_unavailable",
        message: format!("not ready: {}", failed.join(", ")),
        field: None,
    }
    .json(status)
}

/// The api, connected and bound, not yet serving.
pub struct Application {
    listener: TcpListener,
    metrics_listener: TcpListener,
    /// The operators' own listener, when `admin.listen` is set.
    admin_listener: Option<TcpListener>,
    state: AppState,
    relay: Relay,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.refuse_development_secrets(paygate_common::environment::Uses::ALL)?;
        metrics::install();
        let pool = db::connect(&settings.database).await?;
        let relay = Relay::for_service(&settings).await?;
        let listener = health::bind(&settings.api.listen).await?;
        let metrics_listener = health::bind(&settings.api.metrics_listen).await?;
        let admin_listener = match settings.admin.listen.as_str() {
            "" => None,
            address => Some(health::bind(address).await?),
        };
        let cards = settings.cards.key_ring()?;
        let secrets = settings.secrets.key_ring()?;
        let fingerprints = idempotency::Fingerprints::from_settings(&settings.api.idempotency)?;
        // Secrets stored before they were sealed are sealed now (idempotent).
        paygate_common::secrets::seal_stored(&pool, &secrets).await?;
        let cvvs =
            CvvVault::connect(&settings.redis, cards.clone(), settings.cards.cvv_ttl()).await?;
        let limiter = RateLimiter::connect(&settings.redis, &settings.api.rate_limit).await?;
        let producer = Producer::new(&settings.kafka)?;
        let readiness = Readiness::new(pool.clone())
            .with_redis(redis_connection::connect(&settings.redis).await?)
            .with_broker(producer.clone(), &settings.kafka.topics.payments_requested);
        let api_keys = api_keys::ApiKeyCache::new(
            Duration::from_millis(settings.api.key_cache_ttl_ms),
            Duration::from_millis(settings.api.unknown_key_cache_ttl_ms),
        );
        let clients = client_limit::ClientLimits {
            unauthenticated: client_limit::AddressLimit::from_settings(
                &settings.api.unauthenticated,
            ),
            sign_in: client_limit::AddressLimit::new(
                settings.admin.sign_in_attempts,
                Duration::from_millis(settings.admin.sign_in_window_ms),
            ),
        };
        Ok(Application {
            listener,
            metrics_listener,
            admin_listener,
            state: AppState(Arc::new(Shared {
                intake: GroupCommit::new(pool.clone()),
                callbacks: GroupCommit::new(pool.clone()),
                pool,
                settings,
                cards,
                secrets,
                fingerprints,
                cvvs,
                limiter,
                gateways: paygate_common::gateway::GatewayCache::default(),
                readiness,
                api_keys,
                clients,
                producer,
            })),
            relay,
        })
    }

    /// The port it listens on (the real one when configured with port 0).
    pub fn port(&self) -> u16 {
        health::port(&self.listener)
    }

    /// The port of its `/metrics`.
    pub fn metrics_port(&self) -> u16 {
        health::port(&self.metrics_listener)
    }

    /// The port of the operators' listener, when `admin.listen` gives it one.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_listener.as_ref().map(health::port)
    }

    /// Its API key cache (tests watch it start listening for key changes).
    pub fn api_keys(&self) -> api_keys::ApiKeyCache {
        self.state.api_keys.clone()
    }

    /// Serves and relays until `shutdown`; requests in flight and the relay's current
    /// batch finish first, within `shutdown.grace_period_ms`. If the HTTP server or the
    /// relay ends or panics on its own, the other is stopped and the error returned.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tasks = Supervisor::new(
            shutdown.clone(),
            self.state.settings.shutdown.grace_period(),
        );
        let (relay, token) = (self.relay, shutdown.clone());
        tasks.spawn("outbox relay", async move {
            relay.run(token).await;
            Ok(())
        });
        tasks.spawn(
            "outbox backlog sampler",
            backlog::sample(self.state.pool.clone(), shutdown.clone()),
        );
        tasks.spawn(
            "purge",
            purge::run(
                self.state.pool.clone(),
                purge::Retention::of(&self.state.settings),
                shutdown.clone(),
            ),
        );
        let (keys, pool, token) = (
            self.state.api_keys.clone(),
            self.state.pool.clone(),
            shutdown.clone(),
        );
        tasks.spawn("API key listener", async move {
            keys.invalidate_on_change(pool, token).await;
            Ok(())
        });
        let limits = Limits::from(&self.state.settings.http);
        let public = match self.admin_listener {
            None => router(self.state.clone()),
            Some(admin_listener) => {
                let served = http_server::serve(
                    admin_listener,
                    operator_router(self.state.clone()),
                    limits,
                    shutdown.clone(),
                );
                tasks.spawn("admin http server", async move {
                    served.await.context("serving the admin listener")
                });
                public_router(self.state.clone())
            }
        };
        let served = http_server::serve(self.listener, public, limits, shutdown.clone());
        tasks.spawn("http server", async move {
            served.await.context("serving HTTP")
        });
        let scraped = metrics::serve(self.metrics_listener, limits, shutdown.clone());
        tasks.spawn("metrics endpoint", async move {
            scraped.await.context("serving metrics")
        });
        let result = tasks.run().await;
        self.state.pool.close().await;
        result
    }
}
