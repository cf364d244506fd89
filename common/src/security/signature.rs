//! HMAC-SHA256 signatures, both directions:
//! - [`callback`]: what gateways put on their callbacks to us, `X-Paygate-Signature:
//!   t=<unix>,v1=<hex HMAC(secret, "<t>.<body>")>`, checked in constant time within a
//!   replay window before anything else is read;
//! - [`webhook`]: what we put on merchant webhooks, Standard Webhooks style.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    for part in parts {
        mac.update(part);
    }
    mac
}

pub mod callback {
    //! Gateway callback signatures.

    use hmac::Mac as _;

    use super::mac;

    /// The header gateways sign their callbacks with.
    pub const HEADER: &str = "X-Paygate-Signature";

    /// How far a callback's timestamp may be from our clock, in seconds.
    pub const TOLERANCE_SECS: i64 = 300;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum SignatureError {
        #[error("the callback carries no signature")]
        Missing,
        #[error("the signature header is malformed")]
        Malformed,
        #[error("the signature timestamp is outside the replay window")]
        Expired,
        #[error("the signature does not match")]
        Mismatch,
    }

    /// The header value for `body` signed at `timestamp` (unix seconds).
    pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
        let t = timestamp.to_string();
        let digest = mac(secret.as_bytes(), &[t.as_bytes(), b".", body])
            .finalize()
            .into_bytes();
        format!("t={t},v1={}", hex::encode(digest))
    }

    /// Checks `header` against `body` and `secret`, with `now` in unix seconds.
    pub fn verify(
        secret: &str,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => {
                    timestamp = Some(t.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
                }
                Some(("v1", sig)) => {
                    signatures.push(hex::decode(sig).map_err(|_| SignatureError::Malformed)?)
                }
                Some(_) => {}
                None => return Err(SignatureError::Malformed),
            }
        }
        let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
        if signatures.is_empty() {
            return Err(SignatureError::Malformed);
        }
        if now.abs_diff(timestamp) > TOLERANCE_SECS.unsigned_abs() {
            return Err(SignatureError::Expired);
        }
        let t = timestamp.to_string();
        let expected = mac(secret.as_bytes(), &[t.as_bytes(), b".", body]);
        // verify_slice compares in constant time.
        if signatures
            .iter()
            .any(|sig| expected.clone().verify_slice(sig).is_ok())
        {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

pub mod webhook {
    //! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256(key,
    //! "<id>.<timestamp>.<body>")>` where the key is the base64 part of `whsec_<base64>`.

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use rand::RngCore;

    use hmac::Mac as _;

    use super::mac;

    pub const ID: &str = "webhook-id";
    pub const TIMESTAMP: &str = "webhook-timestamp";
    pub const SIGNATURE: &str = "webhook-signature";

    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum WebhookSecretError {
        #[error("a webhook secret is whsec_ followed by base64")]
        Malformed,
    }

    /// A new merchant signing secret: `whsec_` and 32 random bytes in base64.
    pub fn generate_secret() -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        format!("whsec_{}", STANDARD.encode(key))
    }

    fn key(secret: &str) -> Result<Vec<u8>, WebhookSecretError> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        STANDARD
            .decode(encoded)
            .map_err(|_| WebhookSecretError::Malformed)
    }

    /// The `webhook-signature` value for one message.
    pub fn sign(
        secret: &str,
        id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Result<String, WebhookSecretError> {
        let t = timestamp.to_string();
        let digest = mac(
            &key(secret)?,
            &[id.as_bytes(), b".", t.as_bytes(), b".", body],
        )
        .finalize()
        .into_bytes();
        Ok(format!("v1,{}", STANDARD.encode(digest)))
    }

    /// How far a webhook's timestamp may be from the receiver's clock, in seconds: what
    /// receivers should allow (the Standard Webhooks libraries use the same five minutes).
    pub const TOLERANCE_SECS: i64 = 300;

    /// What a merchant runs on receipt: the `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature` headers and the raw body, checked against `secret` with the
    /// timestamp within [`TOLERANCE_SECS`] of `now` (unix seconds).
    pub fn verify_request(
        secret: &str,
        id: &str,
        timestamp: &str,
        body: &[u8],
        signature: &str,
        now: i64,
    ) -> bool {
        let Ok(timestamp) = timestamp.trim().parse::<i64>() else {
            return false;
        };
        now.abs_diff(timestamp) <= TOLERANCE_SECS.unsigned_abs()
            && verify(secret, id, timestamp, body, signature)
    }

    /// Whether any `v1,` signature in `header` (space-separated) matches.
    pub fn verify(secret: &str, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let Ok(key) = key(secret) else { return false };
        let t = timestamp.to_string();
        let expected = mac(&key, &[id.as_bytes(), b".", t.as_bytes(), b".", body]);
        header
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|s| STANDARD.decode(s).ok())
            .any(|sig| expected.clone().verify_slice(&sig).is_ok())
    }
}

pub mod ed25519 {
    //! Standard Webhooks' asymmetric signatures: `v1a,<base64 Ed25519 signature of
    //! "<id>.<timestamp>.<body>">`, so a receiver verifies with a public key (published
    //! as a JWK) and holds no secret. Keys are 32-byte seeds, `whsk_<base64>`; public
    //! keys `whpk_<base64>`.

    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
    use rand::RngCore;
    use sha2::{Digest as _, Sha256};

    /// A new signing key: `whsk_` and a 32-byte seed in base64.
    pub fn generate_key() -> String {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        format!("whsk_{}", STANDARD.encode(seed))
    }

    fn signing_key(key: &str) -> Option<SigningKey> {
        let seed = STANDARD.decode(key.strip_prefix("whsk_")?).ok()?;
        Some(SigningKey::from_bytes(&seed.try_into().ok()?))
    }

