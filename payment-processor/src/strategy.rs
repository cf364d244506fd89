//! How a payment's candidates are ordered, and the record of why (issue 29). Pure: the
//! candidates come from the cached routing tables ([`crate::routing::Snapshot::plan`]),
//! the success-rate windows from [`crate::scores`], the randomness from the caller, so
//! one decision costs no database round trip and a test or benchmark can make many.
//!
//! - `priority`: the candidates' own order (the routing table's priority, or the
//!   order a rule lists them in).
//! - `success_rate`: a gateway whose window holds fewer than `min_sample` outcomes comes
//!   first (it is still being measured), then the rest by authorization rate, best
//!   first (ties keep priority order). In `exploration_percent` of payments one of the
//!   others, drawn at random, is put first instead, so a gateway that was worse keeps
//!   being measured and can win its traffic back.
//! - `volume_split`: one gateway drawn with the operator's weights goes first; the
//!   others follow in priority order (they are only asked when it proves it took
//!   nothing).
//! - pinned: the merchant's gateways in its order; with fallback allowed, the routed
//!   candidates, ordered by their strategy, follow.

use std::collections::HashMap;

use rand::Rng;

use paygate_common::events::proto;
use paygate_common::gateway::policy::{RoutingPolicy, Strategy};
use paygate_common::gateway::GatewayRecord;

/// A gateway's recent authorization outcomes for one kind of payment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub successes: u32,
    pub samples: u32,
}

impl Window {
    fn rate(self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            f64::from(self.successes) / f64::from(self.samples)
        }
    }
}

/// A payment's candidates before they are ordered.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The routed candidates (a rule's, or the routing table's), in priority order.
    pub routed: Vec<GatewayRecord>,
    /// The merchant's pinned gateways that can take the payment now, in its order.
    pub pinned: Option<Vec<GatewayRecord>>,
    /// Whether the routed candidates may follow the pinned ones.
    pub fallback: bool,
    /// The policy of the payment's route set, if it has one.
    pub policy: Option<&'a RoutingPolicy>,
    pub route_set: Option<&'a str>,
    /// The index of the rule that matched.
    pub rule: Option<usize>,
}

/// The gateways to offer the payment to, in order, and why.
#[derive(Debug, Clone)]
pub struct Decision {
    pub order: Vec<GatewayRecord>,
    pub routing: proto::RoutingDecision,
}

impl Plan<'_> {
    fn strategy(&self) -> Strategy {
        self.policy.map(|p| p.strategy).unwrap_or_default()
    }

    /// The gateways whose success-rate windows the decision needs (none unless the
    /// routed candidates are ordered by success rate and there is a choice).
    pub fn scored(&self) -> Vec<&str> {
        let used = self.pinned.is_none() || self.fallback;
        if used && self.strategy() == Strategy::SuccessRate && self.routed.len() > 1 {
            self.routed.iter().map(|g| g.code.as_str()).collect()
        } else {
            Vec::new()
        }
    }

    /// How many outcomes make a window (the policy's, or the default).
    pub fn window_size(&self) -> usize {
        let size = self
            .policy
            .map_or_else(|| RoutingPolicy::default().window_size, |p| p.window_size);
        usize::try_from(size).unwrap_or(1).max(1)
    }

    /// Orders the candidates; `windows` holds the scored gateways' windows (a gateway
    /// missing from it has no outcomes yet).
    pub fn decide(self, windows: &HashMap<String, Window>, rng: &mut impl Rng) -> Decision {
        let strategy = self.strategy();
        let mut routing = proto::RoutingDecision {
            strategy: strategy.as_str().to_owned(),
            route_set: self.route_set.unwrap_or_default().to_owned(),
            rule: self
                .rule
                .map_or(0, |i| u32::try_from(i + 1).unwrap_or(u32::MAX)),
            rule_summary: self
                .policy
                .zip(self.rule)
                .map(|(p, i)| p.rules[i].summary())
                .unwrap_or_default(),
            ..proto::RoutingDecision::default()
        };
        let mut routed = self.routed;
        if let (Some(policy), true) = (self.policy, self.pinned.is_none() || self.fallback) {
            match strategy {
                Strategy::Priority => {}
                Strategy::SuccessRate => {
                    routing.explored = by_success_rate(&mut routed, policy, windows, rng);
                    routing.scores = routed
                        .iter()
                        .map(|g| {
                            let w = windows.get(&g.code).copied().unwrap_or_default();
                            proto::GatewayScore {
                                gateway: g.code.clone(),
                                successes: w.successes,
                                samples: w.samples,
                                counted: counts(w, policy),
                            }
                        })
                        .collect();
                }
                Strategy::VolumeSplit => by_volume_split(&mut routed, policy, rng),
            }
        }
        let order = match self.pinned {
            Some(mut pinned) => {
                routing.strategy = "pinned".to_owned();
                routing.fallback = self.fallback;
                if self.fallback {
                    for gateway in routed {
                        if !pinned.iter().any(|p| p.code == gateway.code) {
                            pinned.push(gateway);
                        }
                    }
                }
                pinned
            }
            None => routed,
        };
        routing.order = order.iter().map(|g| g.code.clone()).collect();
        Decision { order, routing }
    }
}

