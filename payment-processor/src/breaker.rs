//! A circuit breaker per gateway: closed while calls succeed; open (calls skipped) once
//! at least `min_calls` calls in the rolling window failed at `failure_rate` or more;
//! after `open_ms` half-open, letting one trial call through, which closes it again on
//! success or reopens it on failure. A failure is a call that got no definite answer
//! (unreachable, 503, a timeout, an unreadable answer); a decline is a success.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use paygate_common::config::BreakerSettings;

/// A circuit's state, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(&self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// The `paygate_circuit_state` gauge's value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(&self) -> u8 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

#[derive(Debug)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// One trial call is out since then; everything else waits for its result. A trial
    /// whose result never comes (its caller was fenced out before calling, or died) is
    /// given up after another cool-down, and a new one let through.
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug)]
struct Circuit {
    state: State,
    /// (when, succeeded) of the calls in the window, oldest first.
    calls: VecDeque<(Instant, bool)>,
}

impl Circuit {
    fn public_state(&self) -> CircuitState {
        match self.state {
            State::Closed => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

pub struct Breakers {
    /// Every change of a circuit's state, for whoever records it (see `report_to`).
    changes: Mutex<Option<tokio::sync::mpsc::UnboundedSender<(String, CircuitState)>>>,
    window: Duration,
    min_calls: usize,
    failure_rate: f64,
    open_for: Duration,
    circuits: Mutex<HashMap<String, Circuit>>,
}

impl Breakers {
    pub fn new(settings: &BreakerSettings) -> Self {
        Breakers {
            changes: Mutex::default(),
            window: Duration::from_millis(settings.window_ms),
            min_calls: usize::try_from(settings.min_calls)
                .unwrap_or(usize::MAX)
                .max(1),
            failure_rate: settings.failure_rate,
            open_for: Duration::from_millis(settings.open_ms),
            circuits: Mutex::default(),
        }
    }

    /// Sends every change of state to `changes` from now on.
    pub fn report_to(&self, changes: tokio::sync::mpsc::UnboundedSender<(String, CircuitState)>) {
        *self.changes.lock().unwrap_or_else(PoisonError::into_inner) = Some(changes);
    }

    fn with<T>(&self, gateway: &str, f: impl FnOnce(&mut Circuit) -> T) -> T {
        let mut circuits = self.circuits.lock().unwrap_or_else(PoisonError::into_inner);
        let circuit = circuits.entry(gateway.to_owned()).or_insert_with(|| {
            paygate_common::metrics::circuit_state(gateway, CircuitState::Closed.gauge());
            Circuit {
                state: State::Closed,
                calls: VecDeque::new(),
            }
        });
        let before = circuit.public_state();
        let result = f(circuit);
        let after = circuit.public_state();
        if before != after {
            paygate_common::metrics::circuit_state(gateway, after.gauge());
            if let Some(changes) = self
                .changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
            {
                let _ = changes.send((gateway.to_owned(), after));
            }
        }
        result
    }

    /// Whether a call to `gateway` may go out now. An open circuit whose cool-down has
    /// passed lets this one call through as its trial.
    pub fn permit(&self, gateway: &str) -> bool {
        let now = Instant::now();
        self.with(gateway, |c| match c.state {
            State::Closed => true,
            State::Open { until } if now >= until => {
                tracing::info!(gateway, "circuit half-open: one trial call");
                c.state = State::HalfOpen { since: now };
                true
            }
            State::HalfOpen { since } if now.duration_since(since) >= self.open_for => {
                c.state = State::HalfOpen { since: now };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        })
    }

    /// Records how a permitted call ended.
    pub fn record(&self, gateway: &str, succeeded: bool) {
        let now = Instant::now();
        self.with(gateway, |c| {
            match c.state {
                State::HalfOpen { .. } if succeeded => {
                    tracing::info!(gateway, "circuit closed: the trial call succeeded");
                    c.state = State::Closed;
                    c.calls.clear();
                    return;
                }
                State::HalfOpen { .. } => {
                    tracing::warn!(gateway, "circuit open again: the trial call failed");
                    c.state = State::Open {
                        until: now + self.open_for,
                    };
                    return;
                }
                State::Open { .. } => return,
                State::Closed => {}
            }
            c.calls.push_back((now, succeeded));
            while c
                .calls
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > self.window)
            {
                c.calls.pop_front();
            }
            let failed = c.calls.iter().filter(|(_, ok)| !ok).count();
            let total = c.calls.len();
            if total >= self.min_calls && failed as f64 >= self.failure_rate * total as f64 {
                tracing::warn!(
                    gateway,
                    failed,
                    total,
                    "circuit open: too many failed calls"
                );
                c.state = State::Open {
                    until: now + self.open_for,
                };
                c.calls.clear();
            }
        });
    }

    /// Every circuit seen so far and its state, for `GET /circuits` on the health port.
    pub fn report(&self) -> serde_json::Value {
        let circuits = self.circuits.lock().unwrap_or_else(PoisonError::into_inner);
        let mut gateways: Vec<serde_json::Value> = circuits
            .iter()
            .map(|(code, c)| serde_json::json!({"gateway": code, "state": c.public_state().as_str()}))
            .collect();
        gateways.sort_by(|a, b| a["gateway"].as_str().cmp(&b["gateway"].as_str()));
        serde_json::json!({ "circuits": gateways })
    }

    pub fn state(&self, gateway: &str) -> CircuitState {
        self.with(gateway, |c| c.public_state())
    }
}

/// Writes each reported change of a circuit to `gateway_circuit`, where operators read
/// it (the admin API), until `shutdown`.
pub async fn record_changes(
    pool: sqlx::PgPool,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<(String, CircuitState)>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let (gateway, state) = tokio::select! {
            _ = shutdown.cancelled() => return,
            change = changes.recv() => match change {
                Some(change) => change,
                None => return,
            },
        };
        let written = sqlx::query(
            "INSERT INTO gateway_circuit (gateway_code, state, changed_at) VALUES ($1, $2, now())
             ON CONFLICT (gateway_code) DO UPDATE SET state = EXCLUDED.state, changed_at = now()",
        )
        .bind(&gateway)
        .bind(state.as_str())
        .execute(&pool)
        .await;
        if let Err(error) = written {
            tracing::warn!(%error, gateway, "could not record a circuit's state");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(open_ms: u64) -> Breakers {
        Breakers::new(&BreakerSettings {
            window_ms: 60_000,
            min_calls: 4,
            failure_rate: 0.5,
            open_ms,
        })
    }

    #[test]
    fn a_circuit_opens_only_after_enough_calls_fail_and_closes_through_one_trial() {
        let b = breakers(50);
        for _ in 0..3 {
            assert!(b.permit("g"));
            b.record("g", false);
        }
        assert_eq!(b.state("g"), CircuitState::Closed, "fewer than min_calls");
        b.record("g", false);
        assert_eq!(b.state("g"), CircuitState::Open);
        assert!(!b.permit("g"));
        assert!(b.permit("other"), "circuits are per gateway");

        std::thread::sleep(Duration::from_millis(60));
        assert!(b.permit("g"), "the trial call");
        assert!(!b.permit("g"), "only one trial at a time");
        b.record("g", false);
        assert_eq!(b.state("g"), CircuitState::Open);

        std::thread::sleep(Duration::from_millis(60));
        assert!(b.permit("g"));
        b.record("g", true);
        assert_eq!(b.state("g"), CircuitState::Closed);
        assert!(b.permit("g"));
    }

    #[test]
    fn a_trial_whose_result_never_comes_is_replaced_after_a_cool_down() {
        let b = breakers(50);
        for _ in 0..4 {
            b.record("g", false);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.permit("g"), "the trial, whose caller then never calls");
        assert!(!b.permit("g"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.permit("g"), "another trial");
    }

    #[test]
    fn successes_keep_the_failure_rate_under_the_threshold() {
        let b = breakers(50);
        for i in 0..20 {
            b.record("g", i % 4 != 0);
        }
        assert_eq!(b.state("g"), CircuitState::Closed);
    }
}
