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
        schemas(ErrorEnvelope, ErrorBody, RefundWebhook),
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

/// The document's `webhooks` (OpenAPI 3.1): what Paygate posts to a merchant's endpoint
/// about refunds. utoipa 5 has no field for them, so they are written as the top-level
/// object the specification names.
struct Webhooks;

impl Modify for Webhooks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let operation = |kind: &str, what: &str| {
            serde_json::json!({"post": {
                "summary": format!("`{kind}`: {what}"),
                "description": "Signed Standard-Webhooks style: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>`. Any 2xx is delivered; anything else is retried.",
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/RefundWebhook"}}}},
                "responses": {"2XX": {"description": "Delivered."}}
            }})
        };
        let webhooks = serde_json::json!({
            "refund.processing": operation("refund.processing", "the gateway took the refund and is paying it"),
            "refund.completed": operation("refund.completed", "the gateway refunded it; the payment's `amount_refunded` counts it"),
            "refund.failed": operation("refund.failed", "the gateway refused it; its amount may be refunded again"),
        });
        openapi
            .extensions
            .get_or_insert_with(Default::default)
            .insert("webhooks".to_owned(), webhooks);
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
