//! A merchant's webhook endpoints as stored (`webhook_endpoint`): what the admin API and
//! the console read and change. The dispatcher reads the same rows to fan events out,
//! keep each endpoint's health and space its requests.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::PgPool;

use paygate_common::cards::KeyRing;
use paygate_common::domain::{EndpointId, MerchantId};
use paygate_common::secrets::Sealed;
use paygate_common::signature::webhook;

/// One endpoint as operators see it (never its secret).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EndpointView {
    /// `whe_…`.
    #[schema(example = "whe_0198c9b2a4e07c3f9d2a61b5e8f4c0d1")]
    pub id: String,
    pub merchant_id: String,
    #[schema(example = "https://merchant.example/webhooks")]
    pub url: String,
    /// The event types it takes (`refund.*`: every refund type); empty: every type.
    #[schema(example = json!(["transaction.completed", "refund.*"]))]
    pub event_types: Vec<String>,
    /// At most this many requests a second, across every dispatcher; `null`: no limit.
    pub rate_limit: Option<i32>,
    /// `false`: switched off by an operator; it takes no new events and what it has
    /// pending waits until it is switched on again.
    pub enabled: bool,
    /// The merchant's first endpoint, the one `PUT /merchants/{id}/webhook` sets.
    pub primary: bool,
    /// `healthy`, `failing` (no success since `failing_since`) or `disabled` (410 Gone,
    /// a refused destination, or failing too long: deliveries wait and it is probed).
    #[schema(example = "healthy")]
    pub health: String,
    pub failing_since: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    /// When a disabled endpoint is next probed with its oldest waiting delivery.
    pub next_probe_at: Option<DateTime<Utc>>,
    /// `false`: it signs with the merchant's webhook secret.
    pub own_secret: bool,
    /// Until when the secret before the last rotation signs too.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Deliveries not yet delivered nor failed.
    pub pending_deliveries: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns of [`EndpointView`], from `webhook_endpoint w`.
const VIEW: &str = "w.id, w.merchant_id, w.url, w.event_types, w.rate_limit, w.enabled, w.is_primary AS primary,
    CASE WHEN w.disabled_at IS NOT NULL THEN 'disabled'
         WHEN w.failing_since IS NOT NULL THEN 'failing'
         ELSE 'healthy' END AS health,
    w.failing_since, w.disabled_at, w.disabled_reason, w.probe_at AS next_probe_at,
    w.secret IS NOT NULL AS own_secret,
    CASE WHEN w.secret_previous_until > now() THEN w.secret_previous_until END AS previous_secret_expires_at,
    (SELECT count(*) FROM webhook_delivery d WHERE d.endpoint_id = w.id AND d.status = 'pending') AS pending_deliveries,
    w.created_at, w.updated_at";

/// What a new endpoint is, checked.
#[derive(Debug)]
pub struct NewEndpoint {
    pub url: String,
    pub event_types: Vec<String>,
    pub rate_limit: Option<i32>,
    pub enabled: bool,
}

/// What changes in an endpoint, checked; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    /// `Some(None)` removes the limit.
    pub rate_limit: Option<Option<i32>>,
    pub enabled: Option<bool>,
}

/// Whether the merchant exists.
pub async fn merchant_exists(pool: &PgPool, merchant: &MerchantId) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM merchant WHERE id = $1)")
        .bind(merchant.as_str())
        .fetch_one(pool)
        .await
}

/// Creates an endpoint with a secret of its own; the endpoint and that secret (shown
/// once), or `None` when there is no such merchant.
pub async fn create(
    pool: &PgPool,
    keys: &KeyRing,
    merchant: &MerchantId,
    new: &NewEndpoint,
) -> anyhow::Result<Option<(EndpointView, String)>> {
    let secret = webhook::generate_secret();
    let sealed = keys.seal_secret(&secret)?;
    let view: Option<EndpointView> = sqlx::query_as(&format!(
        "WITH w AS (
             INSERT INTO webhook_endpoint (id, merchant_id, url, event_types, rate_limit, enabled, secret)
             SELECT $2, id, $3, $4, $5, $6, $7 FROM merchant WHERE id = $1
          RETURNING *
         )
         SELECT {VIEW} FROM w"
    ))
    .bind(merchant.as_str())
    .bind(EndpointId::new().as_str())
    .bind(&new.url)
    .bind(&new.event_types)
    .bind(new.rate_limit)
    .bind(new.enabled)
    .bind(sealed.as_stored())
    .fetch_optional(pool)
    .await
    .context("creating a webhook endpoint")?;
    Ok(view.map(|view| (view, secret)))
}

/// The merchant's endpoints, oldest first.
pub async fn list(pool: &PgPool, merchant: &MerchantId) -> sqlx::Result<Vec<EndpointView>> {
    sqlx::query_as(&format!(
        "SELECT {VIEW} FROM webhook_endpoint w WHERE w.merchant_id = $1 ORDER BY w.created_at, w.id"
    ))
    .bind(merchant.as_str())
    .fetch_all(pool)
    .await
}

/// One endpoint of the merchant's.
pub async fn find(
    pool: &PgPool,
    merchant: &MerchantId,
    endpoint: &EndpointId,
) -> sqlx::Result<Option<EndpointView>> {
    sqlx::query_as(&format!(
        "SELECT {VIEW} FROM webhook_endpoint w WHERE w.merchant_id = $1 AND w.id = $2"
    ))
    .bind(merchant.as_str())
    .bind(endpoint.as_str())
    .fetch_optional(pool)
    .await
}