    /// What Standard Webhooks signs: `<id>.<timestamp>.<body>`.
    fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
        [
            id.as_bytes(),
            b".",
            timestamp.to_string().as_bytes(),
            b".",
            body,
        ]
        .concat()
    }

    /// The `v1a,` signature of one message; `None` when `key` is not a `whsk_` key.
    pub fn sign(key: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
        let message = signed_content(id, timestamp, body);
        let signature = signing_key(key)?.sign(&message);
        Some(format!("v1a,{}", STANDARD.encode(signature.to_bytes())))
    }

    /// The public half of `key`, `whpk_<base64>`.
    pub fn public_key(key: &str) -> Option<String> {
        let public = signing_key(key)?.verifying_key();
        Some(format!("whpk_{}", STANDARD.encode(public.to_bytes())))
    }

    /// `key`'s public half as a JSON Web Key (RFC 8037), its `kid` the first 16 hex
    /// digits of the SHA-256 of the public key.
    pub fn jwk(key: &str) -> Option<serde_json::Value> {
        let public = signing_key(key)?.verifying_key().to_bytes();
        Some(serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": hex::encode(&Sha256::digest(public)[..8]),
            "x": URL_SAFE_NO_PAD.encode(public),
        }))
    }

    /// Whether any `v1a,` signature in `header` verifies with `public` (`whpk_…`).
    pub fn verify(public: &str, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let Some(key) = public
            .strip_prefix("whpk_")
            .and_then(|k| STANDARD.decode(k).ok())
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        else {
            return false;
        };
        let message = signed_content(id, timestamp, body);
        header
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1a,"))
            .filter_map(|s| STANDARD.decode(s).ok())
            .filter_map(|s| <[u8; 64]>::try_from(s).ok())
            .any(|s| key.verify(&message, &Signature::from_bytes(&s)).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_signature_matches_a_known_vector() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"s3cret",b"1700000000.{}",hashlib.sha256).hexdigest())'
        assert_eq!(
            callback::sign("s3cret", 1_700_000_000, b"{}"),
            "t=1700000000,v1=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf"
        );
    }

    #[test]
    fn a_callback_signature_is_refused_when_tampered_stale_or_missing() {
        let header = callback::sign("s3cret", 1_000, b"body");
        assert_eq!(
            callback::verify("s3cret", Some(&header), b"body", 1_100),
            Ok(())
        );
        assert_eq!(
            callback::verify("s3cret", Some(&header), b"bodY", 1_100),
            Err(callback::SignatureError::Mismatch)
        );
        assert_eq!(
            callback::verify("other", Some(&header), b"body", 1_100),
            Err(callback::SignatureError::Mismatch)
        );
        assert_eq!(
            callback::verify("s3cret", Some(&header), b"body", 1_301),
            Err(callback::SignatureError::Expired)
        );
        assert_eq!(
            callback::verify("s3cret", None, b"body", 1_000),
            Err(callback::SignatureError::Missing)
        );
        assert_eq!(
            callback::verify("s3cret", Some("v1=zz"), b"body", 1_000),
            Err(callback::SignatureError::Malformed)
        );
        let hostile = format!("t={},v1=00", i64::MIN);
        assert_eq!(
            callback::verify("s3cret", Some(&hostile), b"body", 1_000),
            Err(callback::SignatureError::Expired),
            "an absurd timestamp is refused, not an overflow"
        );
    }

    #[test]
    fn a_webhook_signature_matches_the_standard_webhooks_example() {
        // The example published with the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let signature =
            webhook::sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(webhook::verify(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
            &signature
        ));
        assert!(!webhook::verify(
            secret,
            "msg_other",
            1614265330,
            body,
            &signature
        ));
    }

    #[test]
    fn an_ed25519_signature_verifies_with_its_public_key_only() {
        let key = ed25519::generate_key();
        let public = ed25519::public_key(&key).unwrap();
        let header = ed25519::sign(&key, "msg_1", 1_700_000_000, b"{}").unwrap();
        assert!(header.starts_with("v1a,"));
        assert!(ed25519::verify(
            &public,
            "msg_1",
            1_700_000_000,
            b"{}",
            &header
        ));
        assert!(!ed25519::verify(
            &public,
            "msg_1",
            1_700_000_000,
            b"{ }",
            &header
        ));
        let other = ed25519::public_key(&ed25519::generate_key()).unwrap();
        assert!(!ed25519::verify(
            &other,
            "msg_1",
            1_700_000_000,
            b"{}",
            &header
        ));
        let mixed = format!("v1,AAAA {header}");
        assert!(ed25519::verify(
            &public,
            "msg_1",
            1_700_000_000,
            b"{}",
            &mixed
        ));
        let jwk = ed25519::jwk(&key).unwrap();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(
            jwk["x"].as_str().unwrap().len(),
            43,
            "32 bytes, base64url unpadded"
        );
        assert!(
            ed25519::sign("whsec_AAAA", "m", 1, b"").is_none(),
            "not a signing key"
        );
    }

    #[test]
    fn a_webhook_request_outside_the_tolerance_or_with_a_bad_timestamp_is_refused() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let signature = webhook::sign(secret, "msg_1", 1_000_000, b"{}").unwrap();
        let verify =
            |t: &str, now| webhook::verify_request(secret, "msg_1", t, b"{}", &signature, now);
        assert!(verify("1000000", 1_000_300));
        assert!(!verify("1000000", 1_000_301), "too old");
        assert!(!verify("1000000", 999_699), "from the future");
        assert!(!verify("soon", 1_000_000));
    }
}
