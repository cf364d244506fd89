//! A merchant's webhook endpoints through the admin API (create, list, change, switch
//! off, delete, rotate, test ping), bad input refused with one typed error that changes
//! nothing, and a payment's own `notification_url` end to end.

use std::time::Duration;

use paygate_testkit::{eventually, json_of, Suite, WebhookReceiver, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::api::Api;
use crate::webhooks::official_verdict;

impl Api {
    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/admin/v1{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
    }

    async fn endpoints_of(&self, merchant: &str) -> Vec<Value> {
        let page = json_of(self.admin(
            reqwest::Method::GET,
            &format!("/merchants/{merchant}/endpoints"),
        ))
        .await;
        page["data"].as_array().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_adds_lists_changes_switches_off_and_deletes_a_merchants_endpoints() {
    use reqwest::Method;
    let api = Api::start().await;
    let (first, second) = (
        WebhookReceiver::start().await,
        WebhookReceiver::start().await,
    );
    let merchant = json_of(
        api.admin(Method::POST, "/merchants")
            .json(&json!({"name": "m", "webhook_url": first.url})),
    )
    .await;
    let id = merchant["id"].as_str().unwrap();
    let endpoints = api.endpoints_of(id).await;
    assert_eq!(endpoints.len(), 1, "its URL is its first endpoint");
    assert_eq!(endpoints[0]["url"], first.url.as_str());
    assert_eq!(endpoints[0]["primary"], true);
    assert_eq!(
        endpoints[0]["own_secret"], false,
        "it signs with the merchant's secret"
    );
    assert_eq!(endpoints[0]["event_types"], json!([]));

    let response = api
        .admin(Method::POST, &format!("/merchants/{id}/endpoints"))
        .json(&json!({"url": second.url, "event_types": ["refund.*", "transaction.failed"], "rate_limit": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let endpoint = created["id"].as_str().unwrap().to_owned();
    assert!(endpoint.starts_with("whe_"), "{created}");
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(
        created["event_types"],
        json!(["refund.*", "transaction.failed"])
    );
    assert_eq!(created["rate_limit"], 5);
    assert_eq!(created["health"], "healthy");

    let path = format!("/merchants/{id}/endpoints/{endpoint}");
    let changed = json_of(
        api.admin(Method::PATCH, &path)
            .json(&json!({"enabled": false, "rate_limit": null})),
    )
    .await;
    assert_eq!(changed["enabled"], false);
    assert_eq!(changed["rate_limit"], Value::Null);
    assert_eq!(
        changed["event_types"], created["event_types"],
        "unnamed fields stay"
    );
    let rotated = api
        .admin(Method::POST, &format!("{path}/secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), StatusCode::CREATED);

    let deleted = api.admin(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = api.admin(Method::GET, &path).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(api.endpoints_of(id).await.len(), 1);
    let unknown = api
        .admin(
            Method::GET,
            "/merchants/mer_00000000000000000000000000000000/endpoints",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_endpoint_input_gets_one_typed_error_and_changes_nothing() {
    use reqwest::Method;
    let api = Api::start_with(|s| {
        s.callback_dispatcher.allow_private = false;
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    let merchant = json_of(
        api.admin(Method::POST, "/merchants")
            .json(&json!({"name": "m", "webhook_url": receiver.url})),
    )
    .await;
    let id = merchant["id"].as_str().unwrap();
    let endpoint = api.endpoints_of(id).await[0].clone();
    let before = api.endpoints_of(id).await;
    let path = format!(
        "/merchants/{id}/endpoints/{}",
        endpoint["id"].as_str().unwrap()
    );
    for (method, path, body, field) in [
        (
            Method::POST,
            format!("/merchants/{id}/endpoints"),
            json!({"url": receiver.url, "event_types": ["refund.nope"]}),
            "event_types",
        ),
        (
            Method::POST,
            format!("/merchants/{id}/endpoints"),
            json!({"url": receiver.url, "event_types": ["*"]}),
            "event_types",
        ),
        (
            Method::POST,
            format!("/merchants/{id}/endpoints"),
            json!({"url": receiver.url, "rate_limit": 0}),
            "rate_limit",
        ),
        (
            Method::POST,
            format!("/merchants/{id}/endpoints"),
            json!({"url": "https://10.0.0.8/hooks"}),
            "url",
        ),
        (
            Method::POST,
            format!("/merchants/{id}/endpoints"),
            json!({"url": receiver.url, "colour": "red"}),
            "colour",
        ),
        (
            Method::PATCH,
            path.clone(),
            json!({"url": "https://169.254.169.254/latest/meta-data"}),
            "url",
        ),
        (
            Method::PATCH,
            path.clone(),
            json!({"rate_limit": 100000}),
            "rate_limit",
        ),
        (
            Method::PATCH,
            path.clone(),
            json!({"event_types": ["transaction.created"]}),
            "event_types",
        ),
    ] {
        let response = api.admin(method, &path).json(&body).send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
        assert!(error["error"]["code"].is_string(), "{error}");
    }
    let after = api.endpoints_of(id).await;
    assert_eq!(before, after, "nothing was stored or changed");
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_ping_reaches_the_endpoint_signed_so_the_official_library_verifies_it() {
    use reqwest::Method;
    let api = Api::start().await;
    let receiver = WebhookReceiver::start().await;
    let merchant = json_of(
        api.admin(Method::POST, "/merchants")
            .json(&json!({"name": "m"})),
    )
    .await;
    let id = merchant["id"].as_str().unwrap();
    let created = json_of(
        api.admin(Method::POST, &format!("/merchants/{id}/endpoints"))
            .json(&json!({"url": receiver.url})),
    )
    .await;
    let endpoint = created["id"].as_str().unwrap();

    let result = json_of(api.admin(
        Method::POST,
        &format!("/merchants/{id}/endpoints/{endpoint}/test"),
    ))
    .await;
    assert_eq!(result["delivered"], true, "{result}");
    assert_eq!(result["status_code"], 200);
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let ping = &received[0];
    assert_eq!(ping.json()["type"], "ping");
    assert_eq!(
        ping.header("webhook-id"),
        result["webhook_id"].as_str().unwrap()
    );
    assert!(official_verdict(ping, created["secret"].as_str().unwrap()));
    assert!(
        !official_verdict(ping, merchant["webhook_secret"].as_str().unwrap()),
        "signed with the endpoint's own secret, not the merchant's"
    );

    // With an Ed25519 key, the ping carries its `v1a,` signature too, as webhooks do.
    let key = api
        .admin(
            Method::POST,
            &format!("/merchants/{id}/webhook-signing-key"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(key.status(), StatusCode::CREATED);
    let again = json_of(api.admin(
        Method::POST,
        &format!("/merchants/{id}/endpoints/{endpoint}/test"),
    ))
    .await;
    assert_eq!(again["delivered"], true, "{again}");
    let signature = receiver.received()[1]
        .header("webhook-signature")
        .to_owned();
    assert!(
        signature.starts_with("v1,") && signature.contains(" v1a,"),
        "{signature}"
    );
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_url_that_reaches_an_internal_address_is_refused_and_nothing_is_stored() {
    let api = Api::start_with(|s| {
        s.callback_dispatcher.allow_private = false;
    })
    .await;
    for url in [
        "https://10.0.0.8/hooks",
        "https://169.254.169.254/latest",
        "not a url",
    ] {
        let body = json!({"user_id": "u-1", "amount": "10.00", "currency": "EUR", "notification_url": url});
        let (status, error) = api.deposit(&body.to_string(), "application/json").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}");
        assert_eq!(error["error"]["field"], "notification_url", "{error}");
    }
    assert_eq!(api.count("transaction").await, 0);
    assert_eq!(api.count("transaction_event").await, 0);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payments_notification_url_receives_its_events_and_the_deliveries_list_shows_them() {
    let suite = Suite::start().await;
    let notified = WebhookReceiver::start().await;
    let with_url = suite
        .deposit_with(&json!({"user_id": "user-1", "amount": "20.00", "currency": "USD", "notification_url": notified.url}))
        .await;
    let without = suite.deposit("21.00").await;
    eventually(
        "both payments' webhooks at the endpoint",
        Duration::from_secs(60),
        || async {
            let ids: Vec<Value> = suite
                .webhooks
                .received()
                .iter()
                .filter(|w| w.json()["type"] == "transaction.completed")
                .map(|w| w.json()["data"]["id"].clone())
                .collect();
            (ids.contains(&json!(with_url)) && ids.contains(&json!(without))).then_some(())
        },
    )
    .await;
    let deliveries = eventually(
        "its deliveries recorded",
        Duration::from_secs(30),
        || async {
            let page =
                json_of(suite.get(&format!("/v1/webhook-deliveries?transaction_id={with_url}")))
                    .await;
            let data = page["data"].as_array().unwrap().clone();
            (data.len() == 4 && data.iter().all(|d| d["status"] == "delivered")).then_some(data)
        },
    )
    .await;
    let to_url: Vec<&Value> = deliveries
        .iter()
        .filter(|d| d["endpoint_id"].is_null())
        .collect();
    assert_eq!(to_url.len(), 2, "{deliveries:?}");
    assert!(to_url.iter().all(|d| d["url"] == notified.url.as_str()));

    let received = notified.received();
    let types: Vec<(Value, Value)> = received
        .iter()
        .map(|w| (w.json()["type"].clone(), w.json()["data"]["id"].clone()))
        .collect();
    assert_eq!(
        types,
        vec![
            (json!("transaction.processing"), json!(with_url)),
            (json!("transaction.completed"), json!(with_url)),
        ],
        "that payment's events only, in order"
    );
    for webhook in &received {
        assert!(official_verdict(webhook, &suite.merchant.webhook_secret));
    }
    suite.stop().await;
}
