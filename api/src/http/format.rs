//! JSON or XML, by `Content-Type` in and `Accept` out, with one error contract in both.
//!
//! XML is read with quick-xml's serde support into the same request types as JSON,
//! after a first pass that refuses a DOCTYPE (and with it every entity declaration:
//! nothing is ever expanded) and checks the root element. An XML client gets its errors
//! in XML: [`negotiate`] re-renders any [`ApiError`] response for it, whatever produced
//! it (a handler, an extractor, the router's fallbacks).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request, State};
use axum::http::header::{ACCEPT, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use quick_xml::events::Event;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{field_of, parse_json};
use crate::AppState;

/// A body's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    fn of_content_type(value: &str) -> Option<Format> {
        let essence = value.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case("application/json") {
            Some(Format::Json)
        } else if essence.eq_ignore_ascii_case("application/xml")
            || essence.eq_ignore_ascii_case("text/xml")
        {
            Some(Format::Xml)
        } else {
            None
        }
    }

    /// The format a request's body is in, by its `Content-Type`.
    pub fn of_request(headers: &HeaderMap) -> Option<Format> {
        headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(Format::of_content_type)
    }

    /// The format the client wants back: what `Accept` names first, else the format it
    /// sent, else JSON.
    pub fn wanted(headers: &HeaderMap) -> Format {
        let accept = headers
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        accept
            .split(',')
            .find_map(Format::of_content_type)
            .or_else(|| Format::of_request(headers))
            .unwrap_or(Format::Json)
    }

    /// Parses `bytes` into `T`; an XML document must have the root element `root`.
    pub fn parse<T: DeserializeOwned>(self, bytes: &[u8], root: &str) -> Result<T, ApiError> {
        match self {
            Format::Json => parse_json(bytes),
            Format::Xml => parse_xml(bytes, root),
        }
    }

    /// `value` as this format, the XML under `root`.
    pub fn render<T: Serialize>(self, status: StatusCode, root: &str, value: &T) -> Response {
        match self {
            Format::Json => (status, axum::Json(value)).into_response(),
            Format::Xml => match quick_xml::se::to_string_with_root(root, value) {
                Ok(xml) => xml_response(status, xml),
                Err(error) => ApiError::Internal(error.into()).into_response(),
            },
        }
    }
}

fn xml_response(status: StatusCode, xml: String) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/xml; charset=utf-8")],
        format!(r#"<?xml version="1.0" encoding="UTF-8"?>{xml}"#),
    )
        .into_response()
}

/// Reads an XML request into `T`: no DOCTYPE, the right root, no unknown elements
/// (the request types refuse unknown fields, in XML as in JSON).
pub fn parse_xml<T: DeserializeOwned>(bytes: &[u8], root: &str) -> Result<T, ApiError> {
    let malformed = |message: String| ApiError::Malformed {
        message,
        field: None,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| malformed("the body is not UTF-8".into()))?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut root_seen = false;
    loop {
        match reader.read_event() {
            Ok(Event::DocType(_)) => {
                return Err(malformed(
                    "DOCTYPE and entity declarations are not accepted".into(),
                ))
            }
            Ok(Event::Start(start) | Event::Empty(start)) if !root_seen => {
                if start.name().as_ref() != root.as_bytes() {
                    return Err(malformed(format!("the root element must be <{root}>")));
                }
                root_seen = true;
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(error) => {
                return Err(malformed(format!(
                    "the body is not well-formed XML: {error}"
                )))
            }
        }
    }
    if !root_seen {
        return Err(malformed(format!("the root element must be <{root}>")));
    }
    quick_xml::de::from_str(text).map_err(|error| {
        let message = error.to_string();
        match error {
            quick_xml::DeError::Custom(_) => ApiError::Invalid {
                field: field_of("", &message),
                message,
            },
            _ => ApiError::Malformed {
                message,
                field: None,
            },
        }
    })
}

/// A request body, read whole up to the configured limit, in a format the route takes.
pub struct RawBody {
    pub bytes: Bytes,
    pub format: Format,
}

impl<S> FromRequest<S> for RawBody
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let format = Format::of_request(request.headers()).ok_or(
            ApiError::UnsupportedMediaType("Content-Type: application/json or application/xml"),
        )?;
        let bytes = read_limited(request, state).await?;
        Ok(RawBody { bytes, format })
    }
}

