//! Paygate's api: merchants' REST intake, gateways' callback intake, and an outbox
//! relay that publishes what the api (and anyone else) committed to the event table.
//!
//! [`Application::build`] connects and binds; [`Application::run`] serves until the
//! shutdown token is cancelled. Tests start it on port 0 exactly as `main` does.

pub mod admin;
pub mod callbacks;
pub mod cards;
pub mod demo;
pub mod error;
pub mod extract;
pub mod format;
pub mod idempotency;
pub mod merchants;
pub mod payments;
pub mod queries;
pub mod rate_limit;

use std::sync::Arc;

use anyhow::Context as _;
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;

use rate_limit::RateLimiter;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use paygate_common::cards::{CvvVault, KeyRing};
use paygate_common::outbox::Relay;
use paygate_common::{db, health, Settings};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    /// Seals card numbers at intake.
    pub cards: KeyRing,
    /// Keeps card CVVs for the acquirer.
    pub cvvs: CvvVault,
    pub limiter: RateLimiter,
}

/// The api's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/deposits", post(payments::create_deposit))
        .route("/v1/withdrawals", post(payments::create_withdrawal))
        .route("/deposit", post(payments::create_legacy_deposit))
        .route("/withdrawal", post(payments::create_legacy_withdrawal))
        .route("/v1/transactions", get(queries::list_transactions))
        .route("/v1/transactions/{id}", get(payments::get_transaction))
        .route(
            "/v1/transactions/{id}/events",
            get(queries::transaction_events),
        )
        .route("/v1/webhook-deliveries", get(queries::list_deliveries))
        .route(
            "/v1/webhook-deliveries/{id}/replay",
            post(queries::replay_delivery),
        )
        .nest("/admin/v1", admin::router())
        .route("/v1/callbacks/{gateway}", post(callbacks::receive))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(ready))
        .fallback(|| async { error::ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { error::ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            format::negotiate,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn ready(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> impl axum::response::IntoResponse {
    health::readyz(axum::extract::State(state.pool)).await
}

/// The api, connected and bound, not yet serving.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    relay: Relay,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = db::connect(&settings.database).await?;
        let relay = Relay::for_service(pool.clone(), &settings).await?;
        let listener = health::bind(&settings.api.listen).await?;
        let cards = KeyRing::from_config(&settings.cards.keys)?;
        let cvvs =
            CvvVault::connect(&settings.redis, cards.clone(), settings.cards.cvv_ttl()).await?;
        let limiter = RateLimiter::connect(&settings.redis, &settings.api.rate_limit).await?;
        Ok(Application {
            listener,
            state: AppState {
                pool,
                settings: Arc::new(settings),
                cards,
                cvvs,
                limiter,
            },
            relay,
        })
    }

    /// The port it listens on (the real one when configured with port 0).
    pub fn port(&self) -> u16 {
        health::port(&self.listener)
    }

    /// Serves and relays until `shutdown`; requests in flight and the relay's current
    /// batch finish first.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let relay = tokio::spawn(self.relay.run(shutdown.clone()));
        let served =
            health::serve(self.listener, router(self.state.clone()), shutdown.clone()).await;
        shutdown.cancel();
        relay.await.context("the outbox relay panicked")?;
        self.state.pool.close().await;
        served.context("serving HTTP")
    }
}
