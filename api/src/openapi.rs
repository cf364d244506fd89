//! The OpenAPI 3.1 document and the page that shows it.
//!
//! The document is generated from the code: each handler's `#[utoipa::path]` gives its
//! path, method, parameters, bodies and answers, and the types they name derive
//! `ToSchema` where they are defined. [`crate::routes`] builds the router and the
//! document from one list, so a route cannot be served without being documented. This
//! module adds what belongs to the api as a whole (its description, tags, security
//! schemes, the shared error answers) and serves `GET /openapi.json` and `GET /docs`.
//! The page is Swagger UI with its assets compiled into the binary: it downloads
//! nothing, at build time or in the browser, and asks no online validator.

use axum::http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::response::Response;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::http::error::responses::{
    BadRequest, Conflict, NotFound, PayloadTooLarge, ServiceUnavailable, TooManyRequests,
    Unauthorized, UnprocessableEntity, UnsupportedMediaType,
};
use crate::http::error::{ErrorBody, ErrorEnvelope};
use crate::merchant::payments::Accepted;
use crate::AppState;

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/openapi.json";
/// Where the page is served.
pub const PAGE_PATH: &str = "/docs";

/// What the document says of the api as a whole; the paths come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Paygate API",
        description = "Payment orchestration: merchants send deposits and withdrawals, Paygate \
                       routes them to a gateway and reports how they end by signed webhooks.\n\n\
                       JSON by default, XML when `Content-Type`/`Accept` is `application/xml`. \
                       Every error is `{\"error\": {\"code\", \"message\", \"field\"}}` (in XML \
                       `<error><code/><message/><field/></error>`); `field` names the input at \
                       fault. Amounts are decimal strings, never numbers. Bodies over 1 MiB are \
                       refused with 413.",
    ),
    modifiers(&SecuritySchemes, &Webhooks),
    components(
        schemas(ErrorEnvelope, ErrorBody, TransactionWebhook, RefundWebhook, PingWebhook),
        responses(
            Accepted,
            BadRequest,
            Unauthorized,
            NotFound,
            Conflict,
            PayloadTooLarge,
            UnsupportedMediaType,
            UnprocessableEntity,
            TooManyRequests,
            ServiceUnavailable,
        ),
    ),
    tags(
        (name = "payments", description = "Taking deposits and withdrawals."),
        (name = "transactions", description = "Reading a merchant's transactions and their histories."),
        (name = "refunds", description = "Giving money of a completed deposit back, in part or in whole."),
        (name = "webhooks", description = "The webhooks Paygate sent a merchant, and sending one again."),
        (name = "gateways", description = "What payment gateways call."),
        (name = "admin", description = "For operators, with the admin token."),
        (name = "health", description = "For orchestrators and load balancers."),
    )
)]
pub struct ApiDoc;

/// The two credentials: a merchant's API key and the operators' admin token, both sent
/// as `Authorization: Bearer …`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            "merchant_key",
            bearer("A merchant's API key (`pgk_…`), from `POST /admin/v1/merchants`."),
        );
        components.add_security_scheme(
            "admin_token",
            bearer("The operators' admin token, from configuration (`admin.token`)."),
        );
    }
}

/// The body of a `refund.*` webhook, signed like every other (`webhook-id`,
/// `webhook-timestamp`, `webhook-signature`) and delivered in order with its payment's
/// webhooks.
#[derive(ToSchema)]
#[schema(example = json!({
    "id": "evt_0198c9b2a4e07c3f9d2a61b5e8f4c0d1", "type": "refund.completed",
    "created_at": "2026-01-01T12:00:01.000Z",
    "data": {"id": "rfd_0198c9b2a4e07c3f9d2a61b5e8f4c0d1",
             "transaction_id": "txn_0198c9b2a4e07c3f9d2a61b5e8f4c0d1", "status": "completed",
             "version": 3, "amount": "10.00", "currency": "EUR", "reason": null,
             "metadata": {}, "gateway_refund_id": "sim_4f2c", "failure_reason": null,
             "created_at": "2026-01-01T12:00:00.000Z", "updated_at": "2026-01-01T12:00:01.000Z"}
}))]
// Documentation only: the dispatcher writes this body; the struct is its schema.
#[allow(dead_code)]
pub struct RefundWebhook {
    /// `evt_…`: the `webhook-id`, the same on every attempt.
    id: String,
    /// `refund.processing`, `refund.completed` or `refund.failed`.
    #[schema(example = "refund.completed")]
    r#type: String,
    /// RFC 3339, UTC, milliseconds: when the refund changed.
    created_at: String,
    data: paygate_common::events::RefundView,
}

