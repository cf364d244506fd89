//! A service binary as a child process, so a test can SIGKILL it mid-flow.

use std::time::Duration;

/// A service binary running as a child process, so a test can SIGKILL it mid-flow.
pub struct Process {
    child: tokio::process::Child,
}

impl Process {
    /// Starts `binary` with `env` on top of this process's environment.
    pub fn spawn(binary: &str, env: &[(String, String)]) -> Self {
        let child = tokio::process::Command::new(binary)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PAYGATE__LOG__FORMAT", "pretty")
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        Process { child }
    }

    /// SIGKILL: no shutdown path runs, nothing is flushed or committed.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then waits; `true` when it exited cleanly.
    pub async fn terminate(mut self) -> bool {
        let pid = self.child.id().expect("still running").to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s of SIGTERM")
            .unwrap();
        status.success()
    }
}