fn counts(window: Window, policy: &RoutingPolicy) -> bool {
    i64::from(window.samples) >= i64::from(policy.min_sample)
}

/// Orders `candidates` by success rate (see the module); whether one was explored.
fn by_success_rate(
    candidates: &mut Vec<GatewayRecord>,
    policy: &RoutingPolicy,
    windows: &HashMap<String, Window>,
    rng: &mut impl Rng,
) -> bool {
    // Stable: equal keys keep priority order. Unmeasured first, then the best rate.
    let key = |g: &GatewayRecord| {
        let window = windows.get(&g.code).copied().unwrap_or_default();
        if counts(window, policy) {
            (1u8, -window.rate())
        } else {
            (0u8, 0.0)
        }
    };
    candidates.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
    });
    let explore =
        candidates.len() > 1 && rng.random_range(0..100) < policy.exploration_percent.clamp(0, 100);
    if explore {
        let pick = rng.random_range(1..candidates.len());
        let explored = candidates.remove(pick);
        candidates.insert(0, explored);
    }
    explore
}

/// Puts one gateway drawn with the split's weights first (see the module).
fn by_volume_split(
    candidates: &mut Vec<GatewayRecord>,
    policy: &RoutingPolicy,
    rng: &mut impl Rng,
) {
    let weight = |g: &GatewayRecord| {
        policy
            .splits
            .get(&g.code)
            .map_or(0, |w| u32::try_from(*w).unwrap_or(0))
    };
    let total: u32 = candidates.iter().map(weight).sum();
    if total == 0 {
        return;
    }
    let mut draw = rng.random_range(0..total);
    let Some(pick) = candidates.iter().position(|g| {
        let w = weight(g);
        if draw < w {
            true
        } else {
            draw -= w;
            false
        }
    }) else {
        return;
    };
    let first = candidates.remove(pick);
    candidates.insert(0, first);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use paygate_common::gateway::policy::Rule;

    fn gateway(code: &str) -> GatewayRecord {
        GatewayRecord {
            code: code.to_owned(),
            protocol: "json".into(),
            base_url: "http://127.0.0.1:1".into(),
            callback_secret: paygate_common::secrets::Sealed::from_stored("x".into()),
            timeout_ms: 1000,
            max_concurrency: 1,
            enabled: true,
            settle_window_ms: 0,
            callback_deadline_ms: 0,
            review_after_ms: 0,
        }
    }

    fn plan<'a>(policy: &'a RoutingPolicy, codes: &[&str]) -> Plan<'a> {
        Plan {
            routed: codes.iter().map(|c| gateway(c)).collect(),
            pinned: None,
            fallback: false,
            policy: Some(policy),
            route_set: Some("*"),
            rule: None,
        }
    }

    fn first_choices(
        policy: &RoutingPolicy,
        windows: &HashMap<String, Window>,
        payments: usize,
    ) -> HashMap<String, usize> {
        let mut rng = rand::rng();
        let mut firsts = HashMap::new();
        for _ in 0..payments {
            let decision = plan(policy, &["a", "b"]).decide(windows, &mut rng);
            *firsts.entry(decision.order[0].code.clone()).or_default() += 1;
        }
        firsts
    }

    #[test]
    fn a_volume_split_of_90_10_over_1000_payments_lands_within_four_points() {
        let policy = RoutingPolicy {
            strategy: Strategy::VolumeSplit,
            splits: [("a".to_owned(), 90), ("b".to_owned(), 10)].into(),
            ..RoutingPolicy::default()
        };
        let firsts = first_choices(&policy, &HashMap::new(), 1000);
        // 100 expected at b, standard deviation ~9.5: ±40 is over four of them.
        let b = firsts.get("b").copied().unwrap_or(0);
        assert!((60..=140).contains(&b), "{firsts:?}");
    }

    #[test]
    fn the_better_gateway_gets_most_payments_and_exploration_still_reaches_the_other() {
        let policy = RoutingPolicy {
            strategy: Strategy::SuccessRate,
            exploration_percent: 10,
            min_sample: 20,
            ..RoutingPolicy::default()
        };
        let windows = HashMap::from([
            (
                "a".to_owned(),
                Window {
                    successes: 50,
                    samples: 100,
                },
            ),
            (
                "b".to_owned(),
                Window {
                    successes: 95,
                    samples: 100,
                },
            ),
        ]);
        let firsts = first_choices(&policy, &windows, 1000);
        let (a, b) = (
            firsts.get("a").copied().unwrap_or(0),
            firsts.get("b").copied().unwrap_or(0),
        );
        assert!(b >= 800, "{firsts:?}");
        assert!(a > 0, "exploration never reached a: {firsts:?}");
    }

    #[test]
    fn a_gateway_below_the_minimum_sample_is_measured_before_the_scored_ones() {
        let policy = RoutingPolicy {
            strategy: Strategy::SuccessRate,
            exploration_percent: 0,
            min_sample: 20,
            ..RoutingPolicy::default()
        };
        let windows = HashMap::from([
            (
                "a".to_owned(),
                Window {
                    successes: 100,
                    samples: 100,
                },
            ),
            (
                "b".to_owned(),
                Window {
                    successes: 0,
                    samples: 19,
                },
            ),
        ]);
        let decision = plan(&policy, &["a", "b"]).decide(&windows, &mut rand::rng());
        assert_eq!(decision.routing.order, ["b", "a"]);
        assert!(!decision.routing.scores[0].counted);
    }

    #[test]
    fn a_pinned_gateway_goes_first_and_alone_unless_fallback_is_allowed() {
        let policy = RoutingPolicy::default();
        let mut pinned = plan(&policy, &["a", "b"]);
        pinned.pinned = Some(vec![gateway("b")]);
        let decision = pinned.decide(&HashMap::new(), &mut rand::rng());
        assert_eq!(decision.routing.order, ["b"]);
        assert_eq!(decision.routing.strategy, "pinned");

        let mut fallback = plan(&policy, &["a", "b"]);
        fallback.pinned = Some(vec![gateway("b")]);
        fallback.fallback = true;
        let decision = fallback.decide(&HashMap::new(), &mut rand::rng());
        assert_eq!(decision.routing.order, ["b", "a"]);
    }

    #[test]
    fn the_matched_rule_is_recorded_from_one_with_its_summary() {
        let policy = RoutingPolicy {
            rules: vec![Rule {
                min_amount: None,
                max_amount: Some("100".parse().unwrap()),
                currency: None,
                method: None,
                kind: None,
                gateways: vec!["a".into()],
            }],
            ..RoutingPolicy::default()
        };
        let mut matched = plan(&policy, &["a"]);
        matched.rule = Some(0);
        let decision = matched.decide(&HashMap::new(), &mut rand::rng());
        assert_eq!(decision.routing.rule, 1);
        assert_eq!(decision.routing.rule_summary, "amount ..100 → a");
    }
}