/// The body of a `transaction.*` webhook: the payment as it is after the change.
#[derive(ToSchema)]
#[schema(example = json!({
    "id": "evt_0198c9b2a4e07c3f9d2a61b5e8f4c0d1", "type": "transaction.completed",
    "created_at": "2026-01-01T12:00:01.000Z",
    "data": {"id": "txn_0198c9b2a4e07c3f9d2a61b5e8f4c0d1", "kind": "deposit", "status": "completed",
             "version": 3, "amount": "100.50", "currency": "EUR", "user_id": "u-1"}
}))]
// Documentation only: the dispatcher writes this body; the struct is its schema.
#[allow(dead_code)]
pub struct TransactionWebhook {
    /// `evt_…`: the `webhook-id`, the same on every attempt and at every endpoint.
    id: String,
    /// `transaction.processing`, `transaction.completed`, `transaction.failed` or
    /// `transaction.review_required`.
    #[schema(example = "transaction.completed")]
    r#type: String,
    /// RFC 3339, UTC, milliseconds: when the payment changed.
    created_at: String,
    data: paygate_common::events::TransactionView,
}

/// The body of the test webhook an operator sends an endpoint
/// (`POST /admin/v1/merchants/{id}/endpoints/{endpoint_id}/test`), signed like any other.
#[derive(ToSchema)]
#[schema(example = json!({
    "id": "evt_0198c9b2a4e07c3f9d2a61b5e8f4c0d1", "type": "ping",
    "created_at": "2026-01-01T12:00:00.000Z",
    "data": {"merchant_id": "mer_0198c9b2a4e07c3f9d2a61b5e8f4c0d1", "endpoint_id": "whe_0198c9b2a4e07c3f9d2a61b5e8f4c0d1"}
}))]
#[allow(dead_code)]
pub struct PingWebhook {
    /// `evt_…`: its `webhook-id`.
    id: String,
    #[schema(example = "ping")]
    r#type: String,
    created_at: String,
    data: PingData,
}

/// Which endpoint a ping tests.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PingData {
    merchant_id: String,
    endpoint_id: String,
}

/// What each webhook type means, and the schema of its body.
const WEBHOOK_TYPES: [(&str, &str, &str); 8] = [
    ("transaction.processing", "TransactionWebhook", "a gateway took the payment and is settling it"),
    ("transaction.completed", "TransactionWebhook", "the payment succeeded; final"),
    ("transaction.failed", "TransactionWebhook", "the payment failed (`failure_reason` says why); final"),
    ("transaction.review_required", "TransactionWebhook", "Paygate found a contradiction or cannot settle the payment alone (`review`); the status is unchanged"),
    ("refund.processing", "RefundWebhook", "the gateway took the refund and is paying it"),
    ("refund.completed", "RefundWebhook", "the gateway refunded it; the payment's `amount_refunded` counts it"),
    ("refund.failed", "RefundWebhook", "the gateway refused it; its amount may be refunded again"),
    ("ping", "PingWebhook", "a test an operator sent to check the endpoint's verification code"),
];

