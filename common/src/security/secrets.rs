//! Secrets Paygate has to read back — merchants' webhook signing secrets and signing
//! keys, gateways' callback secrets — are stored sealed with the secrets key ring
//! (`secrets.keys`, never the card ring), so a copy of the database alone signs nothing
//! and forges nothing. A stored value reads `sealed:v1:<key id>:<base64 of nonce ||
//! ciphertext>`; the key id lets keys rotate without re-sealing old rows (and
//! [`crate::reseal`] moves them to the newest key, so old keys can leave the ring).
//!
//! A plain value where a sealed one belongs is refused: [`KeyRing::open_secret`] does
//! not read it, and the database refuses to store one (a `CHECK` on each column). Rows
//! written before sealing existed are sealed once by [`seal_stored`] (run by the api at
//! start and by `paygate-api re-seal`), which then has the database check every row.

use anyhow::{anyhow, Context as _};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use secrecy::SecretString;
use sqlx::PgPool;

use crate::cards::KeyRing;

const PREFIX: &str = "sealed:v1:";

/// A secret as it is stored. Its `Debug` names the key, never the content.
#[derive(Clone, PartialEq, Eq, sqlx::Type)]
#[sqlx(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// What a column holds, as read from it.
    pub fn from_stored(stored: String) -> Self {
        Sealed(stored)
    }

    /// What to write to the column.
    pub fn as_stored(&self) -> &str {
        &self.0
    }

    /// Whether the value is sealed (rather than a plain secret from before sealing).
    pub fn is_sealed(&self) -> bool {
        self.0.starts_with(PREFIX)
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.strip_prefix(PREFIX).and_then(|s| s.split_once(':')) {
            Some((key_id, _)) => write!(f, "Sealed(key {key_id})"),
            None => f.write_str("Sealed(plain, not yet sealed)"),
        }
    }
}

impl KeyRing {
    /// Seals `secret` with the newest key.
    pub fn seal_secret(&self, secret: &str) -> anyhow::Result<Sealed> {
        let (key_id, ciphertext) = self.seal_bytes(secret.as_bytes())?;
        Ok(Sealed(format!(
            "{PREFIX}{key_id}:{}",
            STANDARD.encode(ciphertext)
        )))
    }

    /// The secret behind `sealed`. A plain value is refused: nothing may be stored plain
    /// where a sealed one belongs.
    pub fn open_secret(&self, sealed: &Sealed) -> anyhow::Result<SecretString> {
        let Some(rest) = sealed.0.strip_prefix(PREFIX) else {
            anyhow::bail!(
                "a secret is stored plain where a sealed one belongs: start the api or run `paygate-api re-seal` to seal it"
            );
        };
        let (key_id, encoded) = rest
            .split_once(':')
            .ok_or_else(|| anyhow!("a sealed secret has no key id"))?;
        let ciphertext = STANDARD
            .decode(encoded)
            .context("a sealed secret is not base64")?;
        let plain = self.open_bytes(key_id, &ciphertext)?;
        Ok(SecretString::from(
            String::from_utf8(plain).context("a sealed secret is not text")?,
        ))
    }
}

/// The columns that hold secrets: `(table, key column, secret column, the constraint
/// that refuses a plain value)`.
const SECRET_COLUMNS: &[(&str, &str, &str, &str)] = &[
    (
        "merchant",
        "id",
        "webhook_secret",
        "merchant_webhook_secret_sealed",
    ),
    (
        "merchant",
        "id",
        "webhook_secret_previous",
        "merchant_webhook_secret_previous_sealed",
    ),
    (
        "merchant",
        "id",
        "webhook_signing_key",
        "merchant_webhook_signing_key_sealed",
    ),
    (
        "merchant",
        "id",
        "webhook_signing_key_previous",
        "merchant_webhook_signing_key_previous_sealed",
    ),
    (
        "webhook_endpoint",
        "id",
        "secret",
        "webhook_endpoint_secret_sealed",
    ),
    (
        "webhook_endpoint",
        "id",
        "secret_previous",
        "webhook_endpoint_secret_previous_sealed",
    ),
    (
        "gateway",
        "code",
        "callback_secret",
        "gateway_callback_secret_sealed",
    ),
];

