//! Gateways and routes as operators store them (`gateway`, `gateway_route`).

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use sqlx::PgExecutor;

use crate::cards::KeyRing;
use crate::domain::Kind;
use crate::secrets::Sealed;

/// A row of `gateway`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GatewayRecord {
    pub code: String,
    /// Which adapter speaks to it: a [`super::Gateway::protocol`].
    pub protocol: String,
    /// Where its API lives; paths are appended by the adapter.
    pub base_url: String,
    /// Checks the signature of its callbacks; sealed (see [`crate::secrets`]).
    pub callback_secret: Sealed,
    pub timeout_ms: i32,
    /// Calls in flight to it at once, at most, from one payment-processor.
    pub max_concurrency: i32,
    pub enabled: bool,
    /// After an ambiguous attempt, how long "unknown reference" is not yet an answer
    /// (an overloaded gateway may not have stored the payment yet).
    pub settle_window_ms: i32,
    /// How long a `processing` payment waits for its callback before it is asked about.
    pub callback_deadline_ms: i32,
    /// How long a `processing` payment may stay unsettled before a human looks.
    pub review_after_ms: i32,
}

impl GatewayRecord {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.timeout_ms).unwrap_or(10_000))
    }

    pub fn settle_window(&self) -> Duration {
        millis(self.settle_window_ms)
    }

    pub fn callback_deadline(&self) -> Duration {
        millis(self.callback_deadline_ms)
    }

    pub fn review_after(&self) -> Duration {
        millis(self.review_after_ms)
    }

    /// The adapter for its protocol; `None` for a protocol this build does not speak
    /// (refused when the gateway is stored, so only an old row can have one).
    pub fn adapter(&self) -> Option<&'static dyn super::Gateway> {
        super::adapter(&self.protocol)
    }
}

fn millis(ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

pub(crate) const COLUMNS: &str = "code, protocol, base_url, callback_secret, timeout_ms, \
     max_concurrency, enabled, settle_window_ms, callback_deadline_ms, review_after_ms";

/// Reads one gateway by code.
pub async fn find<'e>(
    executor: impl PgExecutor<'e>,
    code: &str,
) -> sqlx::Result<Option<GatewayRecord>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM gateway WHERE code = $1"))
        .bind(code)
        .fetch_optional(executor)
        .await
}

/// Every gateway, by code.
pub async fn all<'e>(executor: impl PgExecutor<'e>) -> sqlx::Result<Vec<GatewayRecord>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM gateway ORDER BY code"))
        .fetch_all(executor)
        .await
}

/// A gateway's configuration, as an operator sets it.
#[derive(Debug, Clone, Deserialize)]
pub struct GatewayConfig {
    pub code: String,
    pub protocol: String,
    pub base_url: String,
    pub callback_secret: SecretString,
    pub timeout_ms: i32,
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: i32,
    pub enabled: bool,
    #[serde(flatten, default)]
    pub timings: Timings,
}

/// How long a gateway's answers are waited for (see [`GatewayRecord`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Timings {
    /// See [`GatewayRecord::settle_window_ms`]; 10 minutes by default.
    pub settle_window_ms: i32,
    /// See [`GatewayRecord::callback_deadline_ms`]; 5 minutes by default.
    pub callback_deadline_ms: i32,
    /// See [`GatewayRecord::review_after_ms`]; a day by default.
    pub review_after_ms: i32,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            // Well above any gateway's processing time: an unknown reference is only an
            // answer once the gateway has certainly stored every request it received.
            settle_window_ms: 600_000,
            callback_deadline_ms: 300_000,
            review_after_ms: 86_400_000,
        }
    }
}

fn default_max_concurrency() -> i32 {
    32
}

