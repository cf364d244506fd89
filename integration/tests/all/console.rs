//! The operator console: nothing without a session, no state-changing form without its
//! CSRF token, a strict Content-Security-Policy on every answer, and pages that load
//! nothing from anywhere but the api itself. A payment's whole life is on its page, and
//! the replay button sends its webhook again. The browser test (Selenium driving
//! Chromium) runs when `scripts/test` finds a browser.

use std::time::Duration;

use paygate_testkit::{eventually, route_everything_to_simulator, Suite, ADMIN_TOKEN};
use reqwest::redirect::Policy;
use reqwest::StatusCode;

use crate::api::Api;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// A browser's view of the console: cookies kept by hand, redirects not followed.
pub(crate) struct Browser {
    url: String,
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
}

impl Browser {
    pub(crate) fn new(url: &str) -> Self {
        Self::from_address(url, "127.0.0.1")
    }

    /// A browser whose connections come from `address` (any of 127.0.0.0/8 on loopback).
    pub(crate) fn from_address(url: &str, address: &str) -> Self {
        Browser {
            url: url.to_owned(),
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .local_address(Some(address.parse().unwrap()))
                .build()
                .unwrap(),
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for set in response.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, _) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            if !value.is_empty() && !set.contains("Max-Age=0") {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    async fn get(&mut self, path: &str) -> reqwest::Response {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        response
    }

    pub(crate) async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        response
    }

    pub(crate) async fn page(&mut self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.text().await.unwrap()
    }

    /// Signs in through the form, as a person would.
    async fn sign_in(&mut self) {
        self.sign_in_as("").await;
    }

    /// Signs in through the form under `name` (blank: none given).
    pub(crate) async fn sign_in_as(&mut self, name: &str) {
        let form = self.page("/console/login").await;
        let nonce = hidden(&form, "csrf");
        let response = self
            .post(
                "/console/login",
                &[("token", ADMIN_TOKEN), ("name", name), ("csrf", &nonce)],
            )
            .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert!(self.cookies.iter().any(|(n, _)| n == "paygate_console"));
    }
}

/// The value of the first hidden input named `name`.
pub(crate) fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"));
    let rest = &html[at + marker.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// Every URL a page makes the browser load or go to: `src`, `href` and `action`.
fn references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in [
        " src=\"",
        " href=\"",
        " action=\"",
        " hx-get=\"",
        " hx-post=\"",
    ] {
        for (at, _) in html.match_indices(attribute) {
            let rest = &html[at + attribute.len()..];
            found.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    found
}

/// How many webhooks of `kind` about `id` the merchant received.
fn webhooks_of(suite: &Suite, id: &str, kind: &str) -> usize {
    suite
        .webhooks
        .received()
        .iter()
        .map(|r| r.json())
        .filter(|w| w["type"] == kind && w["data"]["id"] == id)
        .count()
}

const PAGES: [&str; 4] = [
    "/console",
    "/console/transactions",
    "/console/gateways",
    "/console/attention",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_nothing_and_changes_nothing_without_a_session() {
    let api = Api::start().await;
    route_everything_to_simulator(&api.pool, "http://127.0.0.1:9").await;
    let mut browser = Browser::new(&api.url);
    let forged = "v1.99999999999.00000000000000000000000000000000.".to_owned() + &"0".repeat(64);

    for cookie in [None, Some(forged.as_str())] {
        browser.cookies.clear();
        if let Some(cookie) = cookie {
            browser
                .cookies
                .push(("paygate_console".into(), cookie.into()));
        }
        for path in PAGES
            .iter()
            .copied()
            .chain(["/console/transactions/txn_0198c9b2a4e07c3f9d2a61b5e8f4c0d1"])
        {
            let response = browser.get(path).await;
            assert_eq!(response.status(), StatusCode::SEE_OTHER, "GET {path}");
            assert_eq!(response.headers()["location"], "/console/login");
            let body = response.text().await.unwrap();
            assert!(!body.contains("simjson"), "{path} showed data: {body}");
        }
        let response = browser
            .post("/console/gateways/simjson/switch", &[("enabled", "false")])
            .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()["location"], "/console/login");
    }
    let enabled: bool = sqlx::query_scalar("SELECT enabled FROM gateway WHERE code = 'simjson'")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert!(enabled, "a POST without a session disabled a gateway");

    // The sign-in form takes only the admin token.
    browser.cookies.clear();
    let form = browser.page("/console/login").await;
    let nonce = hidden(&form, "csrf");
    let wrong = browser
        .post("/console/login", &[("token", "not-it"), ("csrf", &nonce)])
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(!browser.cookies.iter().any(|(n, _)| n == "paygate_console"));
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_sets_an_http_only_strict_cookie_and_signing_out_clears_it() {
    let api = Api::start().await;
    let mut browser = Browser::new(&api.url);
    let form = browser.page("/console/login").await;
    let nonce = hidden(&form, "csrf");

    // A sign-in posted from elsewhere carries no matching login nonce.
    let mut stranger = Browser::new(&api.url);
    let refused = stranger
        .post(
            "/console/login",
            &[("token", ADMIN_TOKEN), ("csrf", &nonce)],
        )
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let response = browser
        .post(
            "/console/login",
            &[("token", ADMIN_TOKEN), ("csrf", &nonce)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("paygate_console="))
        .unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP here: {cookie}");
    let overview = browser.page("/console").await;
    assert!(overview.contains("Payments per minute"));

    // Behind a TLS proxy the cookie is Secure.
    let tls = browser
        .http
        .get(format!("{}/console/login", api.url))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let login_cookie = tls.headers()["set-cookie"].to_str().unwrap();
    assert!(login_cookie.contains("; Secure"), "{login_cookie}");

    let csrf = hidden(&overview, "csrf");
    let out = browser.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(!browser.cookies.iter().any(|(n, _)| n == "paygate_console"));
    assert_eq!(
        browser.get("/console").await.status(),
        StatusCode::SEE_OTHER
    );
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_without_its_sessions_csrf_token_is_refused_and_changes_nothing() {
    let api = Api::start().await;
    route_everything_to_simulator(&api.pool, "http://127.0.0.1:9").await;
    let mut browser = Browser::new(&api.url);
    browser.sign_in().await;
    let page = browser.page("/console/gateways").await;
    let csrf = hidden(&page, "csrf");
    let enabled = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, bool>("SELECT enabled FROM gateway WHERE code = 'simjson'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };

    let other_session = {
        let mut other = Browser::new(&api.url);
        other.sign_in().await;
        hidden(&other.page("/console/gateways").await, "csrf")
    };
    assert_ne!(other_session, csrf, "each session has its own token");
    for form in [
        vec![("enabled", "false")],
        vec![("enabled", "false"), ("csrf", "")],
        vec![("enabled", "false"), ("csrf", other_session.as_str())],
    ] {
        let response = browser
            .post("/console/gateways/simjson/switch", &form)
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{form:?}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(enabled(api.pool.clone()).await, "{form:?} changed it");
    }
    let replay = browser
        .post("/console/deliveries/whd_x/replay", &[("transaction", "x")])
        .await;
    assert_eq!(replay.status(), StatusCode::FORBIDDEN);
    let out = browser.post("/console/logout", &[]).await;
    assert_eq!(out.status(), StatusCode::FORBIDDEN);

    // With it, the switch works.
    let response = browser
        .post(
            "/console/gateways/simjson/switch",
            &[("enabled", "false"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(!enabled(api.pool.clone()).await);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_page_sends_a_strict_csp_and_loads_only_from_the_api_itself() {
    let suite = Suite::start().await;
    let id = suite.deposit("12.00").await;
    eventually("the deposit's webhook", Duration::from_secs(30), || async {
        (webhooks_of(&suite, &id, "transaction.completed") > 0).then_some(())
    })
    .await;
    let mut browser = Browser::new(&suite.api_url);

    let login = browser.get("/console/login").await;
    assert_eq!(login.headers()["content-security-policy"], CSP);
    browser.sign_in().await;

    let detail = format!("/console/transactions/{id}");
    let mut seen_assets = Vec::new();
    for path in PAGES.iter().copied().chain([detail.as_str()]) {
        let response = browser.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-security-policy"], CSP, "{path}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let html = response.text().await.unwrap();
        assert!(
            !html.contains(" style=") && !html.contains("<style"),
            "inline style on {path}"
        );
        for (at, _) in html.match_indices("<script") {
            assert!(
                html[at..].starts_with("<script src=\"/"),
                "inline script on {path}"
            );
        }
        for reference in references(&html) {
            assert!(
                (reference.starts_with('/') && !reference.starts_with("//"))
                    || reference.starts_with('#'),
                "{path} refers to {reference}, not this api"
            );
            if reference.starts_with("/console/assets/") {
                seen_assets.push(reference);
            }
        }
    }
    seen_assets.sort();
    seen_assets.dedup();
    assert_eq!(
        seen_assets.len(),
        2,
        "htmx and the stylesheet: {seen_assets:?}"
    );
    for asset in &seen_assets {
        let response = browser.get(asset).await;
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert_eq!(response.headers()["content-security-policy"], CSP);
        let body = response.bytes().await.unwrap();
        if asset.contains("htmx") {
            assert_eq!(
                body.as_ref(),
                include_bytes!("../../../api/assets/htmx/htmx.min.js"),
                "the committed htmx, byte for byte"
            );
        } else {
            assert!(
                !String::from_utf8_lossy(&body).contains("url("),
                "the stylesheet loads nothing"
            );
        }
    }
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payments_page_shows_its_whole_life_and_replay_sends_its_webhook_again() {
    let suite = Suite::start().await;
    let id = suite.deposit("14.00").await;
    eventually("the completed webhook", Duration::from_secs(30), || async {
        (webhooks_of(&suite, &id, "transaction.completed") > 0).then_some(())
    })
    .await;
    let mut browser = Browser::new(&suite.api_url);
    browser.sign_in().await;

    // The list finds it by status, newest first.
    let list = browser.page("/console/transactions?status=completed").await;
    assert!(list.contains(&id), "{list}");

    let page = browser.page(&format!("/console/transactions/{id}")).await;
    for expected in [
        "transaction.created",
        "gateway.attempted",
        "transaction.processing",
        "transaction.completed",
        "accepted",                                   // the gateway attempt
        "<span class=\"tag applied\">applied</span>", // the callback
        "Replay webhook",
    ] {
        assert!(page.contains(expected), "no {expected} on the page: {page}");
    }
    // A webhook attempt per status, once the dispatcher has recorded both.
    let page_url = format!("/console/transactions/{id}");
    let mut page = page;
    for _ in 0..100 {
        if page.matches("<tr class=\"attempt\">").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        page = browser.page(&page_url).await;
    }
    let before = page.matches("<tr class=\"attempt\">").count();
    assert_eq!(
        before, 2,
        "an attempt for processing and one for completed: {page}"
    );

    // Replay the completed webhook: its delivery's form is the last on the page.
    let action_at = page.rfind("/replay\"").unwrap();
    let action_start = page[..action_at].rfind("action=\"").unwrap() + "action=\"".len();
    let action = format!("{}/replay", &page[action_start..action_at]);
    let csrf = hidden(&page, "csrf");
    let received = webhooks_of(&suite, &id, "transaction.completed");
    let response = browser
        .post(&action, &[("csrf", &csrf), ("transaction", &id)])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()["location"].to_str().unwrap(),
        format!("/console/transactions/{id}#webhooks")
    );
    eventually("the replayed webhook", Duration::from_secs(30), || async {
        (webhooks_of(&suite, &id, "transaction.completed") > received).then_some(())
    })
    .await;
    // The dispatcher records the attempt after the merchant answered: wait for the page.
    let mut attempts = 0;
    for _ in 0..100 {
        attempts = browser
            .page(&page_url)
            .await
            .matches("<tr class=\"attempt\">")
            .count();
        if attempts > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(attempts, before + 1, "one new attempt on the page");
    suite.stop().await;
}

/// Sends a German deposit: routed to simsoap first, simjson as its fallback.
async fn german_deposit(suite: &Suite, amount: &str) -> String {
    suite
        .deposit_with(&serde_json::json!({"user_id": "u-de", "amount": amount, "currency": "EUR", "country": "DE"}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "drives Chromium with Selenium: scripts/test runs it when a browser is installed"]
async fn browser_an_operator_follows_a_payment_reroutes_around_a_gateway_and_replays_a_webhook() {
    let python = std::env::var("PAYGATE_SELENIUM_PYTHON")
        .expect("PAYGATE_SELENIUM_PYTHON names the virtualenv's python with selenium");
    let suite = Suite::start().await;
    let completed = german_deposit(&suite, "18.00").await;
    eventually("the completed webhook", Duration::from_secs(30), || async {
        (webhooks_of(&suite, &completed, "transaction.completed") > 0).then_some(())
    })
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console.py");
    let mut command = tokio::process::Command::new(python);
    command
        .arg(script)
        .env("CONSOLE_URL", &suite.api_url)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("MERCHANT_KEY", &suite.merchant.api_key)
        .env("COMPLETED_ID", &completed)
        .kill_on_drop(true);
    if let Ok(dir) = std::env::var("PAYGATE_BROWSER_SCREENSHOTS") {
        command.arg("--screenshots").arg(dir);
    }
    let status = tokio::time::timeout(Duration::from_secs(180), command.status())
        .await
        .expect("the browser test finishes within three minutes")
        .unwrap();
    assert!(status.success(), "the browser test failed: {status}");
    let gateway: Option<String> = sqlx::query_scalar(
        "SELECT gateway FROM transaction WHERE id <> $1 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(&completed)
    .fetch_one(&suite.pool)
    .await
    .unwrap();
    assert_eq!(
        gateway.as_deref(),
        Some("simjson"),
        "the browser's payment took the fallback"
    );
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_attempts_are_throttled_per_address_and_past_the_limit_even_the_token_is_refused() {
    let api = Api::start_with(|s| s.admin.sign_in_attempts = 3).await;
    let mut guesser = Browser::new(&api.url);
    let form = guesser.page("/console/login").await;
    let nonce = hidden(&form, "csrf");
    for _ in 0..3 {
        let wrong = guesser
            .post("/console/login", &[("token", "guess"), ("csrf", &nonce)])
            .await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    }
    // The fourth attempt is not even compared: the right token is refused too.
    let throttled = guesser
        .post(
            "/console/login",
            &[("token", ADMIN_TOKEN), ("csrf", &nonce)],
        )
        .await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(
        throttled.headers()["content-security-policy"],
        CSP,
        "the refusal is a console page"
    );
    assert!(!guesser.cookies.iter().any(|(n, _)| n == "paygate_console"));

    // An operator at another address signs in as usual.
    let mut operator = Browser::from_address(&api.url, "127.0.0.2");
    operator.sign_in_as("Ada").await;
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_routing_page_sets_a_policy_as_the_signed_in_operator_and_the_payment_page_says_why_its_gateway_was_chosen(
) {
    let suite = Suite::start().await;
    let mut browser = Browser::new(&suite.api_url);
    browser.sign_in_as("Ada").await;
    let page = browser.page("/console/routing").await;
    let csrf = hidden(&page, "csrf");

    // A split that does not sum to 100 is refused and changes nothing.
    let refused = browser
        .post(
            "/console/routing",
            &[
                ("csrf", csrf.as_str()),
                ("route_set", "DE"),
                (
                    "policy",
                    r#"{"strategy": "volume_split", "splits": {"simjson": 50}}"#,
                ),
            ],
        )
        .await;
    assert!(refused.status().is_client_error(), "{}", refused.status());
    let changes = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (String, String)>("SELECT route_set, actor FROM routing_change")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    assert!(changes(suite.pool.clone()).await.is_empty());

    browser
        .post(
            "/console/routing",
            &[
                ("csrf", csrf.as_str()),
                ("route_set", "DE"),
                (
                    "policy",
                    r#"{"rules": [{"max_amount": "50.00", "gateways": ["simjson"]}]}"#,
                ),
            ],
        )
        .await;
    assert_eq!(
        changes(suite.pool.clone()).await,
        [("DE".to_owned(), "console: Ada".to_owned())]
    );
    let page = browser.page("/console/routing").await;
    assert!(page.contains("amount ..50.00 → simjson"), "{page}");

    tokio::time::sleep(Duration::from_millis(700)).await;
    let id = suite
        .deposit_with(&serde_json::json!({"user_id": "u-1", "amount": "20.00", "currency": "EUR", "country": "DE"}))
        .await;
    eventually(
        "the attempt at simjson",
        Duration::from_secs(30),
        || async {
            (paygate_testkit::attempted_gateways(&suite.pool, &id).await == ["simjson"])
                .then_some(())
        },
    )
    .await;
    let page = browser.page(&format!("/console/transactions/{id}")).await;
    for expected in [
        "why this gateway",
        "priority (route set DE)",
        "rule 1: amount ..50.00 → simjson",
    ] {
        assert!(page.contains(expected), "no {expected} on the page: {page}");
    }
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_adds_tests_switches_off_and_deletes_a_merchants_endpoint_from_the_console() {
    let api = Api::start().await;
    let receiver = paygate_testkit::WebhookReceiver::start().await;
    let merchant = paygate_api::merchants::create(
        &api.pool,
        &paygate_testkit::keys(),
        "m",
        Some(&receiver.url),
        None,
    )
    .await
    .unwrap();
    let endpoints_of = |pool: sqlx::PgPool, merchant: String| async move {
        sqlx::query_as::<_, (String, String, bool)>(
            "SELECT id, url, enabled FROM webhook_endpoint WHERE merchant_id = $1 ORDER BY created_at, id",
        )
        .bind(merchant)
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let base = format!("/console/merchants/{}/endpoints", merchant.id.as_str());
    let mut browser = Browser::new(&api.url);
    browser.sign_in().await;
    let page = browser.page(&base).await;
    let csrf = hidden(&page, "csrf");
    assert!(page.contains(&receiver.url), "the first endpoint is listed");

    let refused = browser
        .post(
            &base,
            &[
                ("csrf", &csrf),
                ("url", &receiver.url),
                ("event_types", "refund.nope"),
            ],
        )
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        endpoints_of(api.pool.clone(), merchant.id.to_string())
            .await
            .len(),
        1
    );
    let added = browser
        .post(
            &base,
            &[
                ("csrf", &csrf),
                ("url", &receiver.url),
                ("event_types", "refund.*"),
                ("rate_limit", "5"),
            ],
        )
        .await;
    assert_eq!(added.status(), StatusCode::SEE_OTHER);
    let endpoints = endpoints_of(api.pool.clone(), merchant.id.to_string()).await;
    assert_eq!(endpoints.len(), 2);
    let second = endpoints[1].0.clone();

    let tested = browser
        .post(&format!("{base}/{second}/test"), &[("csrf", &csrf)])
        .await;
    assert_eq!(tested.status(), StatusCode::SEE_OTHER);
    let location = tested.headers()["location"].to_str().unwrap().to_owned();
    let shown = browser.page(location.split('#').next().unwrap()).await;
    assert!(shown.contains("delivered (200)"), "{shown}");
    let pings: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|w| w.json()["type"] == "ping")
        .collect();
    assert_eq!(pings.len(), 1, "the button sent one signed test event");
    assert_eq!(pings[0].json()["data"]["endpoint_id"], second.as_str());

    let switched = browser
        .post(
            &format!("{base}/{second}/switch"),
            &[("csrf", &csrf), ("enabled", "false")],
        )
        .await;
    assert_eq!(switched.status(), StatusCode::SEE_OTHER);
    assert!(!endpoints_of(api.pool.clone(), merchant.id.to_string()).await[1].2);
    let deleted = browser
        .post(&format!("{base}/{second}/delete"), &[("csrf", &csrf)])
        .await;
    assert_eq!(deleted.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        endpoints_of(api.pool.clone(), merchant.id.to_string())
            .await
            .len(),
        1
    );
    api.running.stop().await.unwrap();
}
