//! Secrets Paygate has to read back — merchants' webhook signing secrets, gateways'
//! callback secrets — are stored sealed with the same key ring as card numbers
//! (`cards.keys`), so a copy of the database alone signs nothing and forges nothing.
//! A stored value reads `sealed:v1:<key id>:<base64 of nonce || ciphertext>`; the key
//! id lets keys rotate without re-sealing old rows.
//!
//! Rows written before sealing existed hold the plain secret; [`seal_stored`] (run by
//! the api at start) seals them, and until then [`KeyRing::open_secret`] reads them as
//! they are.

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

    /// The secret behind `sealed` (a plain value from before sealing reads as itself).
    pub fn open_secret(&self, sealed: &Sealed) -> anyhow::Result<SecretString> {
        let Some(rest) = sealed.0.strip_prefix(PREFIX) else {
            return Ok(SecretString::from(sealed.0.clone()));
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

/// The columns that hold secrets: `(table, key column, secret column)`.
const SECRET_COLUMNS: &[(&str, &str, &str)] = &[
    ("merchant", "id", "webhook_secret"),
    ("merchant", "id", "webhook_secret_previous"),
    ("merchant", "id", "webhook_signing_key"),
    ("merchant", "id", "webhook_signing_key_previous"),
    ("gateway", "code", "callback_secret"),
];

/// Seals every secret still stored plain; returns how many it sealed. Safe to run by
/// several processes at once: a row is only rewritten while it is still plain.
pub async fn seal_stored(pool: &PgPool, keys: &KeyRing) -> anyhow::Result<u64> {
    let mut sealed = 0;
    for (table, key, column) in SECRET_COLUMNS {
        let plain: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT {key}, {column} FROM {table}
              WHERE {column} IS NOT NULL AND NOT starts_with({column}, '{PREFIX}')"
        ))
        .fetch_all(pool)
        .await
        .with_context(|| format!("finding plain secrets in {table}.{column}"))?;
        for (id, secret) in plain {
            let value = keys.seal_secret(&secret)?;
            sealed += sqlx::query(&format!(
                "UPDATE {table} SET {column} = $2 WHERE {key} = $1 AND {column} = $3"
            ))
            .bind(&id)
            .bind(value.as_stored())
            .bind(&secret)
            .execute(pool)
            .await
            .with_context(|| format!("sealing {table}.{column}"))?
            .rows_affected();
        }
    }
    if sealed > 0 {
        tracing::info!(sealed, "sealed secrets stored in plain text");
    }
    Ok(sealed)
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
    fn a_plain_secret_from_before_sealing_reads_as_itself() {
        let plain = Sealed::from_stored("whsec_cGxhaW4=".to_owned());
        assert!(!plain.is_sealed());
        assert_eq!(
            ring(&[OLD]).open_secret(&plain).unwrap().expose_secret(),
            "whsec_cGxhaW4="
        );
    }
}