/// Reads a body whole. [`negotiate`] has already read it within the limit; the limit
/// is checked again by type (`LengthLimitError`) for a router used without it.
pub async fn read_limited<S>(request: Request, state: &S) -> Result<Bytes, ApiError>
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    let limit = AppState::from_ref(state).settings.api.max_body_bytes;
    match Bytes::from_request(request, state).await {
        Ok(bytes) => Ok(bytes),
        Err(axum::extract::rejection::BytesRejection::FailedToBufferBody(
            axum::extract::rejection::FailedToBufferBody::LengthLimitError(_),
        )) => Err(ApiError::PayloadTooLarge(limit)),
        Err(_) => Err(ApiError::Malformed {
            message: "the request body could not be read".to_owned(),
            field: None,
        }),
    }
}

/// Most bytes of an over-limit body read and thrown away so the connection stays
/// usable; a client sending more is answered and the connection closed.
const DRAIN_CAP: usize = 8 * 1024 * 1024;

/// When a request arrived (its head read): its deadline counts from here, so reading
/// the body is part of it.
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub tokio::time::Instant);

/// Middleware, around every route: reads the body whole (up to the configured limit,
/// within `api.body_read_timeout_ms`) before the route runs, and answers errors in the
/// format the client wants. A body that does not arrive in time is answered 408 and
/// its connection closed, so a client trickling bytes holds nothing for long.
///
/// Reading first is what keeps keep-alive connections usable: an answer sent before the
/// body was read (a 401, a 415, a 413 for a declared length over the limit, as
/// tower-http's `RequestBodyLimitLayer` sends) leaves the unread body in the way of the
/// client's next request, and closing the socket over unread data resets the
/// connection, losing the answer. So an over-limit body is drained (up to
/// [`DRAIN_CAP`]) and refused with 413; only past that is the connection closed.
pub async fn negotiate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let arrived = tokio::time::Instant::now();
    let wanted = Format::wanted(request.headers());
    let limit = state.settings.api.max_body_bytes;
    let body_timeout = state.settings.api.body_read_timeout_ms;
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(Arrived(arrived));
    let read = tokio::time::timeout(Duration::from_millis(body_timeout), read_whole(body, limit))
        .await
        .unwrap_or(Read::TimedOut);
    let response = match read {
        Read::Whole(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Read::TimedOut => {
            let mut response = ApiError::BodyTimedOut(body_timeout).into_response();
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            response
        }
        Read::TooLarge { drained } => {
            let mut response = ApiError::PayloadTooLarge(limit).into_response();
            if !drained {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
        Read::Broken => ApiError::Malformed {
            message: "the request body could not be read".to_owned(),
            field: None,
        }
        .into_response(),
    };
    in_wanted_format(response, wanted)
}

enum Read {
    Whole(Bytes),
    TimedOut,
    TooLarge { drained: bool },
    Broken,
}

/// Reads `body` up to `limit` bytes; past it, reads on (throwing it away) up to
/// [`DRAIN_CAP`] so the connection can serve the next request.
async fn read_whole(body: axum::body::Body, limit: usize) -> Read {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Read::Broken;
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            kept.extend_from_slice(&data);
        } else if seen > DRAIN_CAP {
            return Read::TooLarge { drained: false };
        }
    }
    if seen > limit {
        Read::TooLarge { drained: true }
    } else {
        Read::Whole(Bytes::from(kept))
    }
}

/// An error response in the format the client wants: every [`ApiError`] carries its
/// [`ErrorBody`], re-rendered here for an XML client; an error from elsewhere (none is
/// expected) is put in the contract's shape.
fn in_wanted_format(response: Response, wanted: Format) -> Response {
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }
    let error = response.extensions().get::<ErrorBody>().cloned();
    if wanted == Format::Json && error.is_some() {
        return response;
    }
    let error = error.unwrap_or_else(|| ErrorBody {
        code: "error",
        message: status.canonical_reason().unwrap_or("error").to_owned(),
        field: None,
    });
    let (mut parts, _) = response.into_parts();
    let mut rendered = match wanted {
        Format::Xml => Format::Xml.render(status, "error", &error),
        Format::Json => error.json(status),
    };
    parts.headers.remove(CONTENT_TYPE);
    parts.headers.remove(CONTENT_LENGTH);
    for (name, value) in &parts.headers {
        rendered.headers_mut().insert(name, value.clone());
    }
    rendered
}
