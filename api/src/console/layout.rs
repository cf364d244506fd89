//! The page every console view shares (navigation, sign-out, htmx and the stylesheet),
//! the security headers every console answer carries, and small formatting helpers.
//!
//! The Content-Security-Policy allows scripts, styles, images and requests from this
//! origin only, and no inline script or style at all: the pages carry none (colours
//! and sizes are classes in `console.css`; the chart is SVG with classes and
//! presentation attributes). htmx is told by its `<meta>` config not to inject its
//! indicator style and never to evaluate code from attributes.

use axum::extract::Request;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use super::assets::{CSS_PATH, HTMX_PATH};
use super::session::Operator;

/// The console's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// htmx's configuration: no injected `<style>` (the CSP would refuse it), no `eval`,
/// no scripts from swapped content.
const HTMX_CONFIG: &str = r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0}"#;

/// Middleware: the security headers on every console answer.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/console/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !is_asset {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The navigation's sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Transactions,
    Gateways,
    Routing,
    Merchants,
    Attention,
    Settlement,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="htmx-config" content=(HTMX_CONFIG);
            title { (title) " · Paygate console" }
            link rel="stylesheet" href=(CSS_PATH);
            script src=(HTMX_PATH) defer {}
        }
    }
}

/// A page for a signed-in operator. `hx-boost` turns links and forms into in-page
/// swaps when htmx has loaded; without it every link and form still works.
pub fn page(operator: &Operator, section: Section, title: &str, body: Markup) -> Markup {
    let nav = [
        (Section::Overview, "/console", "Overview"),
        (
            Section::Transactions,
            "/console/transactions",
            "Transactions",
        ),
        (
            Section::Gateways,
            "/console/gateways",
            "Gateways and routes",
        ),
        (Section::Routing, "/console/routing", "Routing"),
        (Section::Merchants, "/console/merchants", "Merchants"),
        (Section::Attention, "/console/attention", "Needs a human"),
        (Section::Settlement, "/console/settlement", "Reconciliation"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body hx-boost="true" {
                header.top {
                    a.brand href="/console" { "Paygate" }
                    nav {
                        @for (s, href, label) in nav {
                            a.active[s == section] href=(href) { (label) }
                        }
                    }
                    form.signout method="post" action="/console/logout" {
                        input type="hidden" name="csrf" value=(operator.csrf);
                        button type="submit" { "Sign out" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page with no navigation: sign-in and errors.
pub fn bare(title: &str, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                main.narrow {
                    h1 { (title) }
                    p.notice { (message) }
                    p { a href="/console" { "Back to the console" } }
                }
            }
        }
    }
}

/// The sign-in page.
pub fn sign_in(nonce: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body {
                main.narrow {
                    h1 { "Paygate console" }
                    @if let Some(error) = error { p.notice.bad { (error) } }
                    form.signin method="post" action="/console/login" {
                        input type="hidden" name="csrf" value=(nonce);
                        label for="token" { "Admin token" }
                        input id="token" type="password" name="token" autocomplete="current-password" required autofocus;
                        label for="name" { "Your name " span.muted { "(recorded with what you do to payments)" } }
                        input id="name" type="text" name="name" autocomplete="name" maxlength="100";
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// A time as operators read it: UTC, to the millisecond.
pub fn at(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// A status as a coloured tag.
pub fn status_tag(status: &str) -> Markup {
    html! { span class={ "tag " (status) } { (status) } }
}

/// How long ago, roughly.
pub fn ago(at: DateTime<Utc>) -> String {
    let seconds = (Utc::now() - at).num_seconds().max(0);
    match seconds {
        0..=89 => format!("{seconds} s ago"),
        90..=5399 => format!("{} min ago", seconds / 60),
        _ => format!("{} h ago", seconds / 3600),
    }
}
