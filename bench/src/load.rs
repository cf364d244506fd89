//! The load: deposits at a fixed rate (open loop: the schedule does not wait for
//! answers, so a slow server shows as latency, not as a lower rate) or as fast as a
//! fixed number of clients can (closed loop), then a drain that waits for every
//! accepted payment's final webhook.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::merchant::{is_final, Receiver};
use crate::Options;

/// One request's fate.
#[derive(Debug, Clone)]
pub struct Sent {
    pub at: Instant,
    pub latency: Duration,
    /// The transaction id when it was accepted (202).
    pub accepted: Option<String>,
    /// Why it was not: the status code, or what kind of error the client met.
    pub refused: Option<String>,
}

/// What the load did.
pub struct Run {
    pub started: Instant,
    pub ended: Instant,
    pub sent: Vec<Sent>,
}

/// At most this many requests in flight in open loop (beyond it, the server is far
/// behind and the schedule skips, which the report shows as a lower sent rate).
const MAX_IN_FLIGHT: usize = 4096;

pub async fn run(options: &Options, key: &str) -> anyhow::Result<Run> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency.max(64))
        .timeout(Duration::from_secs(30))
        .build()?;
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let bar = ProgressBar::new(options.seconds);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len}s {msg}")?
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);
    let send = {
        let http = http.clone();
        let url = format!("{}/v1/deposits", options.api);
        let key = key.to_owned();
        let sent = sent.clone();
        move |n: u64| {
            let http = http.clone();
            let url = url.clone();
            let key = key.clone();
            let sent = sent.clone();
            async move {
                let at = Instant::now();
                let answer = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(
                        &json!({"user_id": format!("bench-{}", n % 1000), "amount": "10.00",
                                  "currency": "EUR", "reference": format!("bench-{n}")}),
                    )
                    .send()
                    .await;
                let (accepted, refused) = match answer {
                    Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                        match response.json::<serde_json::Value>().await {
                            Ok(body) => (body["id"].as_str().map(str::to_owned), None),
                            Err(error) => (None, Some(format!("reading the answer: {error}"))),
                        }
                    }
                    Ok(response) => (None, Some(response.status().to_string())),
                    Err(error) => (None, Some(refusal(&error))),
                };
                sent.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Sent {
                        at,
                        latency: at.elapsed(),
                        accepted,
                        refused,
                    });
            }
        }
    };
    let ticker = {
        let bar = bar.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut last = 0;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = sent.lock().unwrap_or_else(PoisonError::into_inner).len();
                bar.set_message(format!("{} req/s", now - last));
                last = now;
                bar.inc(1);
            }
        })
    };
    match options.rate {
        Some(rate) => {
            let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let mut tasks = tokio::task::JoinSet::new();
            let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            let mut n = 0u64;
            while Instant::now() < deadline {
                let due = started + interval.mul_f64(n as f64);
                tokio::time::sleep_until(due.into()).await;
                if let Ok(permit) = limit.clone().try_acquire_owned() {
                    let request = send(n);
                    tasks.spawn(async move {
                        request.await;
                        drop(permit);
                    });
                }
                n += 1;
            }
            while tasks.join_next().await.is_some() {}
        }
        None => {
            let mut workers = tokio::task::JoinSet::new();
            let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
            for _ in 0..options.concurrency {
                let send = send.clone();
                let counter = counter.clone();
                workers.spawn(async move {
                    while Instant::now() < deadline {
                        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        send(n).await;
                    }
                });
            }
            while workers.join_next().await.is_some() {}
        }
    }
    let ended = Instant::now();
    let _ = ticker.await;
    bar.finish_with_message("load done; draining");
    let sent = std::mem::take(&mut *sent.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(Run {
        started,
        ended,
        sent,
    })
}

/// What kind of failure a request met, short enough to count by.
fn refusal(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_request() {
        "sending the request failed"
    } else {
        "failed"
    };
    let cause = std::error::Error::source(error).map_or(String::new(), |c| format!(": {c}"));
    format!("{kind}{cause}")
}

/// How the accepted payments ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Accepted payments with no final webhook after the drain, and their status then.
    pub unfinished: Vec<(String, String)>,
    pub drained_in: Duration,
}

/// Whether a drain still waits: it gives up once `patience` passed with no payment
/// finishing, never while the pipeline is still finishing them (a backlog it clears
/// slowly is not lost).
#[derive(Debug)]
struct Patience {
    patience: Duration,
    waiting: usize,
    since: Instant,
}

impl Patience {
    fn new(patience: Duration, waiting: usize, now: Instant) -> Self {
        Patience {
            patience,
            waiting,
            since: now,
        }
    }

    /// Whether to go on waiting, with `waiting` payments unfinished at `now`.
    fn goes_on(&mut self, waiting: usize, now: Instant) -> bool {
        if waiting < self.waiting {
            self.waiting = waiting;
            self.since = now;
        }
        waiting > 0 && now.duration_since(self.since) < self.patience
    }
}

/// Waits for a final webhook of every accepted payment until `options.drain` passes with
/// none arriving, then asks the api about the rest.
pub async fn drain(options: &Options, key: &str, run: &Run, receiver: &Receiver) -> Outcome {
    let started = Instant::now();
    let accepted: Vec<&String> = run
        .sent
        .iter()
        .filter_map(|s| s.accepted.as_ref())
        .collect();
    let waiting = |receiver: &Receiver| {
        accepted
            .iter()
            .filter(|id| !receiver.of(id).iter().any(|a| is_final(&a.event_type)))
            .count()
    };
    let mut patience = Patience::new(options.drain, waiting(receiver), started);
    while patience.goes_on(waiting(receiver), Instant::now()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_in = started.elapsed();
    let http = reqwest::Client::new();
    let mut unfinished = Vec::new();
    for id in accepted
        .iter()
        .filter(|id| !receiver.of(id).iter().any(|a| is_final(&a.event_type)))
    {
        let status = match http
            .get(format!("{}/v1/transactions/{id}", options.api))
            .bearer_auth(key)
            .send()
            .await
        {
            Ok(response) => response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|b| b["status"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".to_owned()),
            Err(_) => "unreachable".to_owned(),
        };
        unfinished.push(((*id).clone(), status));
    }
    Outcome {
        unfinished,
        drained_in,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_that_keeps_finishing_payments_is_waited_for_past_its_patience() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut patience = Patience::new(second * 60, 1_000, start);
        assert!(patience.goes_on(900, start + second * 50));
        assert!(patience.goes_on(500, start + second * 100));
        assert!(patience.goes_on(500, start + second * 159));
        assert!(!patience.goes_on(500, start + second * 160));
    }

    #[test]
    fn a_drain_that_finishes_nothing_gives_up_after_its_patience() {
        let start = Instant::now();
        let mut patience = Patience::new(Duration::from_secs(60), 10, start);
        assert!(patience.goes_on(10, start + Duration::from_secs(59)));
        assert!(!patience.goes_on(10, start + Duration::from_secs(60)));
    }

    #[test]
    fn a_drain_ends_once_nothing_waits() {
        let start = Instant::now();
        let mut patience = Patience::new(Duration::from_secs(60), 10, start);
        assert!(!patience.goes_on(0, start + Duration::from_millis(200)));
    }
}
