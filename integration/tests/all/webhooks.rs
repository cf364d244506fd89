//! Merchant webhooks as a merchant sees them: signatures judged by the official
//! Standard Webhooks library across a secret rotation, secrets sealed at rest, and the
//! admin API refusing endpoints that reach internal addresses.

use std::time::Duration;

use paygate_common::secrets::Sealed;
use paygate_testkit::{eventually, json_of, Received, Suite, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::api::Api;

/// The Python that has the `standardwebhooks` package (scripts/test installs it and
/// names it in `PAYGATE_TEST_PYTHON`).
fn python() -> String {
    std::env::var("PAYGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Asks the official `standardwebhooks` library whether `webhook` verifies with
/// `secret`.
pub(crate) fn official_verdict(webhook: &Received, secret: &str) -> bool {
    const VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
given = json.load(sys.stdin)
try:
    Webhook(given["secret"]).verify(given["body"], given["headers"])
    print("verified")
except WebhookVerificationError as error:
    print("refused:", error)
"#;
    let input = json!({
        "secret": secret,
        "body": webhook.body,
        "headers": {
            "webhook-id": webhook.header("webhook-id"),
            "webhook-timestamp": webhook.header("webhook-timestamp"),
            "webhook-signature": webhook.header("webhook-signature"),
        },
    });
    let mut child = std::process::Command::new(python())
        .args(["-c", VERIFY])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the standardwebhooks check ran (scripts/test installs the library): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.trim() == "verified"
}

async fn webhooks_of(suite: &Suite, transaction: &str, count: usize) -> Vec<Received> {
    eventually(
        "the payment's webhooks",
        Duration::from_secs(60),
        || async {
            let of: Vec<Received> = suite
                .webhooks
                .received()
                .into_iter()
                .filter(|w| w.json()["data"]["id"] == transaction)
                .collect();
            (of.len() >= count).then_some(of)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_library_verifies_webhooks_under_the_old_secret_the_new_one_and_both_during_a_rotation(
) {
    let suite = Suite::start().await;
    let old = suite.merchant.webhook_secret.clone();
    let before = suite.deposit("10.00").await;
    let before = webhooks_of(&suite, &before, 2).await;

    let rotated = json_of(
        suite
            .http
            .post(format!(
                "{}/admin/v1/merchants/{}/webhook-secret",
                suite.api_url,
                suite.merchant.id.as_str()
            ))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    let new = rotated["webhook_secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    assert!(rotated["previous_secret_expires_at"].is_string());

    let after = suite.deposit("11.00").await;
    let after = webhooks_of(&suite, &after, 2).await;

    for webhook in &before {
        assert!(
            official_verdict(webhook, &old),
            "signed with the secret of its time"
        );
        assert!(!official_verdict(webhook, &new), "not with one made later");
    }
    for webhook in &after {
        assert_eq!(
            webhook.header("webhook-signature").split(' ').count(),
            2,
            "two v1 signatures during the overlap"
        );
        assert!(official_verdict(webhook, &new), "the new secret verifies");
        assert!(
            official_verdict(webhook, &old),
            "and the old one still does, during the overlap"
        );
    }
    let forged = Received {
        body: after[0].body.replace("11.00", "99.00"),
        ..after[0].clone()
    };
    assert!(
        !official_verdict(&forged, &new),
        "a changed body is refused"
    );

    let (current, previous): (Sealed, Option<Sealed>) = sqlx::query_as(
        "SELECT webhook_secret, webhook_secret_previous FROM merchant WHERE id = $1",
    )
    .bind(suite.merchant.id.as_str())
    .fetch_one(&suite.pool)
    .await
    .unwrap();
    let previous = previous.unwrap();
    for (stored, secret) in [(&current, &new), (&previous, &old)] {
        assert!(stored.is_sealed());
        let key = secret.trim_start_matches("whsec_");
        assert!(
            !stored.as_stored().contains(key),
            "no secret is stored in the clear"
        );
    }
    assert!(
        !format!("{:?}", suite.merchant).contains(&old),
        "Debug shows no secret"
    );
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_webhook_urls_that_reach_internal_addresses_with_a_422() {
    let api = Api::start_with(|s| {
        s.callback_dispatcher.allow_http = false;
        s.callback_dispatcher.allow_loopback = false;
        s.callback_dispatcher.allow_private = false;
    })
    .await;
    let merchant: Value = json_of(
        api.http
            .post(format!("{}/admin/v1/merchants", api.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": "m"})),
    )
    .await;
    let id = merchant["id"].as_str().unwrap();
    for (url, why) in [
        ("http://merchant.example/hooks", "https"),
        ("https://127.0.0.1/hooks", "loopback"),
        ("https://localhost:8443/hooks", "loopback"),
        ("https://[::1]/hooks", "loopback"),
        ("https://10.0.0.8/hooks", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[fd00::1]/hooks", "unique-local"),
        ("https://user:pass@merchant.example/hooks", "password"),
        ("ftp://merchant.example/hooks", "https"),
    ] {
        for (method, path, body) in [
            (
                reqwest::Method::PUT,
                format!("/admin/v1/merchants/{id}/webhook"),
                json!({"webhook_url": url}),
            ),
            (
                reqwest::Method::POST,
                "/admin/v1/merchants".to_owned(),
                json!({"name": "n", "webhook_url": url}),
            ),
        ] {
            let response = api
                .http
                .request(method, format!("{}{path}", api.url))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{url}");
            let error: Value = response.json().await.unwrap();
            let message = error.to_string();
            assert!(
                message.contains("webhook_url") && message.contains(why),
                "{url}: {message}"
            );
        }
    }
    let merchants: i64 = api.count("merchant").await;
    assert_eq!(merchants, 2, "the refused creations stored nothing");
    let endpoint = json_of(
        api.http
            .get(format!("{}/admin/v1/merchants/{id}/webhook", api.url))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(endpoint["webhook_url"], Value::Null, "nothing was set");
    assert_eq!(endpoint["state"], "enabled");
    api.running.stop().await.unwrap();
}

/// The `whpk_` public keys a JWKS publishes.
fn public_keys(jwks: &Value) -> Vec<String> {
    use base64::Engine as _;
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|jwk| {
            assert_eq!(jwk["crv"], "Ed25519");
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwk["x"].as_str().unwrap())
                .unwrap();
            format!(
                "whpk_{}",
                base64::engine::general_purpose::STANDARD.encode(x)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_of_an_unknown_merchant_answers_exactly_like_one_with_no_keys() {
    let api = Api::start().await;
    let merchant: String = sqlx::query_scalar("SELECT id FROM merchant")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    let answer = |id: String| {
        let url = format!("{}/.well-known/paygate/webhooks/{id}/jwks.json", api.url);
        let http = api.http.clone();
        async move {
            let response = http.get(url).send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    let known = answer(merchant).await;
    assert_eq!(known.0, StatusCode::OK);
    assert_eq!(known.1, r#"{"keys":[]}"#);
    for unknown in ["mer_00000000000000000000000000", "not-a-merchant-id"] {
        assert_eq!(answer(unknown.to_owned()).await, known, "{unknown}");
    }
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ed25519_signatures_verify_with_the_keys_published_in_the_merchants_jwks_across_a_rotation()
{
    use paygate_common::signature::ed25519;
    let suite = Suite::start().await;
    let merchant = suite.merchant.id.as_str().to_owned();
    let jwks_url = format!(
        "{}/.well-known/paygate/webhooks/{merchant}/jwks.json",
        suite.api_url
    );
    let rotate = || async {
        json_of(
            suite
                .http
                .post(format!(
                    "{}/admin/v1/merchants/{merchant}/webhook-signing-key",
                    suite.api_url
                ))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await
    };
    assert_eq!(
        json_of(suite.http.get(&jwks_url)).await["keys"],
        json!([]),
        "HMAC only until a key is given"
    );
    let first = rotate().await;
    assert!(first["jwks_url"].as_str().unwrap().ends_with(&format!(
        "/.well-known/paygate/webhooks/{merchant}/jwks.json"
    )));
    let published = public_keys(&json_of(suite.http.get(&jwks_url)).await);
    assert_eq!(published, [first["public_key"].as_str().unwrap()]);

    let verifies = |webhook: &Received, public: &str| {
        ed25519::verify(
            public,
            webhook.header("webhook-id"),
            webhook.header("webhook-timestamp").parse().unwrap(),
            webhook.body.as_bytes(),
            webhook.header("webhook-signature"),
        )
    };
    let paid = suite.deposit("12.00").await;
    for webhook in webhooks_of(&suite, &paid, 2).await {
        assert!(
            verifies(&webhook, &published[0]),
            "verified with the published key alone"
        );
        assert!(
            official_verdict(&webhook, &suite.merchant.webhook_secret),
            "the v1 signature is still there for HMAC receivers"
        );
    }

    let second = rotate().await;
    assert!(second["previous_key_expires_at"].is_string());
    let published = public_keys(&json_of(suite.http.get(&jwks_url)).await);
    assert_eq!(
        published,
        [
            second["public_key"].as_str().unwrap(),
            first["public_key"].as_str().unwrap()
        ],
        "newest first, the previous one while it still signs"
    );
    let paid = suite.deposit("13.00").await;
    for webhook in webhooks_of(&suite, &paid, 2).await {
        for public in &published {
            assert!(
                verifies(&webhook, public),
                "both keys sign during the overlap"
            );
        }
        let forged = Received {
            body: webhook.body.replace("13.00", "93.00"),
            ..webhook.clone()
        };
        assert!(!verifies(&forged, &published[0]));
    }
    suite.stop().await;
}
