//! The api's OpenAPI document and its page: a well-formed OpenAPI 3.1 document, generated
//! from the same list that builds the router, naming every route the api serves; and a
//! page that renders it from assets the api serves itself.

use std::collections::{BTreeSet, HashSet};

use reqwest::redirect::Policy;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::api::Api;

/// Every route of the public contract (`shared/DESIGN.md`, "Public contract"), with its
/// method: what merchants, gateways and operators rely on. The document must name
/// exactly these, so a route that leaves the router or the document is noticed.
const CONTRACT: &[(&str, &str)] = &[
    ("POST", "/v1/deposits"),
    ("POST", "/v1/withdrawals"),
    ("POST", "/deposit"),
    ("POST", "/withdrawal"),
    ("GET", "/v1/transactions"),
    ("GET", "/v1/transactions/{id}"),
    ("GET", "/v1/transactions/{id}/events"),
    ("POST", "/v1/transactions/{id}/refunds"),
    ("GET", "/v1/transactions/{id}/refunds"),
    ("GET", "/v1/refunds/{id}"),
    ("GET", "/v1/webhook-deliveries"),
    ("POST", "/v1/webhook-deliveries/{id}/replay"),
    ("POST", "/v1/callbacks/{gateway}"),
    ("POST", "/callback/{id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("POST", "/admin/v1/merchants"),
    ("POST", "/admin/v1/merchants/{id}/api-keys"),
    ("GET", "/admin/v1/merchants/{id}/api-keys"),
    ("POST", "/admin/v1/merchants/{id}/api-keys/{key_id}/revoke"),
    ("PUT", "/admin/v1/merchants/{id}/webhook"),
    ("GET", "/admin/v1/merchants/{id}/webhook"),
    ("POST", "/admin/v1/merchants/{id}/webhook-secret"),
    ("POST", "/admin/v1/merchants/{id}/webhook-signing-key"),
    ("POST", "/admin/v1/merchants/{id}/endpoints"),
    ("GET", "/admin/v1/merchants/{id}/endpoints"),
    ("GET", "/admin/v1/merchants/{id}/endpoints/{endpoint_id}"),
    ("PATCH", "/admin/v1/merchants/{id}/endpoints/{endpoint_id}"),
    ("DELETE", "/admin/v1/merchants/{id}/endpoints/{endpoint_id}"),
    (
        "POST",
        "/admin/v1/merchants/{id}/endpoints/{endpoint_id}/secret",
    ),
    (
        "POST",
        "/admin/v1/merchants/{id}/endpoints/{endpoint_id}/test",
    ),
    (
        "GET",
        "/.well-known/paygate/webhooks/{merchant_id}/jwks.json",
    ),
    ("PUT", "/admin/v1/customers"),
    ("GET", "/admin/v1/gateways"),
    ("PUT", "/admin/v1/gateways/{code}"),
    ("POST", "/admin/v1/gateways/{code}/enable"),
    ("POST", "/admin/v1/gateways/{code}/disable"),
    ("GET", "/admin/v1/routes"),
    ("PUT", "/admin/v1/routes"),
    ("DELETE", "/admin/v1/routes/{id}"),
    ("GET", "/admin/v1/routing"),
    ("PUT", "/admin/v1/routing/{route_set}"),
    ("DELETE", "/admin/v1/routing/{route_set}"),
    ("GET", "/admin/v1/routing/changes"),
    ("POST", "/admin/v1/settlement/runs"),
    ("GET", "/admin/v1/settlement/runs"),
    ("GET", "/admin/v1/settlement/differences"),
    ("POST", "/admin/v1/settlement/differences/{id}/resolve"),
    ("GET", "/admin/v1/settlement/days"),
    ("GET", "/admin/v1/callbacks/rejected"),
    ("GET", "/admin/v1/payments/dead-lettered"),
    ("GET", "/admin/v1/payments/under-review"),
    ("POST", "/admin/v1/transactions/{id}/redrive"),
    ("POST", "/admin/v1/transactions/{id}/release"),
    ("POST", "/admin/v1/transactions/{id}/review/resolve"),
    ("GET", "/admin/v1/outbox/set-aside"),
    ("POST", "/admin/v1/outbox/{event_id}/resend"),
    ("PUT", "/admin/v1/merchants/{id}/limits"),
    ("GET", "/admin/v1/merchants/{id}/limits"),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

impl Api {
    async fn document(&self) -> Value {
        let response = self
            .http
            .get(format!("{}/openapi.json", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{:?}",
            response.headers()
        );
        response.json().await.unwrap()
    }
}

/// Every operation of a document: (method in upper case, path, operation).
fn operations(document: &Value) -> Vec<(String, String, &Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths is an object") {
        for (method, operation) in item.as_object().expect("a path item is an object") {
            if METHODS.contains(&method.as_str()) {
                found.push((method.to_uppercase(), path.clone(), operation));
            }
        }
    }
    found
}

/// Every `$ref` anywhere under `value`, with where it was found.
fn references<'a>(value: &'a Value, at: String, found: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("$ref", Value::String(target)) => found.push((at.clone(), target)),
                    _ => references(child, format!("{at}/{key}"), found),
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                references(child, format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

/// The `{name}`s of a path template.
fn template_parameters(path: &str) -> BTreeSet<&str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_openapi_3_1_and_every_reference_resolves() {
    let api = Api::start().await;
    let document = api.document().await;

    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        document["openapi"]
    );
    assert!(!document["info"]["title"].as_str().unwrap().is_empty());
    assert!(!document["info"]["version"].as_str().unwrap().is_empty());
    assert_eq!(
        document,
        serde_json::to_value(paygate_api::openapi_document()).unwrap(),
        "the api serves the document its routes make"
    );

    let schemes: HashSet<&str> = document["components"]["securitySchemes"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(schemes, HashSet::from(["merchant_key", "admin_token"]));

    let mut operation_ids = HashSet::new();
    let operations = operations(&document);
    assert!(!operations.is_empty());
    for (method, path, operation) in &operations {
        let at = format!("{method} {path}");
        let id = operation["operationId"].as_str().unwrap_or_default();
        assert!(!id.is_empty(), "{at} has no operationId");
        assert!(operation_ids.insert(id), "{at}: operationId {id} twice");

        let responses = operation["responses"].as_object().unwrap();
        assert!(!responses.is_empty(), "{at} has no responses");
        for (status, response) in responses {
            assert!(
                status.len() == 3 && status.parse::<u16>().is_ok(),
                "{at}: status {status}"
            );
            assert!(
                response.get("$ref").is_some() || response["description"].is_string(),
                "{at} {status}: a response needs a description"
            );
        }

        // Every `{name}` of the path is a required path parameter, and only those.
        let declared: BTreeSet<&str> = operation["parameters"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|p| p["in"] == "path")
            .inspect(|p| assert_eq!(p["required"], true, "{at}: {p}"))
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(declared, template_parameters(path), "{at}");

        for requirement in operation["security"].as_array().into_iter().flatten() {
            for scheme in requirement.as_object().unwrap().keys() {
                assert!(schemes.contains(scheme.as_str()), "{at}: scheme {scheme}");
            }
        }
    }

    let mut found = Vec::new();
    references(&document, "#".to_owned(), &mut found);
    assert!(
        found.len() > 50,
        "the document shares its schemas by reference"
    );
    for (at, target) in found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: {target} points outside the document"));
        assert!(pointer.starts_with("/components/"), "{at}: {target}");
        assert!(
            document.pointer(pointer).is_some(),
            "{at}: {target} resolves to nothing"
        );
    }
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_the_api_serves_is_in_the_document_with_its_methods() {
    let api = Api::start().await;
    let document = api.document().await;

    let documented: BTreeSet<(String, String)> = operations(&document)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let contract: BTreeSet<(String, String)> = CONTRACT
        .iter()
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(
        documented, contract,
        "the document names exactly the routes of the contract"
    );

    // Each documented operation reaches a handler: not the router's fallback (404
    // "route not found") nor a wrong method (405). No credentials are sent, so nothing
    // changes: a handler answers 401, 404 or 415, or 200 for health.
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "1")
            .replace("{code}", "nope")
            .replace("{gateway}", "nope");
        let response = api
            .http
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{concrete}", api.url),
            )
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(
            body["error"]["message"], "route not found",
            "{method} {path} is documented but not served"
        );
        assert!(
            [200, 401, 404, 415].contains(&status.as_u16()),
            "{method} {path}: {status} {body}"
        );
    }

    // The probe can tell: a route that is not there hits the fallback.
    let missing: Value = api
        .http
        .get(format!("{}/v1/not-a-route", api.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(missing["error"]["message"], "route not found");
    api.running.stop().await.unwrap();
}

/// The `src` and `href` attribute values of an HTML page.
fn asset_references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attribute) {
            let rest = &html[at + attribute.len()..];
            if let Some(end) = rest.find('"') {
                found.push(rest[..end].to_owned());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_renders_the_document_from_assets_the_api_serves_itself() {
    let api = Api::start().await;
    // Redirects are followed by hand, so none can lead off this api.
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();

    let docs = http.get(format!("{}/docs", api.url)).send().await.unwrap();
    let page_url = if docs.status().is_redirection() {
        let location = docs.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            location.starts_with('/'),
            "redirected off the api: {location}"
        );
        format!("{}{location}", api.url)
    } else {
        format!("{}/docs", api.url)
    };
    let page = http.get(&page_url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();

    let assets = asset_references(&html);
    let base = reqwest::Url::parse(&page_url).unwrap();
    let mut scripts = 0;
    let mut styles = 0;
    for asset in &assets {
        let url = base.join(asset).unwrap();
        assert_eq!(
            url.origin(),
            base.origin(),
            "the page loads {asset} from elsewhere"
        );
        let response = http.get(url.clone()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let body = response.bytes().await.unwrap();
        assert!(!body.is_empty(), "{url} is empty");
        scripts += usize::from(asset.ends_with(".js"));
        styles += usize::from(asset.ends_with(".css"));
    }
    assert!(scripts >= 2 && styles >= 1, "{assets:?}");

    // The script that starts the page points it at this api's document and at no
    // online validator.
    let initializer = assets
        .iter()
        .find(|a| a.contains("initializer"))
        .expect("the page has its initializer script");
    let initializer = http
        .get(base.join(initializer).unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        initializer.contains(r#""url": "/openapi.json""#),
        "{initializer}"
    );
    assert!(
        initializer.contains(r#""validatorUrl": "none""#),
        "{initializer}"
    );
    assert!(!initializer.contains("http://") && !initializer.contains("https://"));
    api.running.stop().await.unwrap();
}

// What the document promises that schemathesis (`scripts/schemathesis`) found broken.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_payment_carries_one_content_type_the_document_names() {
    let api = Api::start().await;
    for (content_type, body, wanted) in [
        (
            "application/json",
            r#"{"user_id":"u-1","amount":"10.00","currency":"EUR"}"#,
            "application/json",
        ),
        (
            "application/xml",
            "<deposit><user_id>u-1</user_id><amount>10.00</amount><currency>EUR</currency></deposit>",
            "application/xml; charset=utf-8",
        ),
    ] {
        let response = api
            .http
            .post(format!("{}/v1/deposits", api.url))
            .bearer_auth(&api.key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let content_types: Vec<_> = response
            .headers()
            .get_all("content-type")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(content_types, [wanted]);
    }
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_id_that_cannot_be_read_is_404_in_the_error_contract() {
    let api = Api::start().await;
    let admin = paygate_testkit::ADMIN_TOKEN;
    let cases = [
        (Method::GET, "/v1/transactions/%FF", api.key.as_str()),
        (Method::GET, "/v1/transactions/%FF/events", api.key.as_str()),
        (Method::POST, "/admin/v1/gateways/%FF/enable", admin),
        (Method::DELETE, "/admin/v1/routes/not-a-number", admin),
        (
            Method::DELETE,
            "/admin/v1/routes/9223372036854775808",
            admin,
        ),
    ];
    for (method, path, token) in cases {
        let response = api
            .http
            .request(method.clone(), format!("{}{path}", api.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "not_found",
            "{method} {path}: {body}"
        );
    }
    api.running.stop().await.unwrap();
}

// Found while documenting the admin bodies: `Route` took unknown fields silently.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_an_unknown_field_is_refused_like_every_other_body() {
    let api = Api::start().await;
    let response = api
        .http
        .put(format!("{}/admin/v1/routes", api.url))
        .bearer_auth(paygate_testkit::ADMIN_TOKEN)
        .json(&serde_json::json!({"priority": 1, "gateway_code": "simjson", "colour": "red"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "colour", "{body}");
    assert_eq!(api.count("gateway_route").await, 0);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_refunds_their_webhooks_and_payment_metadata() {
    let api = Api::start().await;
    let document = api.document().await;
    for kind in ["refund.processing", "refund.completed", "refund.failed"] {
        assert_eq!(
            document["webhooks"][kind]["post"]["requestBody"]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/RefundWebhook",
            "{kind}"
        );
    }
    let schemas = &document["components"]["schemas"];
    let refund = &schemas["RefundView"]["properties"];
    for field in [
        "id",
        "transaction_id",
        "status",
        "version",
        "amount",
        "metadata",
    ] {
        assert!(refund[field].is_object(), "RefundView.{field}: {refund}");
    }
    let transaction = &schemas["TransactionView"]["properties"];
    for field in ["metadata", "amount_refunded"] {
        assert!(transaction[field].is_object(), "TransactionView.{field}");
    }
    assert!(schemas["PaymentRequest"]["properties"]["metadata"].is_object());
    let create = &document["paths"]["/v1/transactions/{id}/refunds"]["post"];
    assert!(
        create["responses"]["202"]["headers"]["Location"].is_object(),
        "{create}"
    );
    let list = &document["paths"]["/v1/transactions"]["get"]["parameters"];
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "metadata" && p["style"] == "deepObject"),
        "{list}"
    );
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_every_webhook_type_its_headers_and_the_endpoint_routes() {
    let api = Api::start().await;
    let document = api.document().await;
    for (kind, schema) in [
        ("transaction.processing", "TransactionWebhook"),
        ("transaction.completed", "TransactionWebhook"),
        ("transaction.failed", "TransactionWebhook"),
        ("transaction.review_required", "TransactionWebhook"),
        ("refund.completed", "RefundWebhook"),
        ("ping", "PingWebhook"),
    ] {
        let post = &document["webhooks"][kind]["post"];
        assert_eq!(
            post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{schema}"),
            "{kind}"
        );
        let headers: Vec<&str> = post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "header")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            headers,
            ["webhook-id", "webhook-timestamp", "webhook-signature"],
            "{kind}"
        );
        let named = &document["components"]["schemas"][schema];
        assert!(named.is_object(), "{schema} is in the components");
    }
    let paths = &document["paths"];
    for path in [
        "/admin/v1/merchants/{id}/endpoints",
        "/admin/v1/merchants/{id}/endpoints/{endpoint_id}",
        "/admin/v1/merchants/{id}/endpoints/{endpoint_id}/test",
    ] {
        assert!(paths[path].is_object(), "{path}");
    }
    let request = &document["components"]["schemas"]["PaymentRequest"]["properties"];
    assert!(request["notification_url"].is_object(), "{request}");
    api.running.stop().await.unwrap();
}
