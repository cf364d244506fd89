//! Card numbers at rest: encrypted with ChaCha20-Poly1305 under a key ring from
//! configuration (`cards.keys`, newest first), each ciphertext stored beside the id of
//! the key that sealed it, so keys rotate without re-encrypting old rows. Only the card
//! acquirer's adapter in the payment-processor ever opens one; everything else sees the
//! masked number (`424242******4242`).

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::RedisSettings;
use crate::domain::TransactionId;
use crate::gateway::CardDetails;

/// The keys card numbers are sealed with; the first seals, all open.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<(String, ChaCha20Poly1305)>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("KeyRing").field("key_ids", &ids).finish()
    }
}

/// A card as stored: masked for people, sealed for the acquirer.
#[derive(Debug, Clone)]
pub struct SealedCard {
    pub masked: String,
    pub key_id: String,
    pub ciphertext: Vec<u8>,
    /// Whether the customer gave a CVV (kept apart, briefly, in Redis): once it is gone,
    /// such a card is never sent without it.
    pub cvv_given: bool,
}

/// What is sealed: everything the acquirer needs but the CVV, which is never stored.
#[derive(Serialize, Deserialize)]
struct Plain {
    number: String,
    expiry_month: u32,
    expiry_year: u32,
    holder_name: Option<String>,
}

const NONCE_LEN: usize = 12;

impl KeyRing {
    /// Reads `"<id>:<base64 of 32 bytes>"` entries, newest first.
    pub fn from_config(entries: &[SecretString]) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for entry in entries {
            let (id, key) = entry
                .expose_secret()
                .split_once(':')
                .ok_or_else(|| anyhow!("a cards.keys entry is not \"<id>:<base64 key>\""))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(key.trim())
                .with_context(|| format!("cards key {id} is not base64"))?;
            if bytes.len() != 32 {
                bail!("cards key {id} must be 32 bytes, not {}", bytes.len());
            }
            keys.push((
                id.to_owned(),
                ChaCha20Poly1305::new(Key::from_slice(&bytes)),
            ));
        }
        if keys.is_empty() {
            bail!("cards.keys needs at least one key");
        }
        Ok(KeyRing { keys })
    }

    /// Seals `card` with the newest key.
    pub fn seal(&self, card: &CardDetails) -> anyhow::Result<SealedCard> {
        let plain = serde_json::to_vec(&Plain {
            number: card.number.expose_secret().to_owned(),
            expiry_month: card.expiry_month,
            expiry_year: card.expiry_year,
            holder_name: card.holder_name.clone(),
        })?;
        let (key_id, ciphertext) = self.seal_bytes(&plain)?;
        Ok(SealedCard {
            masked: mask(card.number.expose_secret()),
            key_id,
            ciphertext,
            cvv_given: card.cvv.is_some(),
        })
    }

    /// Opens a card sealed with one of the ring's keys.
    pub fn open(&self, key_id: &str, ciphertext: &[u8]) -> anyhow::Result<CardDetails> {
        let plain: Plain = serde_json::from_slice(&self.open_bytes(key_id, ciphertext)?)?;
        Ok(CardDetails {
            number: SecretString::from(plain.number),
            expiry_month: plain.expiry_month,
            expiry_year: plain.expiry_year,
            holder_name: plain.holder_name,
            cvv: None,
        })
    }
}

impl KeyRing {
    /// Seals `plain` with the newest key: `(key id, nonce || ciphertext)`.
    pub(crate) fn seal_bytes(&self, plain: &[u8]) -> anyhow::Result<(String, Vec<u8>)> {
        let (key_id, cipher) = &self.keys[0];
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: key_id.as_bytes(),
                },
            )
            .map_err(|_| anyhow!("sealing failed"))?;
        let mut ciphertext = nonce.to_vec();
        ciphertext.extend_from_slice(&sealed);
        Ok((key_id.clone(), ciphertext))
    }

    /// Opens what [`KeyRing::seal_bytes`] sealed with one of the ring's keys.
    pub(crate) fn open_bytes(&self, key_id: &str, ciphertext: &[u8]) -> anyhow::Result<Vec<u8>> {
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or_else(|| anyhow!("no key {key_id} in the key ring"))?;
        if ciphertext.len() <= NONCE_LEN {
            bail!("a sealed value is too short");
        }
        let (nonce, sealed) = ciphertext.split_at(NONCE_LEN);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: key_id.as_bytes(),
                },
            )
            .map_err(|_| anyhow!("a sealed value does not open with key {key_id}"))
    }
}

/// Where a card's CVV waits, sealed, between intake and the acquirer: Redis, with a
/// short time to live, deleted once the payment leaves `pending`. Card rules allow a
/// CVV to be kept only until the payment is authorised, and never in the system of
/// record, so it is never in PostgreSQL, Kafka or a log line. Losing it (Redis down,
/// TTL passed) only sends the card without one.
#[derive(Clone)]
pub struct CvvVault {
    connection: ConnectionManager,
    prefix: String,
    ttl: Duration,
    keys: KeyRing,
}

