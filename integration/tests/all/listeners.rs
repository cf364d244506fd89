//! Every listener is bounded: a client that never finishes its headers or trickles its
//! body is cut off after the timeout, connections past the limit wait for one to
//! close, `/metrics` is served on a port of its own with labels from known values
//! only, the admin API and console can be moved to an internal listener, and `/docs`
//! carries a strict Content-Security-Policy.

use std::time::{Duration, Instant};

use paygate_testkit::{Running, ADMIN_TOKEN};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// An api with `tweak` applied to its settings, and its ports.
struct Listening {
    port: u16,
    metrics_port: u16,
    admin_port: Option<u16>,
    running: Running,
}

async fn start(tweak: impl FnOnce(&mut paygate_common::Settings)) -> Listening {
    let mut settings = paygate_testkit::settings().await;
    tweak(&mut settings);
    let app = paygate_api::Application::build(settings).await.unwrap();
    let (port, metrics_port, admin_port) = (app.port(), app.metrics_port(), app.admin_port());
    Listening {
        port,
        metrics_port,
        admin_port,
        running: Running::spawn(|s| app.run(s)),
    }
}

/// Reads until the server closes the connection (or `limit` passes); what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off_after_the_timeout() {
    let api = start(|s| s.http.header_read_timeout_ms = 500).await;
    for port in [api.port, api.metrics_port] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let started = Instant::now();
        stream
            .write_all(b"POST /v1/deposits HTTP/1.1\r\nHost: paygate\r\nX-Slow: ")
            .await
            .unwrap();
        let closed = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(
            closed.is_some(),
            "port {port}: a half-sent head still holds its connection after 5 s"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "port {port}: closed after {took:?}, not at the 500 ms timeout"
        );
    }
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_slower_than_the_timeout_is_answered_408_and_its_connection_closed() {
    let api = start(|s| s.api.body_read_timeout_ms = 600).await;
    let mut stream = TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(
            b"POST /v1/deposits HTTP/1.1\r\nHost: paygate\r\nContent-Type: application/json\r\n\
              Authorization: Bearer whatever\r\nContent-Length: 100\r\n\r\n",
        )
        .await
        .unwrap();
    // One byte every 100 ms: it would take 10 s to send the whole body.
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    trickle.abort();
    assert!(
        read.is_ok(),
        "the trickling client still holds its connection after 5 s"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"body_timeout""#), "{answer}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "answered after {took:?}, not at the 600 ms body timeout"
    );
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_until_one_closes() {
    let api = start(|s| s.http.max_connections = 2).await;
    let first = TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
    let _second = TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
    // Both are held (nothing sent yet, within the header timeout).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut third = TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: paygate\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let waiting = read_until_closed(&mut third, Duration::from_millis(700)).await;
    assert_eq!(
        waiting, None,
        "a third connection was served past the limit of 2"
    );

    drop(first);
    let answer = read_until_closed(&mut third, Duration::from_secs(5))
        .await
        .expect("the waiting connection is served once one closes");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_a_port_of_their_own_and_a_made_up_method_is_counted_as_other() {
    let api = start(|_| {}).await;
    let http = reqwest::Client::new();
    let on_api = http
        .get(format!("http://127.0.0.1:{}/metrics", api.port))
        .send()
        .await
        .unwrap();
    assert_eq!(
        on_api.status(),
        StatusCode::NOT_FOUND,
        "/metrics is not public"
    );

    let method = reqwest::Method::from_bytes(b"XYZZY").unwrap();
    for _ in 0..3 {
        let response = http
            .request(
                method.clone(),
                format!("http://127.0.0.1:{}/healthz", api.port),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
    let page = http
        .get(format!("http://127.0.0.1:{}/metrics", api.metrics_port))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(!page.contains("XYZZY"), "a made-up method became a series");
    let counted = paygate_common::metrics::scrape::sample(
        &page,
        "paygate_http_request_duration_seconds_count",
        &[("method", "other"), ("status", "405")],
    );
    assert!(counted.unwrap_or(0.0) >= 3.0, "{page}");
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_listener_the_admin_api_and_console_are_served_there_only() {
    let api = start(|s| s.admin.listen = "127.0.0.1:0".to_owned()).await;
    let admin_port = api.admin_port.expect("an admin listener");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |port: u16, path: &str| {
        http.get(format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    assert_eq!(
        get(admin_port, "/admin/v1/gateways")
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        get(admin_port, "/console/login").await.unwrap().status(),
        StatusCode::OK
    );
    for path in ["/admin/v1/gateways", "/console/login", "/console"] {
        let response = get(api.port, path).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{path} on the public port"
        );
    }
    // The public port still serves merchants, probes and the documents.
    for path in ["/healthz", "/openapi.json"] {
        assert_eq!(
            get(api.port, path).await.unwrap().status(),
            StatusCode::OK,
            "{path}"
        );
    }
    assert_eq!(
        get(admin_port, "/v1/transactions").await.unwrap().status(),
        StatusCode::NOT_FOUND,
        "the merchant API is not on the admin port"
    );
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_carries_a_strict_csp_and_runs_no_inline_script() {
    let api = start(|_| {}).await;
    let http = reqwest::Client::new();
    let page = http
        .get(format!("http://127.0.0.1:{}/docs/", api.port))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(
            csp.split(';').any(|d| d.trim() == directive),
            "{directive} missing from {csp}"
        );
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    // Every script is a file of this origin: none has a body the CSP would refuse.
    for (at, _) in html.match_indices("<script") {
        let tag = &html[at..];
        let end = tag.find("</script>").unwrap();
        let (open, inner) = tag[..end].split_once('>').unwrap();
        assert!(open.contains(" src=\""), "an inline script: {open}");
        assert!(inner.trim().is_empty(), "a script with a body: {inner}");
    }
    assert!(!html.contains(" style=\""), "an inline style attribute");
    // The page's own files carry the policy too.
    let initializer = http
        .get(format!(
            "http://127.0.0.1:{}/docs/swagger-initializer.js",
            api.port
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(initializer.status(), StatusCode::OK);
    assert!(initializer
        .headers()
        .contains_key("content-security-policy"));
    api.running.stop().await.unwrap();
}
