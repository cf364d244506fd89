//! The api binary supervises its own tasks: its HTTP server dying takes the whole
//! process down with a non-zero exit; SIGTERM drains it and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use paygate_common::supervisor::FAULT_VARIABLE;
use paygate_testkit::{eventually, Process, Service, Suite, SuiteOptions};

const BINARY: &str = env!("CARGO_BIN_EXE_paygate-api");

fn every_service_outside() -> SuiteOptions {
    SuiteOptions {
        external: vec![
            Service::Api,
            Service::PaymentProcessor,
            Service::CallbackProcessor,
            Service::CallbackDispatcher,
        ],
        ..SuiteOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_whose_http_server_panics_stops_and_exits_non_zero() {
    let suite = Suite::start_with(every_service_outside()).await;
    let mut env = suite.env();
    env.push((FAULT_VARIABLE.to_owned(), "http server".to_owned()));
    let mut api = Process::spawn_logged(BINARY, &env);
    let status = api.wait(Duration::from_secs(60)).await;
    let logs = api.logs();
    assert!(!status.success(), "exit {status}; logs:\n{logs}");
    assert!(logs.contains("http server panicked"), "{logs}");
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_answers_ready_then_exits_zero_on_sigterm() {
    let suite = Suite::start_with(every_service_outside()).await;
    let api = Process::spawn_logged(BINARY, &suite.env());
    let readyz = format!("{}/readyz", suite.api_url);
    eventually("the api to be ready", Duration::from_secs(60), || async {
        let response = suite.http.get(&readyz).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    let status = api.terminate_with_status().await;
    assert!(status.success(), "exit {status}");
    suite.stop().await;
}
