//! Merchants and their API keys, with a button that revokes a key at once: the
//! operator's answer to a leaked key. It goes through the same function as the admin
//! API, and the key table's trigger tells every api replica to drop the key now.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};

use paygate_common::domain::MerchantId;

use super::error::{ConsoleError, Result};
use super::layout::{self, status_tag, Section};
use super::session::Operator;
use super::{redirect, CsrfOnly};
use crate::admin::merchants::{self, ApiKeyView};
use crate::AppState;

/// Merchants shown at most, newest first.
const SHOWN: i64 = 200;

/// `GET /console/merchants`.
pub async fn show(State(state): State<AppState>, operator: Operator) -> Result<Markup> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, name FROM merchant ORDER BY created_at DESC, id DESC LIMIT $1")
            .bind(SHOWN)
            .fetch_all(&state.pool)
            .await?;
    let mut shown: Vec<(String, String, Vec<ApiKeyView>)> = Vec::with_capacity(rows.len());
    for (id, name) in rows {
        let Ok(merchant) = id.parse::<MerchantId>() else {
            continue;
        };
        let keys = merchants::api_keys(&state.pool, &merchant)
            .await?
            .unwrap_or_default();
        shown.push((id, name, keys));
    }
    let body = html! {
        h1 { "Merchants" }
        p.muted { "A key revoked here stops working at once, on every api replica. To give the merchant a new one, rotate through the admin API." }
        table.merchants {
            thead { tr { th { "merchant" } th { "API key" } th { "state" } th { "created" } th {} } }
            tbody {
                @for (id, name, keys) in &shown {
                    @for (n, key) in keys.iter().enumerate() {
                        tr id={ "key-" (key.id) } {
                            td { @if n == 0 { strong { (name) } br; code.muted { (id) } br; a href={ "/console/merchants/" (id) "/endpoints" } { "webhook endpoints" } } }
                            td { code { (key.prefix) "…" } br; span.muted { (key.id) } }
                            td { (status_tag(key.state)) }
                            td { (key.created_at) }
                            td {
                                @if key.state == "live" || key.state == "expiring" {
                                    form.inline method="post" action={ "/console/merchants/" (id) "/api-keys/" (key.id) "/revoke" } {
                                        input type="hidden" name="csrf" value=(operator.csrf);
                                        button.danger type="submit" { "Revoke now" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(
        &operator,
        Section::Merchants,
        "Merchants",
        body,
    ))
}

/// `POST /console/merchants/{id}/api-keys/{key_id}/revoke`.
pub async fn revoke(
    State(state): State<AppState>,
    operator: Operator,
    Path((id, key_id)): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Result<Response> {
    operator.check_csrf(&form.csrf)?;
    let merchant: MerchantId = id.parse().map_err(|_| ConsoleError::NotFound("merchant"))?;
    merchants::revoke_api_key(&state.pool, &merchant, &key_id)
        .await?
        .ok_or(ConsoleError::NotFound("API key"))?;
    tracing::info!(merchant_id = %merchant, key_id, operator = %operator.name, "API key revoked from the console");
    Ok(redirect("/console/merchants"))
}