/// Why a gateway could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no adapter speaks the {0:?} protocol")]
    UnknownProtocol(String),
    #[error("sealing the callback secret failed: {0:#}")]
    Seal(anyhow::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates or replaces a gateway, its callback secret sealed with `keys`.
pub async fn upsert<'e>(
    executor: impl PgExecutor<'e>,
    keys: &KeyRing,
    gateway: &GatewayConfig,
) -> Result<(), GatewayError> {
    if super::adapter(&gateway.protocol).is_none() {
        return Err(GatewayError::UnknownProtocol(gateway.protocol.clone()));
    }
    let secret = keys
        .seal_secret(gateway.callback_secret.expose_secret())
        .map_err(GatewayError::Seal)?;
    sqlx::query(
        "INSERT INTO gateway (code, protocol, base_url, callback_secret, timeout_ms, max_concurrency, enabled,
                              settle_window_ms, callback_deadline_ms, review_after_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (code) DO UPDATE
            SET protocol = EXCLUDED.protocol, base_url = EXCLUDED.base_url,
                callback_secret = EXCLUDED.callback_secret, timeout_ms = EXCLUDED.timeout_ms,
                max_concurrency = EXCLUDED.max_concurrency, enabled = EXCLUDED.enabled,
                settle_window_ms = EXCLUDED.settle_window_ms,
                callback_deadline_ms = EXCLUDED.callback_deadline_ms,
                review_after_ms = EXCLUDED.review_after_ms,
                updated_at = now()",
    )
    .bind(&gateway.code)
    .bind(&gateway.protocol)
    .bind(&gateway.base_url)
    .bind(secret.as_stored())
    .bind(gateway.timeout_ms)
    .bind(gateway.max_concurrency)
    .bind(gateway.enabled)
    .bind(gateway.timings.settle_window_ms)
    .bind(gateway.timings.callback_deadline_ms)
    .bind(gateway.timings.review_after_ms)
    .execute(executor)
    .await?;
    Ok(())
}

/// Switches a gateway on or off; `false` when there is no such gateway.
pub async fn set_enabled<'e>(
    executor: impl PgExecutor<'e>,
    code: &str,
    enabled: bool,
) -> sqlx::Result<bool> {
    let updated =
        sqlx::query("UPDATE gateway SET enabled = $2, updated_at = now() WHERE code = $1")
            .bind(code)
            .bind(enabled)
            .execute(executor)
            .await?;
    Ok(updated.rows_affected() == 1)
}

/// A route: for payments matching (country, currency, kind) — `None` matches anything,
/// and a route without a country is a default route — try `gateway_code` at `priority`.
/// Operators send it as is (`PUT /admin/v1/routes`), so an unknown field is refused, as
/// in every request body, rather than ignored.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    description = "A route: payments matching its `country`, `currency` and `kind` (an absent one matches anything; no country makes a default route) go to `gateway_code`, lower `priority` first."
)]
pub struct Route {
    /// ISO 3166-1 alpha-2; absent: any country (a default route).
    #[schema(example = "DE")]
    pub country: Option<String>,
    /// ISO 4217; absent: any currency.
    #[schema(example = "EUR")]
    pub currency: Option<String>,
    /// `deposit` or `withdrawal`; absent: both.
    #[schema(value_type = Option<String>, example = "deposit")]
    pub kind: Option<Kind>,
    /// Lower is tried first.
    pub priority: i32,
    pub gateway_code: String,
}

pub async fn upsert_route<'e>(executor: impl PgExecutor<'e>, route: &Route) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO gateway_route (country, currency, kind, priority, gateway_code)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT ON CONSTRAINT gateway_route_unique DO UPDATE SET priority = EXCLUDED.priority",
    )
    .bind(&route.country)
    .bind(&route.currency)
    .bind(route.kind.map(|k| k.as_str()))
    .bind(route.priority)
    .bind(&route.gateway_code)
    .execute(executor)
    .await?;
    Ok(())
}

/// A `gateway_route` row as read: country, currency, kind, priority, gateway.
type RouteRow = (Option<String>, Option<String>, Option<String>, i32, String);

/// Every route.
pub async fn all_routes<'e>(executor: impl PgExecutor<'e>) -> sqlx::Result<Vec<Route>> {
    let rows: Vec<RouteRow> = sqlx::query_as(
        "SELECT trim(country), trim(currency), kind, priority, gateway_code
           FROM gateway_route ORDER BY id",
    )
    .fetch_all(executor)
    .await?;
    rows.into_iter()
        .map(|(country, currency, kind, priority, gateway_code)| {
            let kind = kind
                .map(|k| k.parse::<Kind>())
                .transpose()
                .map_err(|e| sqlx::Error::Decode(e.into()))?;
            Ok(Route {
                country,
                currency,
                kind,
                priority,
                gateway_code,
            })
        })
        .collect()
}