/// Applies `change`. A new URL starts healthy, like `PUT /merchants/{id}/webhook`; a new
/// URL or switching it on makes what it has waiting due at once (in order, as ever).
pub async fn update(
    pool: &PgPool,
    merchant: &MerchantId,
    endpoint: &EndpointId,
    change: &EndpointChange,
) -> sqlx::Result<Option<EndpointView>> {
    sqlx::query_as(&format!(
        "WITH w AS (
             UPDATE webhook_endpoint
                SET url = coalesce($3, url),
                    event_types = coalesce($4, event_types),
                    rate_limit = CASE WHEN $5 THEN $6 ELSE rate_limit END,
                    enabled = coalesce($7, enabled),
                    failing_since = CASE WHEN $3::text IS NULL THEN failing_since END,
                    disabled_at = CASE WHEN $3::text IS NULL THEN disabled_at END,
                    disabled_reason = CASE WHEN $3::text IS NULL THEN disabled_reason END,
                    probe_at = CASE WHEN $3::text IS NULL THEN probe_at END,
                    updated_at = now()
              WHERE merchant_id = $1 AND id = $2
          RETURNING *
         ), due AS (
             UPDATE webhook_delivery SET next_attempt_at = now()
              WHERE endpoint_id IN (SELECT id FROM w) AND status = 'pending'
                AND ($3::text IS NOT NULL OR coalesce($7, false))
                AND next_attempt_at > now() + interval '1 minute'
         )
         SELECT {VIEW} FROM w"
    ))
    .bind(merchant.as_str())
    .bind(endpoint.as_str())
    .bind(&change.url)
    .bind(&change.event_types)
    .bind(change.rate_limit.is_some())
    .bind(change.rate_limit.flatten())
    .bind(change.enabled)
    .fetch_optional(pool)
    .await
}

/// Deletes an endpoint; what it still had pending fails (it is never sent elsewhere).
/// Whether there was one.
pub async fn delete(
    pool: &PgPool,
    merchant: &MerchantId,
    endpoint: &EndpointId,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE webhook_delivery d SET status = 'failed', next_attempt_at = NULL, updated_at = now()
          WHERE d.endpoint_id = $2 AND d.status = 'pending'
            AND EXISTS (SELECT 1 FROM webhook_endpoint w WHERE w.id = $2 AND w.merchant_id = $1)",
    )
    .bind(merchant.as_str())
    .bind(endpoint.as_str())
    .execute(&mut *tx)
    .await?;
    let deleted = sqlx::query("DELETE FROM webhook_endpoint WHERE merchant_id = $1 AND id = $2")
        .bind(merchant.as_str())
        .bind(endpoint.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(deleted.rows_affected() == 1)
}

/// Gives the endpoint a new secret of its own; the one it signed with (its own, or the
/// merchant's) keeps signing beside it for `overlap`. The new secret and when the old
/// one stops; `None` when there is no such endpoint.
pub async fn rotate_secret(
    pool: &PgPool,
    keys: &KeyRing,
    merchant: &MerchantId,
    endpoint: &EndpointId,
    overlap: std::time::Duration,
) -> anyhow::Result<Option<(String, DateTime<Utc>)>> {
    let secret = webhook::generate_secret();
    let sealed = keys.seal_secret(&secret)?;
    let until: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE webhook_endpoint w
            SET secret_previous = coalesce(w.secret, m.webhook_secret),
                secret_previous_until = now() + make_interval(secs => $4),
                secret = $3, updated_at = now()
           FROM merchant m
          WHERE w.merchant_id = $1 AND w.id = $2 AND m.id = w.merchant_id
      RETURNING w.secret_previous_until",
    )
    .bind(merchant.as_str())
    .bind(endpoint.as_str())
    .bind(sealed.as_stored())
    .bind(overlap.as_secs_f64())
    .fetch_optional(pool)
    .await
    .context("rotating an endpoint's secret")?;
    Ok(until.map(|until| (secret, until)))
}

/// Where a test webhook goes and what signs it, opened (the newest first): as the
/// dispatcher signs, HMAC secrets and the merchant's Ed25519 keys.
pub struct PingTarget {
    pub url: String,
    pub secrets: Vec<SecretString>,
    pub signing_keys: Vec<SecretString>,
}

/// The endpoint's URL and signing secrets; `None` when there is no such endpoint.
pub async fn ping_target(
    pool: &PgPool,
    keys: &KeyRing,
    merchant: &MerchantId,
    endpoint: &EndpointId,
) -> anyhow::Result<Option<PingTarget>> {
    type Row = (
        String,
        Sealed,
        Option<Sealed>,
        Option<Sealed>,
        Option<Sealed>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT w.url, coalesce(w.secret, m.webhook_secret),
                CASE WHEN w.secret IS NOT NULL THEN CASE WHEN w.secret_previous_until > now() THEN w.secret_previous END
                     WHEN m.webhook_secret_previous_until > now() THEN m.webhook_secret_previous END,
                m.webhook_signing_key,
                CASE WHEN m.webhook_signing_key_previous_until > now() THEN m.webhook_signing_key_previous END
           FROM webhook_endpoint w JOIN merchant m ON m.id = w.merchant_id
          WHERE w.merchant_id = $1 AND w.id = $2",
    )
    .bind(merchant.as_str())
    .bind(endpoint.as_str())
    .fetch_optional(pool)
    .await
    .context("reading an endpoint to test")?;
    row.map(
        |(url, secret, previous, signing_key, previous_signing_key)| {
            let secrets = std::iter::once(&secret)
                .chain(previous.as_ref())
                .map(|sealed| keys.open_secret(sealed))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let signing_keys = signing_key
                .iter()
                .chain(previous_signing_key.as_ref())
                .map(|sealed| keys.open_secret(sealed))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(PingTarget {
                url,
                secrets,
                signing_keys,
            })
        },
    )
    .transpose()
}
