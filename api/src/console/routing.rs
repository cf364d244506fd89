//! The routing page (`/console/routing`): each route set's policy — its strategy and
//! the rules that pick candidates — editable as the JSON the admin API takes
//! (`PUT /admin/v1/routing/{route_set}`), checked by the same code, and the recorded
//! changes (who, when, what).

use axum::extract::State;
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use paygate_common::gateway::policy::{self, RoutingPolicy};

use super::error::{ConsoleError, Result};
use super::layout::{self, Section};
use super::redirect;
use super::session::Operator;
use crate::admin::interventions::Actor;
use crate::AppState;

/// `GET /console/routing`.
pub async fn show(State(state): State<AppState>, operator: Operator) -> Result<Markup> {
    let (policies, changes) = tokio::try_join!(
        policy::all_policies(&state.pool),
        policy::changes(&state.pool, 20),
    )?;
    let example = serde_json::to_string_pretty(&RoutingPolicy::default()).unwrap_or_default();
    let body = html! {
        h1 { "Routing strategies and rules" }
        p.muted { "A route set is a country's routes, or the default routes (*). Its rules are tried in order; the first that matches a payment picks its candidates, which the strategy then orders: priority (the routing table's order), success_rate (best recent authorization rate, with an exploration share) or volume_split (percentages). A set without a policy routes by priority." }
        @for p in &policies {
            @let json = serde_json::to_string_pretty(&p.policy).unwrap_or_default();
            section.policy id={ "policy-" (p.route_set) } {
                h2 { "Route set " (p.route_set) " · " (p.policy.strategy.as_str()) }
                p.muted { "changed " (p.updated_at.format("%Y-%m-%d %H:%M:%S")) " by " (p.updated_by) }
                ol { @for rule in &p.policy.rules { li { (rule.summary()) } } }
                (editor(&operator, &p.route_set, &json))
            }
        }
        h2 { "Set a policy" }
        (editor(&operator, "", &example))
        h2 { "Changes" }
        table.changes {
            thead { tr { th { "when (UTC)" } th { "route set" } th { "who" } th { "became" } } }
            tbody {
                @for c in &changes {
                    tr {
                        td { (c.changed_at.format("%Y-%m-%d %H:%M:%S")) }
                        td { (c.route_set) }
                        td { (c.actor) }
                        td { @if let Some(p) = &c.policy { code { (p.to_string()) } } @else { "removed" } }
                    }
                }
            }
        }
    };
    Ok(layout::page(&operator, Section::Routing, "Routing", body))
}

fn editor(operator: &Operator, route_set: &str, json: &str) -> Markup {
    html! {
        form method="post" action="/console/routing" {
            input type="hidden" name="csrf" value=(operator.csrf);
            label { "route set " input type="text" name="route_set" value=(route_set) placeholder="* or DE" required; }
            textarea name="policy" rows="10" cols="80" { (json) }
            button type="submit" { "Save" }
        }
    }
}

/// The policy form.
#[derive(Debug, Deserialize)]
pub struct PolicyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    route_set: String,
    #[serde(default)]
    policy: String,
}

/// `POST /console/routing`: the same checks as the admin API; the change is recorded
/// as the signed-in operator's.
pub async fn save(
    State(state): State<AppState>,
    operator: Operator,
    Form(form): Form<PolicyForm>,
) -> Result<Response> {
    operator.check_csrf(&form.csrf)?;
    let actor = Actor::console(&operator.name)?;
    let route_set = form.route_set.trim();
    policy::check_route_set(route_set).map_err(|e| ConsoleError::Invalid(e.to_string()))?;
    let policy: RoutingPolicy = serde_json::from_str(&form.policy)
        .map_err(|e| ConsoleError::Invalid(format!("policy: {e}")))?;
    let gateways = paygate_common::gateway::all(&state.pool).await?;
    policy
        .check(&|code| gateways.iter().any(|g| g.code == code))
        .map_err(|e| ConsoleError::Invalid(e.to_string()))?;
    let mut tx = state.pool.begin().await?;
    policy::store_policy(&mut tx, route_set, &policy, actor.as_str()).await?;
    tx.commit().await?;
    tracing::info!(
        route_set,
        actor = actor.as_str(),
        "routing policy changed from the console"
    );
    Ok(redirect("/console/routing"))
}
