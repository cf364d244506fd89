//! What a copy of the database gives away, and what production refuses to start with:
//! keyed request fingerprints, the purge, re-sealing to the newest key, plain secrets
//! refused, gateway URLs and callback secrets checked like webhooks.

use base64::Engine as _;
use paygate_common::cards::KeyRing;
use paygate_common::config::Environment;
use paygate_common::gateway::CardDetails;
use paygate_common::secrets::Sealed;
use paygate_testkit::ADMIN_TOKEN;
use reqwest::StatusCode;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use sha2::Digest as _;

use crate::api::Api;

fn ring(entries: &[(&str, u8)]) -> KeyRing {
    let entries: Vec<SecretString> = entries
        .iter()
        .map(|(id, byte)| {
            format!(
                "{id}:{}",
                base64::engine::general_purpose::STANDARD.encode([*byte; 32])
            )
            .into()
        })
        .collect();
    KeyRing::from_config(&entries).unwrap()
}

/// A test card, sealed with `ring`.
fn test_card(ring: &KeyRing) -> paygate_common::cards::SealedCard {
    ring.seal(&CardDetails {
        number: SecretString::from("4242424242424242".to_owned()),
        expiry_month: 12,
        expiry_year: 2031,
        holder_name: None,
        cvv: None,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_fingerprint_is_keyed_and_a_repeat_with_the_same_card_replays() {
    let api = Api::start().await;
    let body = json!({"user_id": "u-1", "amount": "10.00", "currency": "EUR",
        "payment_method": {"type": "card", "card": {"number": "4242424242424242",
        "expiry_month": 12, "expiry_year": 2031, "cvv": "123"}}})
    .to_string();
    let send = || {
        api.http
            .post(format!("{}/v1/deposits", api.url))
            .bearer_auth(&api.key)
            .header("content-type", "application/json")
            .header("idempotency-key", "order-1")
            .body(body.clone())
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let again = send().await.unwrap();
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");

    let stored: Vec<u8> = sqlx::query_scalar("SELECT request_hash FROM idempotency_key")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    let mut unkeyed = sha2::Sha256::new();
    unkeyed.update(b"/v1/deposits\n");
    unkeyed.update(body.as_bytes());
    assert_ne!(
        stored,
        unkeyed.finalize().to_vec(),
        "a hash anyone can recompute gives the card number up to a search"
    );
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_removes_expired_idempotency_keys_and_the_cards_of_long_final_payments_only() {
    let settings = paygate_testkit::settings().await;
    let pool = paygate_testkit::pool(&settings).await;
    let merchant = paygate_api::merchants::create(&pool, &paygate_testkit::keys(), "m", None, None)
        .await
        .unwrap();
    for (key, age_hours) in [("old", 25), ("fresh", 1)] {
        sqlx::query(
            "INSERT INTO idempotency_key (merchant_id, key, request_hash, created_at)
             VALUES ($1, $2, '\\x00', now() - $3 * interval '1 hour')",
        )
        .bind(merchant.id.as_str())
        .bind(key)
        .bind(f64::from(age_hours))
        .execute(&pool)
        .await
        .unwrap();
    }
    let sealed = test_card(&paygate_testkit::card_keys());
    for (id, status, age_days) in [
        ("txn_final_old", "completed", 8),
        ("txn_failed_old", "failed", 8),
        ("txn_final_new", "completed", 1),
        ("txn_pending_old", "pending", 30),
    ] {
        sqlx::query(
            "INSERT INTO transaction (id, merchant_id, kind, status, amount, currency, user_id,
                                      payment_method, card_masked, card_key_id, card_ciphertext,
                                      updated_at)
             VALUES ($1, $2, 'deposit', $3, 1, 'EUR', 'u', 'card', $4, $5, $6,
                     now() - $7 * interval '1 day')",
        )
        .bind(id)
        .bind(merchant.id.as_str())
        .bind(status)
        .bind(&sealed.masked)
        .bind(&sealed.key_id)
        .bind(&sealed.ciphertext)
        .bind(f64::from(age_days))
        .execute(&pool)
        .await
        .unwrap();
    }

    let purged = paygate_api::purge::once(&pool, &paygate_api::purge::Retention::of(&settings))
        .await
        .unwrap();
    assert_eq!((purged.idempotency_keys, purged.cards), (1, 2));

    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_key")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(keys, ["fresh"]);
    let cards: Vec<(String, Option<Vec<u8>>, Option<String>)> =
        sqlx::query_as("SELECT id, card_ciphertext, card_masked FROM transaction ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (id, ciphertext, masked) in cards {
        let kept = matches!(id.as_str(), "txn_final_new" | "txn_pending_old");
        assert_eq!(ciphertext.is_some(), kept, "{id}");
        assert_eq!(
            masked.as_deref(),
            Some("424242******4242"),
            "{id} stays masked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_sealing_moves_cards_and_secrets_to_the_newest_key_so_the_old_one_can_leave() {
    let settings = paygate_testkit::settings().await;
    let pool = paygate_testkit::pool(&settings).await;
    let (old_cards, old_secrets) = (ring(&[("c1", 1)]), ring(&[("s1", 2)]));
    let merchant = paygate_api::merchants::create(&pool, &old_secrets, "m", None, None)
        .await
        .unwrap();
    let sealed = test_card(&old_cards);
    sqlx::query(
        "INSERT INTO transaction (id, merchant_id, kind, status, amount, currency, user_id,
                                  payment_method, card_masked, card_key_id, card_ciphertext)
         VALUES ('txn_1', $1, 'deposit', 'pending', 1, 'EUR', 'u', 'card', $2, $3, $4)",
    )
    .bind(merchant.id.as_str())
    .bind(&sealed.masked)
    .bind(&sealed.key_id)
    .bind(&sealed.ciphertext)
    .execute(&pool)
    .await
    .unwrap();

    let (cards, secrets) = (ring(&[("c2", 3), ("c1", 1)]), ring(&[("s2", 4), ("s1", 2)]));
    let resealed = paygate_common::reseal::run(&pool, &cards, &secrets)
        .await
        .unwrap();
    assert_eq!(resealed.cards, 1);
    assert!(resealed.secrets >= 1, "{resealed:?}");
    let again = paygate_common::reseal::run(&pool, &cards, &secrets)
        .await
        .unwrap();
    assert_eq!((again.cards, again.secrets), (0, 0), "nothing left to move");

    // The old keys leave the rings: everything still opens.
    let (cards, secrets) = (ring(&[("c2", 3)]), ring(&[("s2", 4)]));
    let (key_id, ciphertext): (String, Vec<u8>) =
        sqlx::query_as("SELECT card_key_id, card_ciphertext FROM transaction")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        cards
            .open(&key_id, &ciphertext)
            .unwrap()
            .number
            .expose_secret(),
        "4242424242424242"
    );
    let secret: Sealed = sqlx::query_scalar("SELECT webhook_secret FROM merchant")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        secrets.open_secret(&secret).unwrap().expose_secret(),
        merchant.webhook_secret
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_a_plain_secret_where_a_sealed_one_belongs() {
    let settings = paygate_testkit::settings().await;
    let pool = paygate_testkit::pool(&settings).await;
    let plain = sqlx::query(
        "INSERT INTO merchant (id, name, webhook_secret) VALUES ('mer_plain', 'm', 'whsec_cGxhaW4=')",
    )
    .execute(&pool)
    .await
    .unwrap_err();
    assert!(
        plain.to_string().contains("merchant_webhook_secret_sealed"),
        "{plain}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_a_gateway_url_the_egress_policy_forbids_and_a_short_callback_secret()
{
    let api = Api::start_with(|s| {
        s.payment_processor.allow_http = false;
        s.payment_processor.allow_loopback = false;
        s.payment_processor.allow_private = false;
    })
    .await;
    let put = |url: &str, secret: &str| {
        api.http
            .put(format!("{}/admin/v1/gateways/acme", api.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(
                &json!({"protocol": "card", "base_url": url, "callback_secret": secret,
                          "timeout_ms": 1000, "enabled": true}),
            )
            .send()
    };
    let long = "a-long-enough-callback-secret";
    for (url, why) in [
        ("http://acquirer.example/card", "https"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::ffff:10.0.0.1]/", "private"),
        ("https://127.0.0.1:8090/card", "loopback"),
        // A name is judged by what it resolves to now (localhost: /etc/hosts, no DNS).
        ("https://localhost:8090/card", "loopback"),
        ("https://user:pw@acquirer.example/", "password"),
    ] {
        let response = put(url, long).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{url}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["field"], "base_url", "{url}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{url}: {message}");
    }
    for secret in ["", "short-secret"] {
        let response = put("https://acquirer.example/card", secret).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["field"], "callback_secret", "{error}");
    }
    assert_eq!(api.count("gateway").await, 0, "nothing was stored");
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_production_the_api_refuses_to_start_with_the_published_development_keys() {
    let mut settings = paygate_testkit::settings().await;
    settings.environment = Environment::Production;
    let error = match paygate_api::Application::build(settings).await {
        Ok(_) => panic!("the api started with development keys in production"),
        Err(error) => format!("{error:#}"),
    };
    for setting in ["cards.keys", "secrets.keys", "PAYGATE__ENVIRONMENT"] {
        assert!(error.contains(setting), "{setting}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_production_the_dispatcher_needs_no_card_ring_and_the_payment_processor_refuses_a_published_one(
) {
    let mut settings = paygate_testkit::settings().await;
    settings.environment = Environment::Production;
    let own = format!(
        "s9:{}",
        base64::engine::general_purpose::STANDARD.encode([9u8; 32])
    );
    settings.secrets.keys = vec![own.into()];
    let dispatcher = &mut settings.callback_dispatcher;
    (dispatcher.allow_http, dispatcher.allow_loopback) = (false, false);
    let processor = &mut settings.payment_processor;
    (processor.allow_http, processor.allow_loopback) = (false, false);
    // cards.keys still holds the published development key: the dispatcher never
    // loads the card ring, so it starts; the payment-processor opens cards, so it
    // does not.
    let dispatcher = paygate_callback_dispatcher::Application::build(settings.clone()).await;
    assert!(dispatcher.is_ok(), "{:#}", dispatcher.err().unwrap());
    drop(dispatcher);
    let error = match paygate_payment_processor::Application::build(settings).await {
        Ok(_) => panic!("the payment-processor started with a published card key"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("cards.keys"), "{error}");
    assert!(!error.contains("secrets.keys"), "{error}");
}
