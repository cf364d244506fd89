//! Tracing, set up once per process: JSON lines by default, `RUST_LOG` overrides the
//! level (`info` otherwise). Spans carry transaction ids, never card numbers or secrets.
//!
//! With the `otlp` feature and `log.otlp_endpoint` set, spans are also exported over
//! OTLP/HTTP through `tracing-opentelemetry`, under the payment's trace id (see
//! [`crate::trace`]). The returned [`Telemetry`] flushes the exporter when dropped, at
//! the end of `main`.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. A second call (tests starting several services in one
/// process) keeps the first one and does nothing.
pub fn init(format: LogFormat) {
    let _ = init_service(
        &LogSettings {
            format,
            otlp_endpoint: String::new(),
        },
        "paygate",
    );
}

/// [`init`] for a service: logs as `settings.format` says, and exports spans named
/// `service` when configured to.
pub fn init_service(settings: &LogSettings, service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (export, telemetry) = otlp::layer(&settings.otlp_endpoint, service);
    let registry = tracing_subscriber::registry().with(filter).with(export);
    let _already_set = match settings.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer()).try_init(),
    };
    if telemetry.unavailable {
        tracing::warn!(
            endpoint = %settings.otlp_endpoint,
            "log.otlp_endpoint is set but this build has no OTLP exporter (feature paygate-common/otlp); spans are not exported"
        );
    }
    telemetry
}

/// Keeps the span exporter, if any, and flushes it when dropped.
#[derive(Default)]
#[must_use = "dropping it flushes and stops the span exporter"]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// An endpoint was configured, but this build cannot export.
    unavailable: bool,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("flushing the span exporter failed: {error}");
            }
        }
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::registry::LookupSpan;

    use super::Telemetry;

    /// The export layer for `endpoint`, or none when it is empty (or cannot be built,
    /// which is reported and leaves logging as it is).
    pub(super) fn layer<S>(
        endpoint: &str,
        service: &'static str,
    ) -> (
        Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>>,
        Telemetry,
    )
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        if endpoint.is_empty() {
            return (None, Telemetry::default());
        }
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
        {
            Ok(exporter) => exporter,
            Err(error) => {
                eprintln!("cannot export spans to {endpoint}: {error}");
                return (None, Telemetry::default());
            }
        };
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .build(),
            )
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
        (
            Some(layer),
            Telemetry {
                provider: Some(provider),
                unavailable: false,
            },
        )
    }
}

#[cfg(not(feature = "otlp"))]
mod otlp {
    use super::Telemetry;

    /// No exporter in this build: nothing to add, and a configured endpoint is reported.
    pub(super) fn layer(
        endpoint: &str,
        _service: &'static str,
    ) -> (Option<tracing_subscriber::layer::Identity>, Telemetry) {
        (
            None,
            Telemetry {
                unavailable: !endpoint.is_empty(),
            },
        )
    }
}
