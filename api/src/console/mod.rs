//! The operator console at `/console`: server-rendered pages that answer "is money
//! flowing, and what needs me?" — an overview, the transactions with each one's whole
//! life, the gateways with their circuits and routes, what needs a human, and the
//! reconciliation of each gateway's settlement reports ([`settlement`]).
//!
//! It reads the same tables as the admin API and steers through the same functions
//! (gateway enable/disable, webhook replay, operators' actions on payments). Pages are HTML from [`maud`], made better
//! by htmx when it loads and complete without it; every answer carries a strict
//! Content-Security-Policy ([`layout::CSP`]); every page but sign-in needs a session
//! ([`session`]); every state-changing form carries the session's CSRF token.
//!
//! The console is not part of the OpenAPI document (it is pages, not an API), and sits
//! outside the api's JSON/XML negotiation: its errors are pages too.

pub mod actions;
pub mod assets;
pub mod attention;
pub mod endpoints;
pub mod error;
pub mod gateways;
pub mod layout;
pub mod merchants;
pub mod overview;
pub mod routing;
pub mod session;
pub mod settlement;
pub mod transactions;

use axum::extract::State;
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use tower_http::trace::TraceLayer;

use crate::http::extract::ClientAddress;
use crate::AppState;
use error::ConsoleError;
use session::Operator;

/// Every console route, with its headers and its state.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/console", get(overview::show))
        .route("/console/", get(|| async { redirect("/console") }))
        .route("/console/login", get(sign_in_form).post(sign_in))
        .route("/console/logout", post(sign_out))
        .route("/console/transactions", get(transactions::list))
        .route("/console/transactions/{id}", get(transactions::detail))
        .route(
            "/console/deliveries/{id}/replay",
            post(transactions::replay),
        )
        .route("/console/transactions/{id}/redrive", post(actions::redrive))
        .route("/console/transactions/{id}/release", post(actions::release))
        .route(
            "/console/transactions/{id}/review/resolve",
            post(actions::resolve_review),
        )
        .route("/console/events/{id}/resend", post(actions::resend))
        .route("/console/gateways", get(gateways::show))
        .route("/console/gateways/{code}/switch", post(gateways::switch))
        .route("/console/routing", get(routing::show).post(routing::save))
        .route("/console/attention", get(attention::show))
        .route("/console/settlement", get(settlement::show))
        .route("/console/settlement/runs", post(settlement::run))
        .route(
            "/console/settlement/differences/{id}/resolve",
            post(settlement::resolve),
        )
        .route("/console/merchants", get(merchants::show))
        .route(
            "/console/merchants/{id}/endpoints",
            get(endpoints::show).post(endpoints::add),
        )
        .route(
            "/console/merchants/{id}/endpoints/{endpoint_id}/test",
            post(endpoints::test),
        )
        .route(
            "/console/merchants/{id}/endpoints/{endpoint_id}/switch",
            post(endpoints::switch),
        )
        .route(
            "/console/merchants/{id}/endpoints/{endpoint_id}/delete",
            post(endpoints::delete),
        )
        .route(
            "/console/merchants/{id}/api-keys/{key_id}/revoke",
            post(merchants::revoke),
        )
        .merge(assets::router())
        .layer(axum::middleware::from_fn(layout::security_headers))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// A `303 See Other` to `to`: after a form, the browser GETs the page.
pub fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, to.to_owned())]).into_response()
}

async fn sign_in_form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (nonce, cookie) = session::login_nonce(&state, &headers);
    let mut response = layout::sign_in(&nonce, None).into_response();
    if let Some(cookie) = cookie {
        response.headers_mut().append(SET_COOKIE, cookie);
    }
    response
}

#[derive(Debug, Deserialize)]
struct SignIn {
    #[serde(default)]
    token: String,
    /// Who the operator's actions are recorded under.
    #[serde(default)]
    name: String,
    #[serde(default)]
    csrf: String,
}

/// Signs an operator in. Attempts are limited per client address
/// (`admin.sign_in_attempts` per `admin.sign_in_window_ms`): past it the token is not
/// even compared, so guessing it costs a guesser the window, every few tries.
async fn sign_in(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    if let Err(wait) = state.clients.sign_in.spend(address) {
        tracing::warn!(?address, "console sign-in attempts over the limit");
        return ConsoleError::TooManyAttempts(wait).into_response();
    }
    match session::sign_in(&state, &headers, form.token.trim(), &form.name, &form.csrf) {
        Ok(cookie) => {
            tracing::info!("operator signed in to the console");
            let mut response = redirect("/console");
            response.headers_mut().append(SET_COOKIE, cookie);
            response
        }
        Err(ConsoleError::WrongToken) => {
            tracing::warn!("console sign-in with a wrong token");
            let (nonce, cookie) = session::login_nonce(&state, &headers);
            let mut response = (
                StatusCode::UNAUTHORIZED,
                layout::sign_in(&nonce, Some("That is not the admin token.")),
            )
                .into_response();
            if let Some(cookie) = cookie {
                response.headers_mut().append(SET_COOKIE, cookie);
            }
            response
        }
        Err(other) => other.into_response(),
    }
}

/// A form that only carries the CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    pub csrf: String,
}

async fn sign_out(
    State(state): State<AppState>,
    operator: Operator,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> error::Result<Response> {
    operator.check_csrf(&form.csrf)?;
    let mut response = redirect("/console/login");
    if let Some((name, value)) = session::sign_out(&state, &headers) {
        response.headers_mut().append(name, value);
    }
    Ok(response)
}
