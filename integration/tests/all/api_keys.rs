//! API keys are cached by the api, and a revoked key is refused all the same.

use std::time::Duration;

use paygate_testkit::{eventually, json_of, Running};
use reqwest::StatusCode;

/// Lets the notification of a key's creation (which empties every replica's cache)
/// arrive before a test fills the caches: after it, only a later change can.
async fn settle_creation() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_key_is_refused_as_soon_as_it_is_revoked() {
    let mut settings = paygate_testkit::settings().await;
    settings.api.key_cache_ttl_ms = 60_000;
    let pool = paygate_testkit::pool(&settings).await;
    let app = paygate_api::Application::build(settings).await.unwrap();
    let url = format!("http://127.0.0.1:{}/v1/transactions", app.port());
    let cache = app.api_keys();
    let running = Running::spawn(|s| app.run(s));
    let merchant = paygate_api::merchants::create(&pool, &paygate_testkit::keys(), "m", None, None)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let status = || {
        let request = http.get(&url).bearer_auth(&merchant.api_key);
        async move { request.send().await.unwrap().status() }
    };
    eventually(
        "the cache to listen for key changes",
        Duration::from_secs(10),
        || async { cache.is_listening().then_some(()) },
    )
    .await;
    settle_creation().await;
    assert_eq!(status().await, StatusCode::OK);

    // Revoked behind the notification's back: the cached key still works, so requests
    // really are served from memory.
    sqlx::query("ALTER TABLE api_key DISABLE TRIGGER api_key_notify")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE api_key SET revoked_at = now() WHERE merchant_id = $1")
        .bind(merchant.id.as_str())
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(status().await, StatusCode::OK, "served from the cache");

    // A revocation as it really happens: the change notifies every api.
    sqlx::query("ALTER TABLE api_key ENABLE TRIGGER api_key_notify")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE api_key SET revoked_at = now() WHERE merchant_id = $1")
        .bind(merchant.id.as_str())
        .execute(&pool)
        .await
        .unwrap();
    eventually(
        "the revoked key to be refused, within seconds of a minute-long cache",
        Duration::from_secs(5),
        || async { (status().await == StatusCode::UNAUTHORIZED).then_some(()) },
    )
    .await;
    running.stop().await.unwrap();
    pool.close().await;
}

/// An api on `settings`, its URL and its key cache (listening before it is returned).
async fn replica(
    settings: &paygate_common::Settings,
) -> (String, Running, paygate_api::api_keys::ApiKeyCache) {
    let app = paygate_api::Application::build(settings.clone())
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    let cache = app.api_keys();
    let running = Running::spawn(|s| app.run(s));
    eventually("the cache to listen", Duration::from_secs(10), || async {
        cache.is_listening().then_some(())
    })
    .await;
    (url, running, cache)
}

/// Two api replicas on one database, both caching keys for a minute (so only the
/// notification can explain a refusal within seconds), and a merchant named `name`.
async fn two_replicas(
    name: &str,
) -> (
    sqlx::PgPool,
    [(String, Running); 2],
    paygate_api::merchants::NewMerchant,
) {
    let mut settings = paygate_testkit::settings().await;
    settings.api.key_cache_ttl_ms = 60_000;
    let pool = paygate_testkit::pool(&settings).await;
    let (one, one_running, _) = replica(&settings).await;
    let (two, two_running, _) = replica(&settings).await;
    let merchant =
        paygate_api::merchants::create(&pool, &paygate_testkit::keys(), name, None, None)
            .await
            .unwrap();
    (pool, [(one, one_running), (two, two_running)], merchant)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_through_the_admin_api_is_refused_by_every_replica_at_once() {
    let (pool, [(one, one_running), (two, two_running)], merchant) = two_replicas("m").await;
    let http = reqwest::Client::new();
    let status = |url: &str| {
        let request = http
            .get(format!("{url}/v1/transactions"))
            .bearer_auth(&merchant.api_key);
        async move { request.send().await.unwrap().status() }
    };
    settle_creation().await;
    // Both replicas now hold the key in their caches.
    assert_eq!(status(&one).await, StatusCode::OK);
    assert_eq!(status(&two).await, StatusCode::OK);

    let admin =
        |request: reqwest::RequestBuilder| request.bearer_auth(paygate_testkit::ADMIN_TOKEN);
    let keys = json_of(admin(
        http.get(format!("{one}/admin/v1/merchants/{}/api-keys", merchant.id)),
    ))
    .await;
    let keys = keys["data"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["state"], "live");
    assert!(merchant
        .api_key
        .starts_with(keys[0]["prefix"].as_str().unwrap()));
    assert!(
        !keys[0].to_string().contains(&merchant.api_key),
        "the key itself is never shown"
    );
    let key_id = keys[0]["id"].as_str().unwrap();
    let revoke = |url: &str, merchant: &str| {
        admin(http.post(format!(
            "{url}/admin/v1/merchants/{merchant}/api-keys/{key_id}/revoke"
        )))
        .send()
    };

    let revoked = revoke(&one, merchant.id.as_str()).await.unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    let revoked_at = revoked.json::<serde_json::Value>().await.unwrap()["revoked_at"].clone();
    assert!(revoked_at.is_string());
    for url in [&one, &two] {
        eventually(
            "the revoked key to be refused by this replica",
            Duration::from_secs(2),
            || async { (status(url).await == StatusCode::UNAUTHORIZED).then_some(()) },
        )
        .await;
    }
    // Revoking again changes nothing; another merchant's key id is not found.
    let again: serde_json::Value = revoke(&two, merchant.id.as_str())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["revoked_at"], revoked_at);
    let other = paygate_api::merchants::create(&pool, &paygate_testkit::keys(), "o", None, None)
        .await
        .unwrap();
    let elsewhere = revoke(&one, other.id.as_str()).await.unwrap();
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);

    one_running.stop().await.unwrap();
    two_running.stop().await.unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_revoke_button_stops_a_key_on_another_replica() {
    let (pool, [(console, console_running), (serving, serving_running)], merchant) =
        two_replicas("Leaky Ltd").await;
    let http = reqwest::Client::new();
    let status = || {
        let request = http
            .get(format!("{serving}/v1/transactions"))
            .bearer_auth(&merchant.api_key);
        async move { request.send().await.unwrap().status() }
    };
    settle_creation().await;
    assert_eq!(status().await, StatusCode::OK);

    let mut browser = crate::console::Browser::new(&console);
    browser.sign_in_as("Ada").await;
    let page = browser.page("/console/merchants").await;
    assert!(page.contains("Leaky Ltd"), "{page}");
    let action = format!("/console/merchants/{}/api-keys/", merchant.id);
    let at = page.find(&action).expect("a revoke button for the key");
    let rest = &page[at..];
    let path = &rest[..rest.find('"').unwrap()];
    let csrf = crate::console::hidden(rest, "csrf");
    let response = browser.post(path, &[("csrf", &csrf)]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    eventually(
        "the other replica to refuse the key",
        Duration::from_secs(2),
        || async { (status().await == StatusCode::UNAUTHORIZED).then_some(()) },
    )
    .await;
    let page = browser.page("/console/merchants").await;
    assert!(page.contains("revoked"), "{page}");
    console_running.stop().await.unwrap();
    serving_running.stop().await.unwrap();
    pool.close().await;
}
