//! API keys are cached by the api, and a revoked key is refused all the same.

use std::time::Duration;

use paygate_testkit::{eventually, Running};
use reqwest::StatusCode;

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
