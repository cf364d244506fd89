//! Who may use the console: an operator who typed the admin token into the sign-in
//! form, with the name their actions are recorded under. The session is a cookie the
//! server signed, not a row: it carries its expiry, a random nonce and the operator's
//! name, MACed with a key derived from `admin.token`, so any api replica can check it,
//! and changing the token signs every operator out. Each session's CSRF
//! token is a MAC of its nonce under the same key, so a form is accepted only from a
//! page this session was served.
//!
//! The cookie is `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's
//! page sends it), `Path=/console`, and `Secure` when the console is served over TLS
//! (`api.public_url` is https, or a proxy says `X-Forwarded-Proto: https`). Signing
//! out clears the cookie; a copy taken before then stays valid until it expires
//! ([`SESSION_TTL`]), the price of keeping no session state on the server.

use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use chrono::Utc;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use secrecy::ExposeSecret as _;
use sha2::{Digest, Sha256};

use super::error::ConsoleError;
use crate::AppState;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "paygate_console";
/// The sign-in form's double-submit cookie: the form must carry the same value, so a
/// page elsewhere cannot sign a browser in to a session of its choosing.
pub const LOGIN_COOKIE_NAME: &str = "paygate_console_login";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 60 * 60);

/// The key sessions and CSRF tokens are MACed with, derived from the admin token so
/// that the token itself never leaves the server. `None` when no token is configured:
/// then nobody can sign in.
fn key(state: &AppState) -> Option<[u8; 32]> {
    let token = state.settings.admin.token.expose_secret();
    if token.is_empty() {
        return None;
    }
    let mut hasher = Sha256::new();
    hasher.update(b"paygate console session v1\0");
    hasher.update(token.as_bytes());
    Some(hasher.finalize().into())
}

fn mac(key: &[u8; 32], message: &str) -> String {
    // A 32-byte key is always a valid HMAC key.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Equal in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The name recorded for an operator who gave none at sign-in.
pub const UNNAMED: &str = "unnamed operator";

/// A signed-in operator.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The token this session's forms must carry.
    pub csrf: String,
    /// Who, as their actions on payments are recorded (given at sign-in).
    pub name: String,
}

impl Operator {
    /// Refuses a form that does not carry this session's CSRF token.
    pub fn check_csrf(&self, given: &str) -> Result<(), ConsoleError> {
        if same(given, &self.csrf) {
            Ok(())
        } else {
            Err(ConsoleError::BadCsrf)
        }
    }
}

/// The value of cookie `name` in the request, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// Reads and checks a session cookie's value: `v2.<expiry>.<nonce>.<hex name>.<mac>`.
fn verify(key: &[u8; 32], value: &str) -> Option<Operator> {
    let mut parts = value.split('.');
    let (Some("v2"), Some(expiry), Some(nonce), Some(name), Some(tag), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if !same(tag, &mac(key, &format!("v2.{expiry}.{nonce}.{name}"))) {
        return None;
    }
    if expiry.parse::<i64>().ok()? <= Utc::now().timestamp() {
        return None;
    }
    let name = String::from_utf8(hex::decode(name).ok()?).ok()?;
    Some(Operator {
        csrf: mac(key, &format!("csrf.{nonce}")),
        name,
    })
}

/// The session payload (what the MAC covers) for an operator named `name`.
fn payload(expiry: i64, name: &str) -> String {
    format!("v2.{expiry}.{}.{}", random_hex(), hex::encode(name))
}

impl<S> FromRequestParts<S> for Operator
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let key = key(&state).ok_or(ConsoleError::NotSignedIn)?;
        cookie(&parts.headers, COOKIE_NAME)
            .and_then(|value| verify(&key, value))
            .ok_or(ConsoleError::NotSignedIn)
    }
}

/// Whether the cookies must be `Secure`: the console is reached over TLS.
fn over_tls(state: &AppState, headers: &HeaderMap) -> bool {
    state.settings.api.public_url.starts_with("https://")
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// A sign-in form's double-submit value: the one the browser already holds, or a new
/// one with the cookie that sets it.
pub fn login_nonce(state: &AppState, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match cookie(headers, LOGIN_COOKIE_NAME).filter(|v| v.len() == 32) {
        Some(existing) => (existing.to_owned(), None),
        None => {
            let fresh = random_hex();
            let header = set_cookie(LOGIN_COOKIE_NAME, &fresh, 3600, over_tls(state, headers));
            (fresh, header)
        }
    }
}

/// Signs in when `token` is the admin token and the form came from our sign-in page:
/// the session cookie to set, or why not. `name` (blank: [`UNNAMED`]) is who the
/// operator's actions are recorded under.
pub fn sign_in(
    state: &AppState,
    headers: &HeaderMap,
    token: &str,
    name: &str,
    form_nonce: &str,
) -> Result<HeaderValue, ConsoleError> {
    let held = cookie(headers, LOGIN_COOKIE_NAME).unwrap_or_default();
    if held.is_empty() || !same(held, form_nonce) {
        return Err(ConsoleError::BadCsrf);
    }
    let key = key(state).ok_or(ConsoleError::WrongToken)?;
    let expected = state.settings.admin.token.expose_secret();
    if !crate::admin::same_secret(token, expected) {
        return Err(ConsoleError::WrongToken);
    }
    let name = match name.trim() {
        "" => UNNAMED.to_owned(),
        given => crate::admin::interventions::operator_name(given)
            .map_err(|e| ConsoleError::Invalid(format!("name: {e}")))?,
    };
    let expiry = Utc::now().timestamp() + SESSION_TTL.as_secs() as i64;
    let payload = payload(expiry, &name);
    let value = format!("{payload}.{}", mac(&key, &payload));
    set_cookie(
        COOKIE_NAME,
        &value,
        SESSION_TTL.as_secs(),
        over_tls(state, headers),
    )
    .ok_or_else(|| ConsoleError::Internal(anyhow::anyhow!("a session cookie is not a header")))
}

/// The `Set-Cookie` that signs out: the session cookie, expired.
pub fn sign_out(
    state: &AppState,
    headers: &HeaderMap,
) -> Option<(axum::http::HeaderName, HeaderValue)> {
    set_cookie(COOKIE_NAME, "", 0, over_tls(state, headers)).map(|v| (SET_COOKIE, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_verifies_only_unaltered_and_unexpired() {
        let key = [7u8; 32];
        let expiry = Utc::now().timestamp() + 60;
        let payload = super::payload(expiry, "Ada L.");
        let value = format!("{payload}.{}", mac(&key, &payload));
        let operator = verify(&key, &value).unwrap();
        assert_eq!(operator.csrf.len(), 64);
        assert_eq!(operator.name, "Ada L.", "the name survives its dots");
        assert!(verify(&[8u8; 32], &value).is_none(), "another key");
        let later = value.replacen(&expiry.to_string(), &(expiry + 1).to_string(), 1);
        assert!(verify(&key, &later).is_none(), "a changed expiry");
        let past = Utc::now().timestamp() - 1;
        let payload = super::payload(past, "Ada");
        let expired = format!("{payload}.{}", mac(&key, &payload));
        assert!(verify(&key, &expired).is_none(), "expired");
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("paygate_console_login=abc; paygate_console=xyz"),
        );
        assert_eq!(cookie(&headers, COOKIE_NAME), Some("xyz"));
        assert_eq!(cookie(&headers, LOGIN_COOKIE_NAME), Some("abc"));
        assert_eq!(cookie(&headers, "other"), None);
    }
}
