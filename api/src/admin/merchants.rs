//! Merchants and their credentials. The admin API and the demo seed both come through
//! here, so demo data is made the way real data is.

use anyhow::Context as _;
use rand::RngCore;
use sqlx::{PgConnection, PgPool};

use paygate_common::cards::KeyRing;
use paygate_common::domain::{ApiKeyId, EndpointId, MerchantId};
use paygate_common::secrets::Sealed;
use paygate_common::signature::webhook;
use secrecy::ExposeSecret as _;

use crate::http::extract::hash_api_key;

/// A new merchant's credentials: the API key is shown once and only its hash is kept;
/// the webhook secret is stored sealed (see [`paygate_common::secrets`]). Its `Debug`
/// shows neither.
#[derive(Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NewMerchant {
    /// `mer_…`.
    #[schema(value_type = String, example = "mer_0198c9b2a4e07c3f9d2a61b5e8f4c0d1")]
    pub id: MerchantId,
    /// `Authorization: Bearer <api_key>`; shown this once.
    #[schema(example = "pgk_…")]
    pub api_key: String,
    /// What webhooks are signed with (Standard Webhooks, `whsec_<base64>`).
    #[schema(example = "whsec_…")]
    pub webhook_secret: String,
}

impl std::fmt::Debug for NewMerchant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewMerchant")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A fresh API key: `pgk_` and 32 random bytes in hex.
pub fn generate_api_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("pgk_{}", hex::encode(bytes))
}

/// Creates a merchant with one API key (`api_key`, or a generated one).
pub async fn create(
    pool: &PgPool,
    keys: &KeyRing,
    name: &str,
    webhook_url: Option<&str>,
    api_key: Option<String>,
) -> anyhow::Result<NewMerchant> {
    let id = MerchantId::new();
    let webhook_secret = webhook::generate_secret();
    let sealed = keys.seal_secret(&webhook_secret)?;
    let api_key = api_key.unwrap_or_else(generate_api_key);
    let mut tx = pool.begin().await?;
    // With a URL, its first endpoint: every event, signed with the merchant's secret.
    sqlx::query(
        "WITH merchant AS (
             INSERT INTO merchant (id, name, webhook_secret) VALUES ($1, $2, $4) RETURNING id
         )
         INSERT INTO webhook_endpoint (id, merchant_id, url, is_primary)
         SELECT $5, id, $3, true FROM merchant WHERE $3::text IS NOT NULL",
    )
    .bind(id.as_str())
    .bind(name)
    .bind(webhook_url)
    .bind(sealed.as_stored())
    .bind(EndpointId::new().as_str())
    .execute(&mut *tx)
    .await
    .context("inserting the merchant")?;
    add_api_key(&mut tx, &id, &api_key).await?;
    tx.commit().await?;
    Ok(NewMerchant {
        id,
        api_key,
        webhook_secret,
    })
}

/// Stores an API key for a merchant.
pub async fn add_api_key(
    conn: &mut PgConnection,
    merchant: &MerchantId,
    api_key: &str,
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO api_key (id, merchant_id, key_hash, prefix) VALUES ($1, $2, $3, $4)")
        .bind(ApiKeyId::new().as_str())
        .bind(merchant.as_str())
        .bind(hash_api_key(api_key))
        .bind(api_key.chars().take(12).collect::<String>())
        .execute(conn)
        .await
        .context("storing the API key")?;
    Ok(())
}

/// The merchant an API key belongs to, with its webhook secret, if the key is known.
pub async fn find_by_api_key(
    pool: &PgPool,
    keys: &KeyRing,
    api_key: &str,
) -> anyhow::Result<Option<(MerchantId, String)>> {
    let row: Option<(String, Sealed)> = sqlx::query_as(
        "SELECT m.id, m.webhook_secret FROM api_key k JOIN merchant m ON m.id = k.merchant_id
          WHERE k.key_hash = $1 AND k.revoked_at IS NULL
            AND (k.expires_at IS NULL OR k.expires_at > now())",
    )
    .bind(hash_api_key(api_key))
    .fetch_optional(pool)
    .await?;
    row.map(|(id, secret)| {
        let secret = keys.open_secret(&secret)?;
        Ok((id.parse()?, secret.expose_secret().to_owned()))
    })
    .transpose()
}

