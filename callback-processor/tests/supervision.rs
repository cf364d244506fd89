//! The callback-processor binary supervises its own tasks: one that dies takes the
//! whole process down with a non-zero exit, so its supervisor restarts it whole.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use paygate_common::supervisor::FAULT_VARIABLE;
use paygate_testkit::{Process, Service, Suite, SuiteOptions};

const BINARY: &str = env!("CARGO_BIN_EXE_paygate-callback-processor");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_processor_whose_outbox_relay_panics_stops_and_exits_non_zero() {
    let suite = Suite::start_with(SuiteOptions {
        external: vec![Service::CallbackProcessor],
        ..SuiteOptions::default()
    })
    .await;
    let mut env = suite.env();
    env.push((FAULT_VARIABLE.to_owned(), "outbox relay".to_owned()));
    let mut processor = Process::spawn_logged(BINARY, &env);
    let status = processor.wait(Duration::from_secs(60)).await;
    let logs = processor.logs();
    assert!(!status.success(), "exit {status}; logs:\n{logs}");
    assert!(logs.contains("outbox relay panicked"), "{logs}");
    assert!(
        logs.contains("a task of the service ended; stopping the service"),
        "{logs}"
    );
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_processor_left_alone_keeps_running_and_exits_zero_on_sigterm() {
    let suite = Suite::start_with(SuiteOptions {
        external: vec![Service::CallbackProcessor],
        ..SuiteOptions::default()
    })
    .await;
    let mut env = suite.env();
    env.push((FAULT_VARIABLE.to_owned(), "no such task".to_owned()));
    let processor = Process::spawn_logged(BINARY, &env);
    // Past the moment a fault would have struck.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = processor.terminate_with_status().await;
    assert!(status.success(), "exit {status}");
    suite.stop().await;
}