/// The document's `webhooks` (OpenAPI 3.1): every type Paygate posts to a merchant's
/// endpoints (and a payment's `notification_url`), with its body and the three
/// Standard Webhooks headers. utoipa 5 has no field for them, so they are written as
/// the top-level object the specification names.
struct Webhooks;

impl Modify for Webhooks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let header = |name: &str, description: &str, example: &str| {
            serde_json::json!({"name": name, "in": "header", "required": true,
                               "description": description,
                               "schema": {"type": "string"}, "example": example})
        };
        let headers = serde_json::json!([
            header("webhook-id", "The event id (`evt_…`): the same on every attempt of this event at this endpoint; deduplicate by it.", "evt_0198c9b2a4e07c3f9d2a61b5e8f4c0d1"),
            header("webhook-timestamp", "Unix seconds when this attempt was signed; refuse one more than 5 minutes from your clock.", "1767268800"),
            header("webhook-signature", "Space-separated signatures: `v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>` per secret that signs now (two during a rotation), and `v1a,<base64 Ed25519>` when the merchant has a signing key (its public half is in the merchant's JWKS). Accept the message when any one verifies.", "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="),
        ]);
        let webhooks: serde_json::Map<String, serde_json::Value> = WEBHOOK_TYPES
            .iter()
            .map(|(kind, schema, what)| {
                (
                    (*kind).to_owned(),
                    serde_json::json!({"post": {
                        "summary": format!("`{kind}`: {what}"),
                        "description": "Sent to every enabled endpoint of the merchant whose event types take it (none: all), and to the payment's `notification_url`, signed Standard-Webhooks style. Any 2xx is delivered; anything else, or no answer in time, is retried on the schedule (honouring `Retry-After`). One payment's webhooks arrive at an endpoint in version order.",
                        "parameters": headers,
                        "requestBody": {"required": true, "content": {"application/json": {
                            "schema": {"$ref": format!("#/components/schemas/{schema}")}}}},
                        "responses": {
                            "2XX": {"description": "Delivered."},
                            "410": {"description": "The endpoint is gone: it is disabled, and probed until it answers 2xx again."},
                        }
                    }}),
                )
            })
            .collect();
        openapi
            .extensions
            .get_or_insert_with(Default::default)
            .insert("webhooks".to_owned(), serde_json::Value::Object(webhooks));
    }
}

/// The answer of `GET /healthz` and `GET /readyz`.
#[derive(ToSchema)]
pub struct HealthStatus {
    /// `ok` (alive) or `ready` (PostgreSQL, Redis and the broker answer).
    #[schema(example = "ok")]
    pub status: String,
    /// `/readyz` only: each check (`postgres`, `redis`, `broker`) and `ok`.
    pub checks: Option<std::collections::BTreeMap<String, String>>,
}

/// The page's Content-Security-Policy, as strict as the console's: scripts, styles and
/// requests from this origin only, no inline script or style, no frames; images may
/// also be `data:` URIs (Swagger UI's stylesheet draws its icons with them). The page
/// has no inline script: Swagger UI's `index.html` loads its bundle and a generated
/// `swagger-initializer.js` from files.
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// Middleware: the security headers of every answer under `/docs`.
async fn docs_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let is_page = request.uri().path().starts_with(PAGE_PATH);
    let mut response = next.run(request).await;
    if is_page {
        let headers = response.headers_mut();
        headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(DOCS_CSP));
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    }
    response
}

/// `GET /openapi.json` (`document`) and `GET /docs`, the page that renders it (with
/// [`DOCS_CSP`]). Neither needs credentials.
pub fn serve(document: utoipa::openapi::OpenApi) -> Router<AppState> {
    let ui: Router<AppState> = SwaggerUi::new(PAGE_PATH)
        .url(DOCUMENT_PATH, document)
        .config(
            Config::default()
                // "none": the page never sends the document to an online validator.
                .validator_url("none")
                .try_it_out_enabled(true)
                .display_request_duration(true),
        )
        .into();
    ui.layer(axum::middleware::from_fn(docs_headers))
}