/// Points a merchant's first endpoint (the one this route has always set) at `url`
/// (`None`: removes it; what it still had pending goes to the URL it was recorded with);
/// `false` when there is no such merchant. A new URL starts healthy: a disabled
/// endpoint is enabled again and its waiting deliveries are due at once (in order, as
/// ever). The merchant's other endpoints are untouched.
pub async fn set_webhook_url(
    pool: &PgPool,
    merchant: &MerchantId,
    url: Option<&str>,
) -> anyhow::Result<bool> {
    let updated = sqlx::query(
        "WITH merchant AS (
             SELECT id FROM merchant WHERE id = $1
         ), endpoint AS (
             INSERT INTO webhook_endpoint (id, merchant_id, url, is_primary)
             SELECT $3, id, $2, true FROM merchant WHERE $2::text IS NOT NULL
             ON CONFLICT (merchant_id) WHERE is_primary
             DO UPDATE SET url = EXCLUDED.url, failing_since = NULL, disabled_at = NULL,
                           disabled_reason = NULL, probe_at = NULL, updated_at = now()
          RETURNING id
         ), removed AS (
             DELETE FROM webhook_endpoint
              WHERE merchant_id = $1 AND is_primary AND $2::text IS NULL
         ), due AS (
             UPDATE webhook_delivery SET next_attempt_at = now()
              WHERE endpoint_id IN (SELECT id FROM endpoint) AND status = 'pending'
                AND next_attempt_at > now() + interval '1 minute'
         )
         SELECT count(*) FROM merchant",
    )
    .bind(merchant.as_str())
    .bind(url)
    .bind(EndpointId::new().as_str())
    .fetch_one(pool)
    .await
    .context("pointing the merchant's webhooks")?;
    let updated: i64 = sqlx::Row::get(&updated, 0);
    Ok(updated == 1)
}

/// A merchant's first webhook endpoint (the one `PUT /merchants/{id}/webhook` sets) as
/// the sender sees it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WebhookEndpoint {
    /// Where webhooks go; `null`: the merchant takes none.
    pub webhook_url: Option<String>,
    /// `enabled`, `failing` (no success since `failing_since`) or `disabled` (410 Gone,
    /// a refused destination, or failing too long: deliveries wait and it is probed).
    #[schema(example = "enabled")]
    pub state: String,
    pub failing_since: Option<chrono::DateTime<chrono::Utc>>,
    pub disabled_at: Option<chrono::DateTime<chrono::Utc>>,
    pub disabled_reason: Option<String>,
    /// When a disabled endpoint is next probed with its oldest waiting delivery.
    pub next_probe_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Deliveries not yet delivered nor failed.
    pub pending_deliveries: i64,
    /// Until when the secret before the last rotation signs too.
    pub previous_secret_expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The merchant's webhook endpoint; `None` when there is no such merchant.
pub async fn webhook_endpoint(
    pool: &PgPool,
    merchant: &MerchantId,
) -> sqlx::Result<Option<WebhookEndpoint>> {
    sqlx::query_as(
        "SELECT w.url AS webhook_url,
                CASE WHEN w.disabled_at IS NOT NULL THEN 'disabled'
                     WHEN w.failing_since IS NOT NULL THEN 'failing'
                     ELSE 'enabled' END AS state,
                w.failing_since, w.disabled_at, w.disabled_reason, w.probe_at AS next_probe_at,
                (SELECT count(*) FROM webhook_delivery d
                  WHERE d.merchant_id = m.id AND d.status = 'pending') AS pending_deliveries,
                CASE WHEN m.webhook_secret_previous_until > now()
                     THEN m.webhook_secret_previous_until END AS previous_secret_expires_at
           FROM merchant m
           LEFT JOIN webhook_endpoint w ON w.merchant_id = m.id AND w.is_primary
          WHERE m.id = $1",
    )
    .bind(merchant.as_str())
    .fetch_optional(pool)
    .await
}

/// A new webhook signing secret; the current one keeps signing beside it (a second
/// `v1,` signature) for `overlap`. Returns the new secret and when the old one stops.
pub async fn rotate_webhook_secret(
    pool: &PgPool,
    keys: &KeyRing,
    merchant: &MerchantId,
    overlap: std::time::Duration,
) -> anyhow::Result<Option<(String, chrono::DateTime<chrono::Utc>)>> {
    let secret = webhook::generate_secret();
    let sealed = keys.seal_secret(&secret)?;
    let until: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "UPDATE merchant
            SET webhook_secret_previous = webhook_secret,
                webhook_secret_previous_until = now() + make_interval(secs => $3),
                webhook_secret = $2
          WHERE id = $1
      RETURNING webhook_secret_previous_until",
    )
    .bind(merchant.as_str())
    .bind(sealed.as_stored())
    .bind(overlap.as_secs_f64())
    .fetch_optional(pool)
    .await
    .context("rotating the webhook secret")?;
    Ok(until.map(|until| (secret, until)))
}

