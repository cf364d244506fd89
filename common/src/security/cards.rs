//! Card numbers at rest: encrypted with ChaCha20-Poly1305 under the card key ring from
//! configuration (`cards.keys`, newest first), each ciphertext stored beside the id of
//! the key that sealed it, so keys rotate without re-encrypting old rows (and
//! `paygate-api re-seal` moves old rows to the newest key, so old keys can leave). Only
//! the card acquirer's adapter in the payment-processor ever opens one; everything else
//! sees the masked number (`424242******4242`). The same [`KeyRing`] type serves the
//! secrets ring (`secrets.keys`, see [`crate::secrets`]), but the two rings hold
//! different keys and each service loads only the ring it opens: the
//! callback-dispatcher, which talks to merchants' URLs, never holds the card ring.

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

/// Reads `"<id>:<base64 of 32 bytes>"` entries, newest first (at least one): the form
/// of every key list in configuration.
pub fn parse_keys(entries: &[SecretString]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut keys = Vec::new();
    for entry in entries {
        let (id, key) = entry
            .expose_secret()
            .split_once(':')
            .ok_or_else(|| anyhow!("a key entry is not \"<id>:<base64 key>\""))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .with_context(|| format!("key {id} is not base64"))?;
        if bytes.len() != 32 {
            bail!("key {id} must be 32 bytes, not {}", bytes.len());
        }
        keys.push((id.to_owned(), bytes));
    }
    if keys.is_empty() {
        bail!("at least one key is needed");
    }
    Ok(keys)
}

impl KeyRing {
    /// Reads `"<id>:<base64 of 32 bytes>"` entries, newest first.
    pub fn from_config(entries: &[SecretString]) -> anyhow::Result<Self> {
        let keys = parse_keys(entries)?
            .into_iter()
            .map(|(id, bytes)| (id, ChaCha20Poly1305::new(Key::from_slice(&bytes))))
            .collect();
        Ok(KeyRing { keys })
    }

    /// The id of the key that seals (the newest).
    pub fn newest(&self) -> &str {
        &self.keys[0].0
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
        match self.keys.open_bytes(key_id, &sealed) {
            Ok(plain) => Ok(Some(SecretString::from(String::from_utf8(plain)?))),
            // Its key left the ring (rotated out sooner than cards.cvv_ttl_ms): as good
            // as expired.
            Err(error) => {
                tracing::warn!(%error, "a kept CVV does not open; treated as expired");
                Ok(None)
            }
        }
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

/// The Luhn checksum card numbers carry; `digits` are ASCII digits only.
pub fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// A card number as people may see it, every other digit starred. PCI DSS allows at
/// most the first six and the last four digits, and only where they leave enough
/// hidden, so:
/// - 16 to 19 digits: the first 6 and the last 4 (`424242******4242`);
/// - 12 to 15 digits: the last 4 only (`***********0005`);
/// - fewer than 12 digits (never a valid card): nothing.
///
/// Anything that is not a digit is dropped.
pub fn mask(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    let (head, tail) = match digits.len() {
        16.. => (6, 4),
        12..=15 => (0, 4),
        _ => (0, 0),
    };
    let hidden = digits.len() - head - tail;
    format!(
        "{}{}{}",
        digits[..head].iter().collect::<String>(),
        "*".repeat(hidden),
        digits[head + hidden..].iter().collect::<String>()
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
    fn a_mask_shows_the_first_six_only_on_numbers_of_sixteen_digits_or_more() {
        assert_eq!(mask("4242424242424242"), "424242******4242");
        assert_eq!(mask("4242 4242 4242 4242 123"), "424242*********2123");
        assert_eq!(mask("378282246310005"), "***********0005");
        assert_eq!(mask("4222222222222"), "*********2222");
        assert_eq!(mask("123456789012"), "********9012");
        assert_eq!(mask("12345678901"), "***********");
        assert_eq!(mask(""), "");
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
