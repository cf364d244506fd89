//! The part of every HTTP exchange with a gateway that does not depend on its protocol:
//! the timeout, the transport errors, `503`, and a bounded read of the body.

use bytes::Bytes;
use reqwest::StatusCode;

use super::{GatewayRecord, Outcome};

/// How JSON gateways are told a callback arrived.
pub(super) const JSON_ACK: (&str, &str) = ("application/json", r#"{"received":true}"#);

/// The gateway's base URL, to which an adapter appends its paths.
pub(super) fn base(call: super::Call<'_>) -> &str {
    call.gateway.base_url.trim_end_matches('/')
}

/// A gateway's answer is read up to this size; a bigger one is not an answer we trust.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Sends `request` with the gateway's timeout and reads the answer. Transport failures
/// and `503` are classified here; every other status comes back with its body for the
/// adapter to read.
pub(super) async fn exchange(
    request: reqwest::RequestBuilder,
    gateway: &GatewayRecord,
) -> Result<(StatusCode, Bytes), Outcome> {
    let code = &gateway.code;
    let request = match crate::trace::outgoing() {
        Some(traceparent) => request.header(crate::trace::TRACEPARENT, traceparent),
        None => request,
    };
    let mut response = request
        .timeout(gateway.timeout())
        .send()
        .await
        .map_err(|error| transport_failure(code, &error))?;
    let status = response.status();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return Err(Outcome::Unavailable {
            reason: format!("{code} answered 503"),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| transport_failure(code, &error))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Outcome::Ambiguous {
                reason: format!(
                    "{code} answered {status} with a body over {MAX_ANSWER_BYTES} bytes"
                ),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, Bytes::from(body)))
}

/// A request that failed on the way: refused before it was sent proves nothing was
/// taken; anything later (a timeout, a reset) may have come after the gateway acted.
fn transport_failure(code: &str, error: &reqwest::Error) -> Outcome {
    if error.is_connect() {
        Outcome::Unavailable {
            reason: format!("cannot reach {code}"),
        }
    } else if error.is_timeout() {
        Outcome::Ambiguous {
            reason: format!("{code} timed out"),
        }
    } else {
        Outcome::Ambiguous {
            reason: format!("{code}: {error}"),
        }
    }
}

/// A server error other than `503`: a `500`, `502` or `504` (perhaps a proxy's) can
/// come after the gateway took the payment.
pub(super) fn server_error(code: &str, status: StatusCode) -> Outcome {
    Outcome::Ambiguous {
        reason: format!("{code} answered {status}"),
    }
}

/// A client error on a submit: the gateway refused the request itself, so it took
/// nothing.
pub(super) fn refused(code: &str, status: StatusCode) -> Outcome {
    Outcome::Unavailable {
        reason: format!("{code} refused the request with {status}"),
    }
}

/// An answer we cannot read: the gateway may have acted on the request.
pub(super) fn unreadable(code: &str, status: StatusCode, error: impl std::fmt::Display) -> Outcome {
    Outcome::Ambiguous {
        reason: format!("{code} answered {status} with an unreadable body: {error}"),
    }
}