/// Issues a new API key; the merchant's current keys keep working for `overlap`, then
/// stop. The new key and when the old ones expire; `None` when there is no such merchant.
pub async fn rotate_api_key(
    pool: &PgPool,
    merchant: &MerchantId,
    overlap: std::time::Duration,
) -> sqlx::Result<Option<(String, chrono::DateTime<chrono::Utc>)>> {
    let mut tx = pool.begin().await?;
    let known: Option<String> =
        sqlx::query_scalar("SELECT id FROM merchant WHERE id = $1 FOR UPDATE")
            .bind(merchant.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    if known.is_none() {
        return Ok(None);
    }
    let expires_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now() + make_interval(secs => $1)")
            .bind(overlap.as_secs_f64())
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query(
        "UPDATE api_key SET expires_at = $2
          WHERE merchant_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(merchant.as_str())
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    let api_key = generate_api_key();
    add_api_key(&mut tx, merchant, &api_key)
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("{e:#}")))?;
    tx.commit().await?;
    Ok(Some((api_key, expires_at)))
}

/// One of a merchant's API keys as operators see it: never the key, only its id and
/// first characters.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    /// `key_…`: what a revocation names.
    pub id: String,
    /// The key's first characters, to tell keys apart (`pgk_…`).
    pub prefix: String,
    /// `live`, `expiring` (a rotated key in its overlap), `expired` or `revoked`.
    pub state: &'static str,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

type ApiKeyRow = (
    String,
    String,
    chrono::DateTime<chrono::Utc>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// A merchant's API keys, newest first; `None` when there is no such merchant.
pub async fn api_keys(
    pool: &PgPool,
    merchant: &MerchantId,
) -> sqlx::Result<Option<Vec<ApiKeyView>>> {
    let known: Option<String> = sqlx::query_scalar("SELECT id FROM merchant WHERE id = $1")
        .bind(merchant.as_str())
        .fetch_optional(pool)
        .await?;
    if known.is_none() {
        return Ok(None);
    }
    let rows: Vec<ApiKeyRow> = sqlx::query_as(
        "SELECT id, prefix, created_at, expires_at, revoked_at FROM api_key
          WHERE merchant_id = $1 ORDER BY created_at DESC, id DESC",
    )
    .bind(merchant.as_str())
    .fetch_all(pool)
    .await?;
    let now = chrono::Utc::now();
    Ok(Some(
        rows.into_iter()
            .map(
                |(id, prefix, created_at, expires_at, revoked_at)| ApiKeyView {
                    id,
                    prefix,
                    state: match (revoked_at, expires_at) {
                        (Some(_), _) => "revoked",
                        (None, Some(at)) if at <= now => "expired",
                        (None, Some(_)) => "expiring",
                        (None, None) => "live",
                    },
                    created_at: paygate_common::events::timestamp(created_at),
                    expires_at: expires_at.map(paygate_common::events::timestamp),
                    revoked_at: revoked_at.map(paygate_common::events::timestamp),
                },
            )
            .collect(),
    ))
}

/// Revokes one of a merchant's API keys now: every api replica stops taking it as soon
/// as the change's notification reaches it (see [`crate::http::api_keys`]). When it was
/// revoked, the first time (revoking again changes nothing); `None` when the merchant
/// has no such key.
pub async fn revoke_api_key(
    pool: &PgPool,
    merchant: &MerchantId,
    key: &str,
) -> sqlx::Result<Option<chrono::DateTime<chrono::Utc>>> {
    sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
        "UPDATE api_key SET revoked_at = coalesce(revoked_at, now())
          WHERE id = $1 AND merchant_id = $2
      RETURNING revoked_at",
    )
    .bind(key)
    .bind(merchant.as_str())
    .fetch_optional(pool)
    .await
    .map(Option::flatten)
}

/// Records the country of a merchant's user; `false` when there is no such merchant.
pub async fn put_customer(
    pool: &PgPool,
    merchant: &MerchantId,
    user_id: &str,
    country: &paygate_common::domain::Country,
) -> sqlx::Result<bool> {
    let stored = sqlx::query(
        "INSERT INTO customer (merchant_id, user_id, country)
         SELECT id, $2, $3 FROM merchant WHERE id = $1
         ON CONFLICT (merchant_id, user_id) DO UPDATE SET country = EXCLUDED.country, updated_at = now()",
    )
    .bind(merchant.as_str())
    .bind(user_id)
    .bind(country.code())
    .execute(pool)
    .await?;
    Ok(stored.rows_affected() == 1)
}