/// Seals every secret still stored plain (the one-time migration from before sealing),
/// then has the database check every row against the constraints that refuse a plain
/// value; returns how many it sealed. Safe to run by several processes at once: a row
/// is only rewritten while it is still plain.
pub async fn seal_stored(pool: &PgPool, keys: &KeyRing) -> anyhow::Result<u64> {
    let sealed = rewrite_unless(pool, PREFIX, |plain| keys.seal_secret(plain)).await?;
    if sealed > 0 {
        tracing::info!(sealed, "sealed secrets stored in plain text");
    }
    for (table, _, _, constraint) in SECRET_COLUMNS {
        let validated: Option<bool> =
            sqlx::query_scalar("SELECT convalidated FROM pg_constraint WHERE conname = $1")
                .bind(constraint)
                .fetch_optional(pool)
                .await?;
        if validated == Some(false) {
            sqlx::query(&format!(
                "ALTER TABLE {table} VALIDATE CONSTRAINT {constraint}"
            ))
            .execute(pool)
            .await
            .with_context(|| format!("checking that {table} holds no plain secret"))?;
        }
    }
    Ok(sealed)
}

/// Rewrites every stored secret that does not start with `keep` to what `rewrite`
/// makes of it; returns how many rows it changed. A row is rewritten only while it
/// still holds what was read, so processes running it at once never undo each other.
pub(crate) async fn rewrite_unless(
    pool: &PgPool,
    keep: &str,
    rewrite: impl Fn(&str) -> anyhow::Result<Sealed>,
) -> anyhow::Result<u64> {
    let mut rewritten = 0;
    for (table, key, column, _) in SECRET_COLUMNS {
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT {key}, {column} FROM {table}
              WHERE {column} IS NOT NULL AND NOT starts_with({column}, $1)"
        ))
        .bind(keep)
        .fetch_all(pool)
        .await
        .with_context(|| format!("reading {table}.{column}"))?;
        for (id, stored) in rows {
            let value = rewrite(&stored).with_context(|| format!("{table}.{column} of {id}"))?;
            rewritten += sqlx::query(&format!(
                "UPDATE {table} SET {column} = $2 WHERE {key} = $1 AND {column} = $3"
            ))
            .bind(&id)
            .bind(value.as_stored())
            .bind(&stored)
            .execute(pool)
            .await
            .with_context(|| format!("rewriting {table}.{column}"))?
            .rows_affected();
        }
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    fn ring(entries: &[&str]) -> KeyRing {
        let entries: Vec<SecretString> = entries.iter().map(|e| (*e).into()).collect();
        KeyRing::from_config(&entries).unwrap()
    }

    const OLD: &str = "old:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const NEW: &str = "new:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    #[test]
    fn a_sealed_secret_opens_to_itself_and_does_not_show_it() {
        let keys = ring(&[OLD]);
        let sealed = keys.seal_secret("whsec_c2VjcmV0").unwrap();
        assert!(sealed.is_sealed());
        assert!(!sealed.as_stored().contains("whsec_c2VjcmV0"));
        assert_eq!(format!("{sealed:?}"), "Sealed(key old)");
        assert_eq!(
            keys.open_secret(&sealed).unwrap().expose_secret(),
            "whsec_c2VjcmV0"
        );
    }

    #[test]
    fn a_secret_sealed_under_a_retired_key_still_opens_after_rotation() {
        let sealed = ring(&[OLD]).seal_secret("s").unwrap();
        let rotated = ring(&[NEW, OLD]);
        assert_eq!(rotated.open_secret(&sealed).unwrap().expose_secret(), "s");
        assert!(rotated
            .seal_secret("s")
            .unwrap()
            .as_stored()
            .starts_with("sealed:v1:new:"));
        assert!(
            ring(&[NEW]).open_secret(&sealed).is_err(),
            "a dropped key opens nothing"
        );
    }

    #[test]
    fn a_tampered_sealed_secret_is_refused() {
        let keys = ring(&[OLD]);
        let mut stored = keys
            .seal_secret("s")
            .unwrap()
            .as_stored()
            .as_bytes()
            .to_vec();
        let middle = stored.len() - 12;
        stored[middle] = if stored[middle] == b'A' { b'B' } else { b'A' };
        let stored = String::from_utf8(stored).unwrap();
        assert!(keys.open_secret(&Sealed::from_stored(stored)).is_err());
    }

    #[test]
    fn a_plain_secret_where_a_sealed_one_belongs_is_refused() {
        let plain = Sealed::from_stored("whsec_cGxhaW4=".to_owned());
        assert!(!plain.is_sealed());
        let error = ring(&[OLD]).open_secret(&plain).unwrap_err().to_string();
        assert!(error.contains("re-seal"), "{error}");
        assert!(!error.contains("cGxhaW4"), "{error}");
    }
}
