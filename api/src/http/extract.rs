//! Extractors that turn a request into checked input or an [`ApiError`], so handlers
//! never see a rejection in another shape than the one error contract.

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use paygate_common::domain::MerchantId;

use crate::http::error::ApiError;
use crate::http::format::read_limited;
use crate::AppState;

/// A JSON body, read up to the configured limit and parsed into `T`. Syntax errors are
/// 400; a wrong type, a missing field or an unknown field is 422 with the field's path.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(request, state, "Content-Type: application/json", is_json).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub(crate) fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Reads the whole body (up to the configured limit, see [`read_limited`]), refusing one
/// whose `Content-Type` `accepts` does not take.
pub async fn read_body<S>(
    request: Request,
    state: &S,
    wanted: &'static str,
    accepts: fn(&str) -> bool,
) -> Result<Bytes, ApiError>
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !accepts(content_type) {
        return Err(ApiError::UnsupportedMediaType(wanted));
    }
    read_limited(request, state).await
}

/// A path parameter (`{id}`, `{code}`, …). One that cannot be read as `T` (not UTF-8
/// once percent-decoded, not a number where one is wanted) names nothing that exists:
/// 404 in the error contract, like an id that parses but is unknown, rather than
/// axum's plain 400.
pub struct PathParam<T>(pub T);

impl<S, T> FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParam(value)),
            Err(_) => Err(ApiError::NotFound("resource")),
        }
    }
}

/// Parses JSON into `T`, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut *deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = inner.to_string();
        let field = field_of(&path, &message);
        let message = match &field {
            // Neither a card nor a merchant's metadata is quoted back (a number sent
            // where a string belongs may be a card number).
            Some(field)
                if field.starts_with("payment_method.card") || field.starts_with("metadata") =>
            {
                without_values(&message)
            }
            _ => message,
        };
        match inner.classify() {
            serde_json::error::Category::Data => ApiError::Invalid {
                message: strip_position(&message),
                field,
            },
            _ => ApiError::Malformed {
                message: strip_position(&message),
                field: None,
            },
        }
    })?;
    // Nothing but white space may follow the value: `{...} trailing` is malformed.
    deserializer.end().map_err(|e| ApiError::Malformed {
        message: strip_position(&e.to_string()),
        field: None,
    })?;
    Ok(parsed)
}

/// serde names missing and unknown fields in its message, not in the path.
pub(crate) fn field_of(path: &str, message: &str) -> Option<String> {
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|marker| message.split_once(marker))
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name.to_owned());
    let parent = (path != "." && !path.is_empty()).then(|| path.to_owned());
    match (parent, named) {
        (Some(parent), Some(name))
            if message.starts_with("unknown") || message.starts_with("missing") =>
        {
            // For unknown/missing fields the path points at the containing object.
            Some(if parent.ends_with(&name) {
                parent
            } else {
                format!("{parent}.{name}")
            })
        }
        (Some(parent), _) => Some(parent),
        (None, named) => named,
    }
}

/// serde's message without the values it quotes (`` integer `4242…` ``, `string "123"`):
/// a card number or CVV sent with the wrong type must not come back in the answer, nor
/// reach a log line through it.
fn without_values(message: &str) -> String {
    let mut kept = String::with_capacity(message.len());
    let mut quote = None;
    for c in message.chars() {
        match quote {
            Some(open) if c == open => quote = None,
            Some(_) => {}
            None if c == '`' || c == '"' => quote = Some(c),
            None => kept.push(c),
        }
    }
    kept.replace("  ", " ").replace(" ,", ",")
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// The merchant a request authenticated as, by `Authorization: Bearer <api key>`.
#[derive(Debug, Clone)]
pub struct Merchant {
    pub id: MerchantId,
}

/// The token of `Authorization: Bearer <token>`, if one is there.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// An API key's stored form: its SHA-256.
pub fn hash_api_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

impl<S> FromRequestParts<S> for Merchant
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let key = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let id = state
            .api_keys
            .merchant(&state.pool, key, || spend_lookup(&state, parts))
            .await?
            .ok_or(ApiError::Unauthorized)?;
        state.limiter.check(&id).await?;
        Ok(Merchant { id })
    }
}

/// A request that needs PostgreSQL before anyone is authenticated (the public JWKS):
/// extracting it spends one of the client address's look-ups (see
/// [`crate::http::client_limit`]), 429 past the limit, before any query.
pub struct UnauthenticatedLookup;

impl<S> FromRequestParts<S> for UnauthenticatedLookup
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        spend_lookup(&AppState::from_ref(state), parts)?;
        Ok(UnauthenticatedLookup)
    }
}

/// Spends one of the unauthenticated look-ups of the request's client address: 429
/// past the limit.
fn spend_lookup(state: &AppState, parts: &Parts) -> Result<(), ApiError> {
    let address = paygate_common::http_server::peer(&parts.extensions);
    state
        .clients
        .unauthenticated
        .spend(address)
        .map_err(ApiError::RateLimited)
}

/// The client's address (the TCP peer), when the request came through a socket.
pub struct ClientAddress(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(paygate_common::http_server::peer(
            &parts.extensions,
        )))
    }
}

/// The merchant a path names; an unreadable id is a merchant that does not exist.
pub(crate) fn merchant_id(id: &str) -> Result<MerchantId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound("merchant"))
}
