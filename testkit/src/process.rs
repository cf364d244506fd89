//! A service binary as a child process, so a test can SIGKILL or SIGTERM it mid-flow,
//! see how it exits and read what it logged.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

/// The path of a workspace binary built beside the running test (cargo builds every
/// service's binary for its own integration tests, so all four are there).
pub fn binary(name: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/<test> -> <target>/<profile>/<name>
    let path: PathBuf = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name))
        .unwrap();
    assert!(
        path.exists(),
        "{} is not built; `cargo build --bins` first",
        path.display()
    );
    path.display().to_string()
}

/// A service binary running as a child process.
pub struct Process {
    child: tokio::process::Child,
    /// What it wrote to stdout and stderr, when captured.
    logs: Option<Arc<Mutex<String>>>,
}

impl Process {
    /// Starts `binary` with `env` on top of this process's environment, its output
    /// passed through.
    pub fn spawn(binary: &str, env: &[(String, String)]) -> Self {
        let child = tokio::process::Command::new(binary)
            .env("PAYGATE__LOG__FORMAT", "pretty")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        Process { child, logs: None }
    }

    /// Starts `binary` logging JSON at `info`, its output kept for [`Process::logs`].
    pub fn spawn_logged(binary: &str, env: &[(String, String)]) -> Self {
        let mut child = tokio::process::Command::new(binary)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PAYGATE__LOG__FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        let logs = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take(), logs.clone());
        collect(child.stderr.take(), logs.clone());
        Process {
            child,
            logs: Some(logs),
        }
    }

    /// What it has logged so far (empty unless started with [`Process::spawn_logged`]).
    pub fn logs(&self) -> String {
        self.logs
            .as_ref()
            .map(|logs| logs.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// SIGKILL: no shutdown path runs, nothing is flushed or committed.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then waits; `true` when it exited cleanly.
    pub async fn terminate(self) -> bool {
        self.terminate_with_status().await.success()
    }

    /// SIGTERM, then waits up to 30 s for it to exit.
    pub async fn terminate_with_status(mut self) -> ExitStatus {
        let pid = self.child.id().expect("still running").to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        self.wait(Duration::from_secs(30)).await
    }

    /// Waits for it to exit on its own, up to `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("did not exit within {timeout:?}"))
            .unwrap()
    }
}

fn collect(stream: Option<impl AsyncRead + Unpin + Send + 'static>, into: Arc<Mutex<String>>) {
    let Some(stream) = stream else { return };
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut logs = into.lock().unwrap();
            logs.push_str(&line);
            logs.push('\n');
        }
    });
}

/// A service binary kept running as a supervisor (Kubernetes, `scripts/up`) keeps it:
/// whenever it exits — SIGKILLed by the test, or stopping itself after an outage
/// outlasted its retries — it is started again after a short pause.
pub struct Supervised {
    name: String,
    state: std::sync::Arc<tokio::sync::Mutex<SupervisedState>>,
    stop: tokio_util::sync::CancellationToken,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

struct SupervisedState {
    child: Option<tokio::process::Child>,
    /// Starts after the first, and how each run before them ended.
    restarts: Vec<String>,
}

impl Supervised {
    pub fn start(name: &str, binary: &str, env: Vec<(String, String)>) -> Self {
        let spawn = {
            let binary = binary.to_owned();
            move || {
                tokio::process::Command::new(&binary)
                    .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .env("PAYGATE__LOG__FORMAT", "pretty")
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap_or_else(|e| panic!("starting {binary}: {e}"))
            }
        };
        let state = std::sync::Arc::new(tokio::sync::Mutex::new(SupervisedState {
            child: Some(spawn()),
            restarts: Vec::new(),
        }));
        let stop = tokio_util::sync::CancellationToken::new();
        let watcher = tokio::spawn({
            let state = state.clone();
            let stop = stop.clone();
            async move {
                while !stop.is_cancelled() {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    let mut state = state.lock().await;
                    let exited = match state.child.as_mut().map(|c| c.try_wait()) {
                        Some(Ok(Some(status))) => Some(status.to_string()),
                        Some(Ok(None)) => None,
                        Some(Err(e)) => Some(e.to_string()),
                        None => Some("gone".to_owned()),
                    };
                    if let Some(how) = exited {
                        state.restarts.push(how);
                        state.child = Some(spawn());
                    }
                }
            }
        });
        Supervised {
            name: name.to_owned(),
            state,
            stop,
            watcher: Some(watcher),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// SIGKILL; the supervisor starts it again.
    pub async fn kill(&self) {
        let mut state = self.state.lock().await;
        if let Some(child) = state.child.as_mut() {
            let _ = child.kill().await;
        }
    }

    /// How each earlier run ended ("signal: 9 (SIGKILL)", "exit status: 1", …).
    pub async fn restarts(&self) -> Vec<String> {
        self.state.lock().await.restarts.clone()
    }

    /// Stops supervising and sends SIGTERM; `true` when it exited cleanly in time.
    pub async fn terminate(mut self) -> bool {
        self.stop.cancel();
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.await;
        }
        let mut state = self.state.lock().await;
        let Some(mut child) = state.child.take() else {
            return false;
        };
        let Some(pid) = child.id() else {
            return false;
        };
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false);
        if !sent {
            return false;
        }
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                let _ = child.kill().await;
                false
            }
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
