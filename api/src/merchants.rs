//! Merchants and their credentials. The admin API and the demo seed both come through
//! here, so demo data is made the way real data is.

use anyhow::Context as _;
use rand::RngCore;
use sqlx::{PgConnection, PgPool};

use paygate_common::domain::{ApiKeyId, MerchantId};
use paygate_common::signature::webhook;

use crate::extract::hash_api_key;

/// A new merchant's credentials: the API key is shown once and only its hash is kept.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
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

/// A fresh API key: `pgk_` and 32 random bytes in hex.
pub fn generate_api_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("pgk_{}", hex::encode(bytes))
}

/// Creates a merchant with one API key (`api_key`, or a generated one).
pub async fn create(
    pool: &PgPool,
    name: &str,
    webhook_url: Option<&str>,
    api_key: Option<String>,
) -> anyhow::Result<NewMerchant> {
    let id = MerchantId::new();
    let webhook_secret = webhook::generate_secret();
    let api_key = api_key.unwrap_or_else(generate_api_key);
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO merchant (id, name, webhook_url, webhook_secret) VALUES ($1, $2, $3, $4)",
    )
    .bind(id.as_str())
    .bind(name)
    .bind(webhook_url)
    .bind(&webhook_secret)
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
    api_key: &str,
) -> anyhow::Result<Option<(MerchantId, String)>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT m.id, m.webhook_secret FROM api_key k JOIN merchant m ON m.id = k.merchant_id
          WHERE k.key_hash = $1 AND k.revoked_at IS NULL
            AND (k.expires_at IS NULL OR k.expires_at > now())",
    )
    .bind(hash_api_key(api_key))
    .fetch_optional(pool)
    .await?;
    row.map(|(id, secret)| Ok((id.parse()?, secret)))
        .transpose()
}

/// Points a merchant's webhooks at `url` (`None`: no webhooks); `false` when there is no
/// such merchant.
pub async fn set_webhook_url(
    pool: &PgPool,
    merchant: &MerchantId,
    url: Option<&str>,
) -> anyhow::Result<bool> {
    let updated = sqlx::query("UPDATE merchant SET webhook_url = $2 WHERE id = $1")
        .bind(merchant.as_str())
        .bind(url)
        .execute(pool)
        .await?;
    Ok(updated.rows_affected() == 1)
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
