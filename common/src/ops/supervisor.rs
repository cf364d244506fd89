//! Supervision inside one process. A service is a handful of tasks (HTTP server,
//! consumer, outbox relay, its own companions); if any of them ends or panics while the
//! service should be running, the service is no longer whole: the supervisor cancels
//! the shared shutdown token, lets the others drain, and reports the failure, so `main`
//! exits non-zero and the service's own supervisor (Kubernetes, `scripts/up`) restarts
//! it. On SIGTERM the same drain runs and, when every task finished in time, the
//! service ends `Ok` (exit 0). The drain is bounded by the grace period: past it the
//! remaining tasks are aborted and the service reports that it could not stop cleanly.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use tokio::task::{Id, JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Names the task the supervision test makes panic, in a real binary: see [`fault`].
pub const FAULT_VARIABLE: &str = "PAYGATE_TEST_FAULT";

/// The tasks of one service and the token that stops them all.
pub struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
    shutdown: CancellationToken,
    grace: Duration,
}

impl Supervisor {
    /// Tasks started here stop when `shutdown` is cancelled, and get `grace` to do so.
    pub fn new(shutdown: CancellationToken, grace: Duration) -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            shutdown,
            grace,
        }
    }

    /// Runs `task` as `name` (which error messages and logs use). It must return once
    /// the shutdown token is cancelled, and only then.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.tasks.spawn(fault(name, task));
        self.names.insert(handle.id(), name);
    }

    /// Watches a task already spawned.
    pub fn watch(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.spawn(name, async move {
            task.await.map_err(|error| anyhow!("{error}"))?;
            Ok(())
        });
    }

    /// Waits until shutdown or until a task ends (a failure), then drains every task
    /// within the grace period.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {
                tracing::info!(grace = ?self.grace, "draining");
            }
            Some(joined) = self.tasks.join_next_with_id() => {
                let error = match self.judge(joined) {
                    Ended::Failed(error) => Some(error),
                    // Shutdown began while this task was being looked at: it just stopped first.
                    Ended::Returned(_) if self.shutdown.is_cancelled() => None,
                    Ended::Returned(name) => Some(anyhow!("the {name} stopped while the service was running")),
                };
                if let Some(error) = error {
                    tracing::error!(error = %format!("{error:#}"), "a task of the service ended; stopping the service");
                    failure = Some(error);
                }
                self.shutdown.cancel();
            }
        }
        let drained = tokio::time::timeout(self.grace, async {
            while let Some(joined) = self.tasks.join_next_with_id().await {
                if let Ended::Failed(error) = self.judge(joined) {
                    tracing::error!(error = %format!("{error:#}"), "a task failed while draining");
                    failure.get_or_insert(error);
                }
            }
        })
        .await;
        if drained.is_err() {
            let left: Vec<&str> = self.names.values().copied().collect();
            self.tasks.abort_all();
            let error = anyhow!(
                "{} did not stop within the grace period of {:?}",
                left.join(", "),
                self.grace
            );
            tracing::error!(%error, "giving up on a clean stop");
            failure.get_or_insert(error);
        }
        failure.map_or(Ok(()), Err)
    }

    /// What a finished task came to.
    fn judge(&mut self, joined: Result<(Id, anyhow::Result<()>), JoinError>) -> Ended {
        match joined {
            Ok((id, Ok(()))) => Ended::Returned(self.names.remove(&id).unwrap_or("task")),
            Ok((id, Err(error))) => {
                let name = self.names.remove(&id).unwrap_or("task");
                Ended::Failed(error.context(format!("the {name} failed")))
            }
            Err(join) => {
                let name = self.names.remove(&join.id()).unwrap_or("task");
                Ended::Failed(anyhow!("the {name} panicked: {join}"))
            }
        }
    }
}

/// How a task ended.
enum Ended {
    /// It returned `Ok`: right when shutting down, a failure otherwise.
    Returned(&'static str),
    /// It returned an error or panicked.
    Failed(anyhow::Error),
}

/// A test seam: when [`FAULT_VARIABLE`] names this task, it panics a second after it
/// starts, as a task with a bug would. The supervision test sets it on a real binary to
/// see the whole service stop and exit non-zero; nothing sets it otherwise.
async fn fault<F>(name: &'static str, task: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    if std::env::var(FAULT_VARIABLE).is_ok_and(|wanted| wanted == name) {
        tokio::select! {
            result = task => return result,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        panic!("{FAULT_VARIABLE} made the {name} panic");
    }
    task.await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn until_cancelled(shutdown: &CancellationToken) -> impl Future<Output = anyhow::Result<()>> {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_task_that_panics_stops_the_others_and_the_service_reports_it() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone(), Duration::from_secs(5));
        supervisor.spawn("consumer", until_cancelled(&shutdown));
        supervisor.spawn("outbox relay", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("a bug");
        });
        let error = supervisor.run().await.unwrap_err();
        assert!(shutdown.is_cancelled(), "the others were told to stop");
        assert!(
            format!("{error:#}").contains("outbox relay panicked"),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_while_the_service_runs_is_a_failure_too() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone(), Duration::from_secs(5));
        supervisor.spawn("consumer", until_cancelled(&shutdown));
        supervisor.watch("webhook sender", tokio::spawn(async {}));
        let error = supervisor.run().await.unwrap_err();
        assert!(
            format!("{error:#}").contains("webhook sender stopped"),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn shutdown_drains_every_task_and_ends_well() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone(), Duration::from_secs(5));
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for name in ["consumer", "outbox relay"] {
            let (shutdown, finished) = (shutdown.clone(), finished.clone());
            supervisor.spawn(name, async move {
                shutdown.cancelled().await;
                tokio::time::sleep(Duration::from_millis(50)).await; // in-flight work
                finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            });
        }
        shutdown.cancel();
        supervisor.run().await.unwrap();
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_task_that_outlasts_the_grace_period_is_abandoned_with_an_error() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone(), Duration::from_millis(100));
        supervisor.spawn("http server", std::future::pending());
        shutdown.cancel();
        let error = supervisor.run().await.unwrap_err();
        assert!(
            format!("{error:#}").contains("http server did not stop within"),
            "{error:#}"
        );
    }
}