impl CvvVault {
    pub async fn connect(
        redis: &RedisSettings,
        keys: KeyRing,
        ttl: Duration,
    ) -> anyhow::Result<Self> {
        let connection = crate::redis_connection::connect(redis).await?;
        Ok(CvvVault {
            connection,
            prefix: redis.key_prefix.clone(),
            ttl,
            keys,
        })
    }

    fn key(&self, transaction: &TransactionId) -> String {
        format!("{}:cvv:{transaction}", self.prefix)
    }

    /// Keeps `cvv` for `transaction` until the TTL.
    pub async fn put(&self, transaction: &TransactionId, cvv: &SecretString) -> anyhow::Result<()> {
        let (key_id, sealed) = self.keys.seal_bytes(cvv.expose_secret().as_bytes())?;
        let value = format!(
            "{key_id}:{}",
            base64::engine::general_purpose::STANDARD.encode(sealed)
        );
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        redis::cmd("SET")
            .arg(self.key(transaction))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .query_async::<()>(&mut self.connection.clone())
            .await
            .context("keeping a CVV in Redis")
    }

    /// The CVV kept for `transaction`, if it is still there.
    pub async fn get(&self, transaction: &TransactionId) -> anyhow::Result<Option<SecretString>> {
        let value: Option<String> = redis::cmd("GET")
            .arg(self.key(transaction))
            .query_async(&mut self.connection.clone())
            .await
            .context("reading a CVV from Redis")?;
        let Some(value) = value else { return Ok(None) };
        let (key_id, sealed) = value
            .split_once(':')
            .ok_or_else(|| anyhow!("a kept CVV is malformed"))?;
        let sealed = base64::engine::general_purpose::STANDARD.decode(sealed)?;
        let plain = String::from_utf8(self.keys.open_bytes(key_id, &sealed)?)?;
        Ok(Some(SecretString::from(plain)))
    }

    /// Deletes the CVV of `transaction` (it left `pending`).
    pub async fn forget(&self, transaction: &TransactionId) -> anyhow::Result<()> {
        redis::cmd("DEL")
            .arg(self.key(transaction))
            .query_async::<()>(&mut self.connection.clone())
            .await
            .context("deleting a CVV from Redis")
    }
}

/// The first six and last four digits, the rest starred: what PCI DSS allows to show.
pub fn mask(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 12 {
        return "*".repeat(digits.len());
    }
    let (head, rest) = digits.split_at(6);
    let (middle, tail) = rest.split_at(rest.len() - 4);
    format!(
        "{}{}{}",
        head.iter().collect::<String>(),
        "*".repeat(middle.len()),
        tail.iter().collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> SecretString {
        SecretString::from(format!(
            "{id}:{}",
            base64::engine::general_purpose::STANDARD.encode([byte; 32])
        ))
    }

    fn card() -> CardDetails {
        CardDetails {
            number: SecretString::from("4242424242424242".to_owned()),
            expiry_month: 12,
            expiry_year: 2031,
            holder_name: Some("Ada".to_owned()),
            cvv: None,
        }
    }

    #[test]
    fn a_card_sealed_with_an_old_key_still_opens_after_rotation_and_never_shows_its_number() {
        let old = KeyRing::from_config(&[key("k1", 1)]).unwrap();
        let sealed = old.seal(&card()).unwrap();
        assert_eq!(sealed.masked, "424242******4242");
        assert_eq!(sealed.key_id, "k1");
        let text = String::from_utf8_lossy(&sealed.ciphertext);
        assert!(!text.contains("4242424242424242"));

        let rotated = KeyRing::from_config(&[key("k2", 2), key("k1", 1)]).unwrap();
        assert_eq!(rotated.seal(&card()).unwrap().key_id, "k2");
        let opened = rotated.open("k1", &sealed.ciphertext).unwrap();
        assert_eq!(opened.number.expose_secret(), "4242424242424242");
        assert!(!format!("{opened:?}").contains("4242424242424242"));
    }

    #[test]
    fn a_tampered_or_foreign_ciphertext_does_not_open() {
        let ring = KeyRing::from_config(&[key("k1", 1)]).unwrap();
        let mut sealed = ring.seal(&card()).unwrap();
        let last = sealed.ciphertext.len() - 1;
        sealed.ciphertext[last] ^= 1;
        assert!(ring.open("k1", &sealed.ciphertext).is_err());
        assert!(ring.open("k9", &sealed.ciphertext).is_err());
        assert!(KeyRing::from_config(&[SecretString::from("k1:c2hvcnQ=".to_owned())]).is_err());
    }
}
