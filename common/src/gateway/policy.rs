//! Routing policies as operators store them (`routing_policy`, `routing_change`): per
//! route set — the routes of one country, or the default routes (`*`) — a strategy that
//! orders the candidates (`priority`, `success_rate`, `volume_split`) and rules tried
//! first, in order, whose first match picks the candidate set.
//!
//! A policy is checked whole before it is stored ([`RoutingPolicy::check`]): every
//! gateway it names exists, a volume split sums to 100, no rule is without candidates.
//! Storing it records who changed what in `routing_change` in the same transaction, and
//! the table's trigger tells every payment-processor to reload (`paygate_routes`).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};

use super::PaymentMethod;
use crate::domain::{Country, Currency, Kind};

/// The route set of the default routes (those without a country).
pub const DEFAULT_ROUTE_SET: &str = "*";

/// How a route set orders its candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The routing table's priority order (the default).
    #[default]
    Priority,
    /// Best recent authorization rate first, with an exploration share for the others.
    SuccessRate,
    /// A random pick weighted by `splits` first, then the rest by priority.
    VolumeSplit,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Priority => "priority",
            Strategy::SuccessRate => "success_rate",
            Strategy::VolumeSplit => "volume_split",
        }
    }
}

/// A rule's payment method: a card, or anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MethodClass {
    Card,
    Other,
}

impl MethodClass {
    fn of(method: PaymentMethod) -> Self {
        match method {
            PaymentMethod::Card => MethodClass::Card,
            PaymentMethod::Plain => MethodClass::Other,
        }
    }
}

/// A rule: payments matching every condition it sets go to `gateways` (ordered by the
/// strategy). Amounts are in the payment's currency: `min_amount` included, `max_amount`
/// excluded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "0.00")]
    pub min_amount: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "100.00")]
    pub max_amount: Option<Decimal>,
    /// ISO 4217; absent: any currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// `card` or `other`; absent: any method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<MethodClass>,
    /// `deposit` or `withdrawal`; absent: both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "deposit")]
    pub kind: Option<Kind>,
    /// The candidate set, in priority order: at least one gateway code.
    pub gateways: Vec<String>,
}

impl Rule {
    /// Whether a payment of `amount` `currency`, paid by `method`, of `kind` matches.
    pub fn matches(
        &self,
        amount: Decimal,
        currency: &str,
        method: PaymentMethod,
        kind: Kind,
    ) -> bool {
        self.min_amount.is_none_or(|min| amount >= min)
            && self.max_amount.is_none_or(|max| amount < max)
            && self.currency.as_deref().is_none_or(|c| c == currency)
            && self.method.is_none_or(|m| m == MethodClass::of(method))
            && self.kind.is_none_or(|k| k == kind)
    }

    /// The rule as an operator reads it: `amount 0.00..100.00, EUR, card, deposit`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        match (self.min_amount, self.max_amount) {
            (None, None) => {}
            (min, max) => parts.push(format!(
                "amount {}..{}",
                min.map(|m| m.to_string()).unwrap_or_default(),
                max.map(|m| m.to_string()).unwrap_or_default()
            )),
        }
        if let Some(currency) = &self.currency {
            parts.push(currency.clone());
        }
        if let Some(method) = self.method {
            parts.push(match method {
                MethodClass::Card => "card".to_owned(),
                MethodClass::Other => "not card".to_owned(),
            });
        }
        if let Some(kind) = self.kind {
            parts.push(kind.to_string());
        }
        if parts.is_empty() {
            parts.push("every payment".to_owned());
        }
        format!("{} → {}", parts.join(", "), self.gateways.join(", "))
    }
}

/// A route set's policy, as an operator sends it (`PUT /admin/v1/routing/{route_set}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingPolicy {
    #[serde(default)]
    pub strategy: Strategy,
    /// `success_rate`: the share of payments (percent) sent first to a gateway other
    /// than the best, so every candidate keeps being measured.
    #[serde(default = "default_exploration")]
    pub exploration_percent: i32,
    /// `success_rate`: the outcomes a gateway's window needs before its score counts.
    #[serde(default = "default_min_sample")]
    pub min_sample: i32,
    /// `success_rate`: how many of a gateway's latest outcomes make its score.
    #[serde(default = "default_window")]
    pub window_size: i32,
    /// `volume_split`: percent of payments per gateway code, summing to 100.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub splits: BTreeMap<String, i32>,
    /// Tried in order before the strategy; the first match picks the candidates.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn default_exploration() -> i32 {
    10
}
fn default_min_sample() -> i32 {
    20
}
fn default_window() -> i32 {
    200
}

impl Default for RoutingPolicy {
    fn default() -> Self {
        RoutingPolicy {
            strategy: Strategy::Priority,
            exploration_percent: default_exploration(),
            min_sample: default_min_sample(),
            window_size: default_window(),
            splits: BTreeMap::new(),
            rules: Vec::new(),
        }
    }
}

