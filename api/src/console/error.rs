//! Why a console request was not served, answered as a page (never the JSON error
//! contract: a person reads it), with the status a browser or a test can check.

use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::layout;
use crate::admin::interventions::InterventionError;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No valid session: off to the sign-in form.
    #[error("not signed in")]
    NotSignedIn,
    /// A state-changing form without this session's CSRF token.
    #[error("the form did not carry this session's CSRF token")]
    BadCsrf,
    /// The sign-in form's token is not the admin token.
    #[error("that is not the admin token")]
    WrongToken,
    /// Too many sign-in attempts from this address; the seconds to wait.
    #[error("too many sign-in attempts; try again in {0} s")]
    TooManyAttempts(u64),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<sqlx::Error> for ConsoleError {
    fn from(error: sqlx::Error) -> Self {
        ConsoleError::Internal(error.into())
    }
}

pub type Result<T, E = ConsoleError> = std::result::Result<T, E>;

impl From<InterventionError> for ConsoleError {
    fn from(error: InterventionError) -> Self {
        match error {
            InterventionError::NotFound(what) => ConsoleError::NotFound(what),
            InterventionError::Invalid { field, message } => {
                ConsoleError::Invalid(format!("{field}: {message}"))
            }
            InterventionError::Refused { message, .. } => ConsoleError::Invalid(message),
            InterventionError::Database(error) => error.into(),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            ConsoleError::NotSignedIn => {
                return (StatusCode::SEE_OTHER, [(LOCATION, "/console/login")]).into_response();
            }
            ConsoleError::BadCsrf => StatusCode::FORBIDDEN,
            ConsoleError::WrongToken => StatusCode::UNAUTHORIZED,
            ConsoleError::TooManyAttempts(wait) => {
                let page = layout::bare("Paygate console", &self.to_string());
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(axum::http::header::RETRY_AFTER, wait.to_string())],
                    page,
                )
                    .into_response();
            }
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ConsoleError::Internal(source) => {
                tracing::error!(error = %format!("{source:#}"), "console request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, layout::bare("Paygate console", &self.to_string())).into_response()
    }
}
