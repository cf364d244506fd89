//! The one HTTP error contract: `{"error": {"code", "message", "field"}}` with a status
//! that says what went wrong. Server errors are logged once, here, and answered with a
//! generic message: internals never reach a client.

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not well-formed JSON (or not the protocol's shape).
    #[error("{message}")]
    Malformed {
        message: String,
        field: Option<String>,
    },
    /// 422: well-formed, but a value breaks a rule (unknown currency, amount <= 0, ...).
    #[error("{message}")]
    Invalid {
        message: String,
        field: Option<String>,
    },
    /// 422: well-formed and valid, but a rule about the state of things refuses it;
    /// `code` names the rule (`limit_exceeded`, `not_pending`, …) for clients to branch
    /// on, and nothing was changed.
    #[error("{message}")]
    Refused {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this route does not take that method")]
    MethodNotAllowed,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("send {0}")]
    UnsupportedMediaType(&'static str),
    #[error("a request with this Idempotency-Key is still in flight; retry later")]
    IdempotencyInFlight,
    #[error("too many requests; retry after {0} s")]
    RateLimited(u64),
    #[error("a dependency is unavailable; try again")]
    Unavailable(#[source] anyhow::Error),
    #[error("the request took longer than {0} ms and was abandoned; retry it (with the same Idempotency-Key)")]
    TimedOut(u64),
    /// 408: the body did not arrive whole within `api.body_read_timeout_ms`.
    #[error("the request body did not arrive within {0} ms")]
    BodyTimedOut(u64),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError::Invalid {
            message: message.to_string(),
            field: Some(field.to_owned()),
        }
    }

    /// A refusal by the rule `code`, about `field` when one input is at fault.
    pub fn refused(
        code: &'static str,
        field: Option<&str>,
        message: impl std::fmt::Display,
    ) -> Self {
        ApiError::Refused {
            code,
            message: message.to_string(),
            field: field.map(str::to_owned),
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Malformed { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } | ApiError::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized | ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::IdempotencyInFlight => StatusCode::CONFLICT,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::TimedOut(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Malformed { .. } => "malformed_body",
            ApiError::Invalid { .. } => "validation_failed",
            ApiError::Refused { code, .. } => code,
            ApiError::Unauthorized | ApiError::Unauthenticated(_) => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::IdempotencyInFlight => "idempotency_in_flight",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Unavailable(_) => "service_unavailable",
            ApiError::TimedOut(_) => "request_timeout",
            ApiError::BodyTimedOut(_) => "body_timeout",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::Malformed { field, .. }
            | ApiError::Invalid { field, .. }
            | ApiError::Refused { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable(error.into())
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

/// The body of every error, in JSON or XML: `{"error": {"code", "message", "field"}}`
/// or `<error><code/><message/><field/></error>`. Responses built from an [`ApiError`]
/// carry it as an extension, so a middleware can render it for an XML client.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(
    xml(name = "error"),
    description = "What went wrong: in JSON under `error`, in XML as `<error>` itself."
)]
pub struct ErrorBody {
    /// What went wrong, for clients to branch on: `malformed_body`, `validation_failed`,
    /// `unauthorized`, `not_found`, `method_not_allowed`, `payload_too_large`,
    /// `unsupported_media_type`, `idempotency_in_flight`, `rate_limited`,
    /// `service_unavailable`, `internal_error`; and, with 422, the rule that refused a
    /// valid request: `limit_exceeded` (a withdrawal over the merchant's payout limits),
    /// `not_pending`, `no_gateway` and `gateway_changed` (an operator action the
    /// payment's state does not allow).
    #[schema(example = "validation_failed")]
    pub code: &'static str,
    /// For people; never carries internals.
    #[schema(example = "must be 1 to 255 characters")]
    pub message: String,
    /// The input at fault, when there is one (`amount`, `payment_method.card.number`, …).
    #[schema(example = "user_id")]
    pub field: Option<String>,
}

/// An error answer in JSON: `{"error": {...}}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

impl ErrorBody {
    pub fn of(error: &ApiError) -> Self {
        ErrorBody {
            code: error.code(),
            message: error.to_string(),
            field: error.field().map(str::to_owned),
        }
    }

    /// The JSON form.
    pub fn json(&self, status: StatusCode) -> Response {
        let mut response = (
            status,
            Json(ErrorEnvelope {
                error: self.clone(),
            }),
        )
            .into_response();
        response.extensions_mut().insert(self.clone());
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        match &self {
            ApiError::Internal(source) | ApiError::Unavailable(source) => {
                tracing::error!(error = %format!("{source:#}"), status = status.as_u16(), "request failed");
            }
            _ => {}
        }
        let mut response = ErrorBody::of(&self).json(status);
        if let ApiError::RateLimited(seconds) = self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Each error status as a reusable OpenAPI response (`#/components/responses/<Name>`),
/// with the error body in JSON and in XML. Routes name the ones they can answer.
pub mod responses {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::response::{Response, ResponseBuilder};
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{ContentBuilder, Ref, RefOr};
    use utoipa::ToResponse;

    /// What every error response shares: the error body in JSON and in XML.
    fn error(description: &str) -> ResponseBuilder {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                    .build(),
            )
            .content(
                "application/xml",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
    }

    macro_rules! error_responses {
        ($($name:ident => $description:literal;)+) => {$(
            #[doc = $description]
            pub struct $name;

            impl<'r> ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<Response>) {
                    (stringify!($name), error($description).build().into())
                }
            }
        )+};
    }

    error_responses! {
        BadRequest => "The body is not well-formed: JSON or XML syntax, the wrong XML root, a DOCTYPE.";
        Unauthorized => "The credentials are missing or wrong.";
        NotFound => "There is no such resource, or it is another merchant's.";
        Conflict => "A request with this `Idempotency-Key` is still in flight; retry later.";
        PayloadTooLarge => "The body is larger than the configured limit (1 MiB by default).";
        UnsupportedMediaType => "The `Content-Type` is not one this route takes.";
        UnprocessableEntity => "Well-formed, but a value breaks a rule, and `field` names it: an unknown currency or country, an amount <= 0 or with too many decimals, a card failing Luhn or expired, an unknown field, an `Idempotency-Key` reused with another body. Or a rule refuses a valid request, and `code` names it: `limit_exceeded` (over the merchant's payout limits), `not_pending`, `no_gateway`, `gateway_changed`.";
        ServiceUnavailable => "A dependency is down; try again.";
    }

    /// The errors an admin route that changes something can answer (400, 401, 404, 413,
    /// 415, 422, 503), each the shared response above: named once for every such route.
    pub struct AdminChangeErrors;

    impl utoipa::IntoResponses for AdminChangeErrors {
        fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
            [
                ("400", "BadRequest"),
                ("401", "Unauthorized"),
                ("404", "NotFound"),
                ("413", "PayloadTooLarge"),
                ("415", "UnsupportedMediaType"),
                ("422", "UnprocessableEntity"),
                ("503", "ServiceUnavailable"),
            ]
            .into_iter()
            .map(|(status, name)| (status.to_owned(), Ref::from_response_name(name).into()))
            .collect()
        }
    }

    /// Over the merchant's request rate.
    pub struct TooManyRequests;

    impl<'r> ToResponse<'r> for TooManyRequests {
        fn response() -> (&'r str, RefOr<Response>) {
            let retry_after = HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some("Seconds until requests are counted afresh."))
                .build();
            let response = error("Over the merchant's request rate.")
                .header("Retry-After", retry_after)
                .build();
            ("TooManyRequests", response.into())
        }
    }
}