/// Why a policy cannot be stored: the input at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    /// The input at fault, as the API's error `field` names it (`rules[2].gateways`).
    pub field: String,
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a route set's name: `*` or an ISO 3166-1 alpha-2 code.
pub fn check_route_set(route_set: &str) -> Result<(), PolicyError> {
    if route_set == DEFAULT_ROUTE_SET {
        return Ok(());
    }
    route_set
        .parse::<Country>()
        .map(|_| ())
        .map_err(|e| refuse("route_set", e.to_string()))
}

impl RoutingPolicy {
    /// Checks the whole policy against the gateways that exist (`known`): nothing is
    /// stored unless every part holds.
    pub fn check(&self, known: &dyn Fn(&str) -> bool) -> Result<(), PolicyError> {
        if !(0..=100).contains(&self.exploration_percent) {
            return Err(refuse(
                "exploration_percent",
                "a share of payments: 0 to 100",
            ));
        }
        if self.min_sample < 1 {
            return Err(refuse("min_sample", "at least 1 outcome"));
        }
        if self.window_size < self.min_sample {
            return Err(refuse(
                "window_size",
                "a window must hold at least min_sample outcomes",
            ));
        }
        match self.strategy {
            Strategy::VolumeSplit => {
                if self.splits.is_empty() {
                    return Err(refuse(
                        "splits",
                        "volume_split needs percentages per gateway",
                    ));
                }
                for (code, percent) in &self.splits {
                    if !known(code) {
                        return Err(refuse(format!("splits.{code}"), "no such gateway"));
                    }
                    if !(0..=100).contains(percent) {
                        return Err(refuse(format!("splits.{code}"), "a percentage: 0 to 100"));
                    }
                }
                let total: i32 = self.splits.values().sum();
                if total != 100 {
                    return Err(refuse(
                        "splits",
                        format!("percentages must sum to 100, not {total}"),
                    ));
                }
            }
            Strategy::Priority | Strategy::SuccessRate => {
                if !self.splits.is_empty() {
                    return Err(refuse("splits", "only a volume_split strategy has splits"));
                }
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let field = |name: &str| format!("rules[{i}].{name}");
            if rule.gateways.is_empty() {
                return Err(refuse(
                    field("gateways"),
                    "a rule needs at least one gateway",
                ));
            }
            if let Some(code) = rule.gateways.iter().find(|code| !known(code)) {
                return Err(refuse(
                    field("gateways"),
                    format!("no such gateway: {code}"),
                ));
            }
            if let (Some(min), Some(max)) = (rule.min_amount, rule.max_amount) {
                if min >= max {
                    return Err(refuse(
                        field("max_amount"),
                        "must be above min_amount (it is excluded, min_amount included)",
                    ));
                }
            }
            if rule.min_amount.is_some_and(|m| m < Decimal::ZERO) {
                return Err(refuse(field("min_amount"), "an amount is never negative"));
            }
            if let Some(currency) = &rule.currency {
                currency
                    .parse::<Currency>()
                    .map_err(|e| refuse(field("currency"), e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The index (from 0) of the first rule a payment matches.
    pub fn first_match(
        &self,
        amount: Decimal,
        currency: &str,
        method: PaymentMethod,
        kind: Kind,
    ) -> Option<usize> {
        self.rules
            .iter()
            .position(|rule| rule.matches(amount, currency, method, kind))
    }
}

/// A stored policy, with who last changed it and when.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoredPolicy {
    pub route_set: String,
    #[serde(flatten)]
    pub policy: RoutingPolicy,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub updated_by: String,
}

/// A row of `routing_policy` as read.
type PolicyRow = (
    String,
    String,
    i32,
    i32,
    i32,
    serde_json::Value,
    serde_json::Value,
    chrono::DateTime<chrono::Utc>,
    String,
);

/// Every stored policy, by route set.
pub async fn all_policies<'e>(executor: impl PgExecutor<'e>) -> sqlx::Result<Vec<StoredPolicy>> {
    let rows: Vec<PolicyRow> = sqlx::query_as(
        "SELECT route_set, strategy, exploration_percent, min_sample, window_size, splits, rules,
                updated_at, updated_by
           FROM routing_policy ORDER BY route_set",
    )
    .fetch_all(executor)
    .await?;
    rows.into_iter()
        .map(
            |(route_set, strategy, exploration, min_sample, window, splits, rules, at, by)| {
                let decode = |e: serde_json::Error| sqlx::Error::Decode(e.into());
                Ok(StoredPolicy {
                    route_set,
                    policy: RoutingPolicy {
                        strategy: serde_json::from_value(serde_json::Value::String(strategy))
                            .map_err(decode)?,
                        exploration_percent: exploration,
                        min_sample,
                        window_size: window,
                        splits: serde_json::from_value(splits).map_err(decode)?,
                        rules: serde_json::from_value(rules).map_err(decode)?,
                    },
                    updated_at: at,
                    updated_by: by,
                })
            },
        )
        .collect()
}

/// Stores `policy` for `route_set` (checked by the caller) and records the change by
/// `actor`, in the caller's transaction.
pub async fn store_policy(
    conn: &mut PgConnection,
    route_set: &str,
    policy: &RoutingPolicy,
    actor: &str,
) -> sqlx::Result<()> {
    let encode = |e: serde_json::Error| sqlx::Error::Encode(e.into());
    let splits = serde_json::to_value(&policy.splits).map_err(encode)?;
    let rules = serde_json::to_value(&policy.rules).map_err(encode)?;
    sqlx::query(
        "INSERT INTO routing_policy (route_set, strategy, exploration_percent, min_sample, window_size,
                                     splits, rules, updated_at, updated_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now(), $8)
         ON CONFLICT (route_set) DO UPDATE
            SET strategy = EXCLUDED.strategy, exploration_percent = EXCLUDED.exploration_percent,
                min_sample = EXCLUDED.min_sample, window_size = EXCLUDED.window_size,
                splits = EXCLUDED.splits, rules = EXCLUDED.rules,
                updated_at = now(), updated_by = EXCLUDED.updated_by",
    )
    .bind(route_set)
    .bind(policy.strategy.as_str())
    .bind(policy.exploration_percent)
    .bind(policy.min_sample)
    .bind(policy.window_size)
    .bind(splits)
    .bind(rules)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    record_change(conn, route_set, Some(policy), actor).await
}

/// Removes `route_set`'s policy (it routes by priority again) and records the change;
/// `false` when it had none.
pub async fn delete_policy(
    conn: &mut PgConnection,
    route_set: &str,
    actor: &str,
) -> sqlx::Result<bool> {
    let deleted = sqlx::query("DELETE FROM routing_policy WHERE route_set = $1")
        .bind(route_set)
        .execute(&mut *conn)
        .await?;
    if deleted.rows_affected() == 0 {
        return Ok(false);
    }
    record_change(conn, route_set, None, actor).await?;
    Ok(true)
}

async fn record_change(
    conn: &mut PgConnection,
    route_set: &str,
    policy: Option<&RoutingPolicy>,
    actor: &str,
) -> sqlx::Result<()> {
    let policy = policy
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| sqlx::Error::Encode(e.into()))?;
    sqlx::query("INSERT INTO routing_change (route_set, actor, policy) VALUES ($1, $2, $3)")
        .bind(route_set)
        .bind(actor)
        .bind(policy)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A recorded change: who, when, and what the policy became (`None`: deleted).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PolicyChange {
    pub id: i64,
    pub route_set: String,
    pub changed_at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    #[schema(value_type = Option<Object>)]
    pub policy: Option<serde_json::Value>,
}

/// The latest `limit` changes, newest first.
pub async fn changes<'e>(
    executor: impl PgExecutor<'e>,
    limit: i64,
) -> sqlx::Result<Vec<PolicyChange>> {
    sqlx::query_as(
        "SELECT id, route_set, changed_at, actor, policy FROM routing_change
          ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(executor)
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn known(code: &str) -> bool {
        ["a", "b"].contains(&code)
    }

    fn split(a: i32, b: i32) -> RoutingPolicy {
        RoutingPolicy {
            strategy: Strategy::VolumeSplit,
            splits: [("a".to_owned(), a), ("b".to_owned(), b)].into(),
            ..RoutingPolicy::default()
        }
    }

    #[test]
    fn a_volume_split_must_sum_to_a_hundred() {
        assert!(split(90, 10).check(&known).is_ok());
        assert_eq!(split(90, 20).check(&known).unwrap_err().field, "splits");
    }

    #[test]
    fn a_rule_without_candidates_or_with_an_unknown_one_is_refused() {
        let mut policy = RoutingPolicy::default();
        policy.rules.push(Rule {
            min_amount: None,
            max_amount: None,
            currency: None,
            method: None,
            kind: None,
            gateways: vec![],
        });
        assert_eq!(policy.check(&known).unwrap_err().field, "rules[0].gateways");
        policy.rules[0].gateways = vec!["zz".into()];
        assert_eq!(policy.check(&known).unwrap_err().field, "rules[0].gateways");
        policy.rules[0].gateways = vec!["a".into()];
        assert!(policy.check(&known).is_ok());
    }

    #[test]
    fn an_amount_range_includes_its_minimum_and_excludes_its_maximum() {
        let rule = Rule {
            min_amount: Some("10".parse().unwrap()),
            max_amount: Some("100".parse().unwrap()),
            currency: None,
            method: Some(MethodClass::Other),
            kind: None,
            gateways: vec!["a".into()],
        };
        let at = |amount: &str, method| {
            rule.matches(amount.parse().unwrap(), "EUR", method, Kind::Deposit)
        };
        assert!(at("10.00", PaymentMethod::Plain));
        assert!(at("99.99", PaymentMethod::Plain));
        assert!(!at("100.00", PaymentMethod::Plain));
        assert!(!at("9.99", PaymentMethod::Plain));
        assert!(!at("50.00", PaymentMethod::Card));
    }
}
