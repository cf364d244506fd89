//! One signed POST of one delivery, and what came of it.

use std::time::{Duration, Instant, SystemTime};

use secrecy::{ExposeSecret as _, SecretString};

use paygate_common::egress::{Policy, Refusal};
use paygate_common::signature::{ed25519, webhook};
use paygate_common::trace::{self, TraceContext};

/// What is sent: the stored body under its `webhook-id`, signed with every secret that
/// currently signs (the newest first; the previous one during a rotation's overlap),
/// and with the merchant's Ed25519 keys when it has any.
pub struct Message<'a> {
    pub url: &'a str,
    pub webhook_id: &'a str,
    /// Names the payment's trace in `traceparent`, so the merchant's side can join it.
    pub transaction_id: &'a str,
    pub body: &'a str,
    pub secrets: &'a [SecretString],
    pub signing_keys: &'a [SecretString],
}

/// What one attempt came to.
#[derive(Debug)]
pub struct Attempt {
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The merchant's `Retry-After`, in seconds or as an HTTP date.
    pub retry_after: Option<Duration>,
    /// The destination is not allowed (see [`Policy`]): no connection was attempted.
    pub refused: bool,
    pub duration: Duration,
}

impl Attempt {
    pub fn delivered(&self) -> bool {
        self.status_code.is_some_and(|c| (200..300).contains(&c))
    }

    /// 410: the merchant says the endpoint is gone.
    pub fn gone(&self) -> bool {
        self.status_code == Some(410)
    }

    /// An attempt that got no answer: `error` says why, `refused` when the egress policy
    /// stopped it before any connection.
    pub fn failed(error: String, refused: bool, started: Instant) -> Self {
        Attempt {
            status_code: None,
            error: Some(error),
            retry_after: None,
            refused,
            duration: started.elapsed(),
        }
    }
}

/// The `webhook-signature` value: one `v1,` signature per secret and one `v1a,` per
/// Ed25519 key, space-separated, as Standard Webhooks allows.
pub fn signature_header(
    secrets: &[SecretString],
    signing_keys: &[SecretString],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, webhook::WebhookSecretError> {
    let mut signatures = secrets
        .iter()
        .map(|secret| webhook::sign(secret.expose_secret(), webhook_id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    for key in signing_keys {
        signatures.push(
            ed25519::sign(key.expose_secret(), webhook_id, timestamp, body)
                .ok_or(webhook::WebhookSecretError::Malformed)?,
        );
    }
    Ok(signatures.join(" "))
}

/// Sends `message` once. The URL is checked against `policy` first (an address literal
/// never reaches the resolver, which checks names), and nothing is sent when refused.
pub async fn send(http: &reqwest::Client, policy: &Policy, message: &Message<'_>) -> Attempt {
    let started = Instant::now();
    if let Err(refusal) = policy.check_url(message.url) {
        return Attempt::failed(format!("refused: {refusal}"), true, started);
    }
    let timestamp = chrono::Utc::now().timestamp();
    let signature = match signature_header(
        message.secrets,
        message.signing_keys,
        message.webhook_id,
        timestamp,
        message.body.as_bytes(),
    ) {
        Ok(signature) => signature,
        Err(error) => return Attempt::failed(error.to_string(), false, started),
    };
    let mut request = http.post(message.url);
    if let Some(trace) = TraceContext::for_transaction(message.transaction_id) {
        request = request.header(trace::TRACEPARENT, trace.header());
    }
    let sent = request
        .header("content-type", "application/json")
        .header(webhook::ID, message.webhook_id)
        .header(webhook::TIMESTAMP, timestamp.to_string())
        .header(webhook::SIGNATURE, signature)
        .body(message.body.to_owned())
        .send()
        .await;
    match sent {
        Ok(response) => Attempt {
            status_code: Some(response.status().as_u16()),
            error: None,
            retry_after: response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, SystemTime::now())),
            refused: false,
            duration: started.elapsed(),
        },
        Err(error) => {
            if let Some(refusal) = refusal_in(&error) {
                return Attempt::failed(format!("refused: {refusal}"), true, started);
            }
            let error = if error.is_timeout() {
                "timed out"
            } else if error.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            Attempt::failed(error.to_owned(), false, started)
        }
    }
}

/// The policy's refusal, when that is why the request failed (the guarded resolver
/// refused every address before connecting).
fn refusal_in(error: &reqwest::Error) -> Option<Refusal> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(refusal) = current.downcast_ref::<Refusal>() {
            return Some(refusal.clone());
        }
        source = current.source();
    }
    None
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3), from `now`.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past asks for no wait"
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn every_current_secret_signs_and_each_signature_verifies_alone() {
        let old = webhook::generate_secret();
        let new = webhook::generate_secret();
        let secrets = [
            SecretString::from(new.clone()),
            SecretString::from(old.clone()),
        ];
        let key = ed25519::generate_key();
        let keys = [SecretString::from(key.clone())];
        let header = signature_header(&secrets, &keys, "evt_1", 1_700_000_000, b"{}").unwrap();
        assert_eq!(header.split(' ').count(), 3);
        assert_eq!(
            header.split(' ').filter(|s| s.starts_with("v1,")).count(),
            2
        );
        let public = ed25519::public_key(&key).unwrap();
        assert!(ed25519::verify(
            &public,
            "evt_1",
            1_700_000_000,
            b"{}",
            &header
        ));
        for secret in [&old, &new] {
            assert!(webhook::verify(
                secret,
                "evt_1",
                1_700_000_000,
                b"{}",
                &header
            ));
        }
        assert!(!webhook::verify(
            &webhook::generate_secret(),
            "evt_1",
            1_700_000_000,
            b"{}",
            &header
        ));
    }
}
