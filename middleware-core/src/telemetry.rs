//! OpenTelemetry export (feature `otel`): traces and metrics over OTLP/HTTP, off
//! unless the standard `OTEL_*` variables ask for it.
//!
//! One call in `main` sets up logging and export for an agent process:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Logs to stderr (RUST_LOG, default `warn`); spans and metrics to the OTLP
//! // endpoint when OTEL_EXPORTER_OTLP_ENDPOINT is set. Keep the guard: dropping
//! // it flushes what is still buffered.
//! let _telemetry = paybond_middleware_core::telemetry::init("my-agent")?;
//! # Ok(())
//! # }
//! ```
//!
//! With export on, the layer's tool call span follows the OpenTelemetry GenAI
//! conventions (`execute_tool <tool>`, with `gen_ai.operation.name`,
//! `gen_ai.tool.name`, `gen_ai.tool.call.id`) and carries the decision under
//! `paybond.*` (outcome, reason code, amount and currency, intent, decision and
//! policy version). No secret and no tool argument is ever an attribute.
//! [`HttpGateway`](crate::HttpGateway) sends the W3C `traceparent` of the current
//! span, and the gateway's server continues it, so a tool call is one trace across
//! the agent and the gateway.
//!
//! The variables read (as every OpenTelemetry SDK reads them):
//!
//! | variable | meaning |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | the collector's base URL (`http://localhost:4318`); `/v1/traces` and `/v1/metrics` are appended. Export is off without it (or a signal's own endpoint). |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` | a signal's full URL |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` (and per signal) | `http/protobuf` (default) or `http/json`; `grpc` is refused with a message |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` | sent headers (a vendor's API key), the export timeout |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource; the service name defaults to the one given to [`init`] |
//! | `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`, `OTEL_METRICS_EXPORTER=none` | turn export (or one signal) off |
//! | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_METRIC_EXPORT_INTERVAL` | how often spans and metrics are sent |

use std::fmt;

use opentelemetry::propagation::Injector;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Why telemetry could not be set up. The message names the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A variable asks for something this build does not do, or does not parse.
    #[error("{variable}: {message}")]
    Config {
        /// The variable.
        variable: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The exporter could not be built.
    #[error("cannot build the OTLP {signal} exporter: {message}")]
    Exporter {
        /// `traces`, `metrics`, or both (their shared HTTP client).
        signal: &'static str,
        /// The exporter's error.
        message: String,
    },
    /// A global tracing subscriber was already installed (by [`init`]).
    #[error("a tracing subscriber is already installed: {0}")]
    Subscriber(String),
}

/// What [`from_env`] set up: the providers that export, if any. Dropping it
/// flushes and shuts them down.
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces", &self.tracer.is_some())
            .field("metrics", &self.meter.is_some())
            .finish()
    }
}

impl Telemetry {
    /// No export.
    pub fn disabled() -> Self {
        Self {
            tracer: None,
            meter: None,
        }
    }

    /// Whether spans are exported.
    pub fn traces(&self) -> bool {
        self.tracer.is_some()
    }

    /// Whether metrics are exported.
    pub fn metrics(&self) -> bool {
        self.meter.is_some()
    }

    /// The `tracing` layer that turns the project's spans into OpenTelemetry spans
    /// (those of the `paybond*` crates, at `INFO` and above), or `None` when spans
    /// are not exported. Add it to your own subscriber if you build one; [`init`]
    /// does it for you.
    ///
    /// Only the project's spans: an agent framework's own spans may carry tool
    /// arguments and results as attributes (rig's `execute_tool` has fields for
    /// them), which this export never sends. To export spans of your own crate
    /// too, add a layer of [`Self::tracer`] filtered to it.
    pub fn layer<S>(&self) -> Option<Box<dyn Layer<S> + Send + Sync + 'static>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.tracer()?;
        let only_ours = tracing_subscriber::filter::filter_fn(|meta| {
            meta.target().starts_with("paybond") && *meta.level() <= tracing::Level::INFO
        });
        Some(Box::new(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(only_ours),
        ))
    }

    /// The tracer spans are exported with, or `None` when they are not: for a
    /// `tracing_opentelemetry` layer of your own (filtered to your crate).
    pub fn tracer(&self) -> Option<opentelemetry_sdk::trace::Tracer> {
        self.tracer.as_ref().map(|t| t.tracer("paybond"))
    }

    /// Sends what is buffered now.
    pub fn flush(&self) {
        if let Some(t) = &self.tracer {
            let _ = t.force_flush();
        }
        if let Some(m) = &self.meter {
            let _ = m.force_flush();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(t) = self.tracer.take() {
            let _ = t.shutdown();
        }
        if let Some(m) = self.meter.take() {
            let _ = m.shutdown();
        }
    }
}

/// Sets up logging to stderr (filtered by `RUST_LOG`, default `warn`) and, when the
/// `OTEL_*` variables ask for it, OTLP export of traces and metrics, as the
/// process's global subscriber, meter provider and propagator. `service_name` is
/// the resource's `service.name` unless `OTEL_SERVICE_NAME` (or
/// `OTEL_RESOURCE_ATTRIBUTES`) names one. Keep the returned guard alive.
pub fn init(service_name: &str) -> Result<Telemetry, TelemetryError> {
    init_with_log_filter(service_name, "warn")
}

/// [`init`], with `default_filter` for the logs when `RUST_LOG` is not set.
pub fn init_with_log_filter(
    service_name: &str,
    default_filter: &str,
) -> Result<Telemetry, TelemetryError> {
    let telemetry = from_env(service_name)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(logs)
        .with(telemetry.layer())
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    Ok(telemetry)
}

/// Reads the `OTEL_*` variables and builds the exporting providers they ask for;
/// installs the meter provider and the W3C trace-context propagator globally.
/// Nothing is installed when export is off. Install [`Telemetry::layer`] in your
/// subscriber to export spans.
pub fn from_env(service_name: &str) -> Result<Telemetry, TelemetryError> {
    from_vars(service_name, |name| std::env::var(name).ok())
}

/// A variable's value, if set and not blank.
fn value(var: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    var(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether a signal is exported: an endpoint is set (the common one or its own),
/// and `OTEL_<SIGNAL>S_EXPORTER` is not `none`.
fn exported(var: &impl Fn(&str) -> Option<String>, signal: &str) -> Result<bool, TelemetryError> {
    let upper = signal.to_ascii_uppercase();
    let exporter_var = if signal == "traces" {
        "OTEL_TRACES_EXPORTER"
    } else {
        "OTEL_METRICS_EXPORTER"
    };
    match value(var, exporter_var).as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(false),
        Some(other) => {
            return Err(TelemetryError::Config {
                variable: exporter_var,
                message: format!("`{other}` is not supported; use `otlp` or `none`"),
            });
        }
    }
    Ok(value(var, "OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || value(var, &format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")).is_some())
}

/// The OTLP protocol of `signal`: its own variable, else the common one, else
/// `http/protobuf`.
fn protocol(
    var: &impl Fn(&str) -> Option<String>,
    signal: &'static str,
) -> Result<Protocol, TelemetryError> {
    let own: &'static str = if signal == "traces" {
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    } else {
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
    };
    let (variable, chosen) = match value(var, own) {
        Some(p) => (own, p),
        None => match value(var, "OTEL_EXPORTER_OTLP_PROTOCOL") {
            Some(p) => ("OTEL_EXPORTER_OTLP_PROTOCOL", p),
            None => return Ok(Protocol::HttpBinary),
        },
    };
    match chosen.as_str() {
        "http/protobuf" => Ok(Protocol::HttpBinary),
        "http/json" => Ok(Protocol::HttpJson),
        "grpc" => Err(TelemetryError::Config {
            variable,
            message: "`grpc` is not supported by this build: export OTLP over HTTP \
                      (`http/protobuf`, the collector's port 4318)"
                .to_owned(),
        }),
        other => Err(TelemetryError::Config {
            variable,
            message: format!(
                "`{other}` is not an OTLP protocol; use `http/protobuf` or `http/json`"
            ),
        }),
    }
}

/// [`from_env`] over any source of variables.
fn from_vars(
    service_name: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Telemetry, TelemetryError> {
    if value(&var, "OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(Telemetry::disabled());
    }
    let traces = exported(&var, "traces")?;
    let metrics = exported(&var, "metrics")?;
    if !traces && !metrics {
        return Ok(Telemetry::disabled());
    }
    let traces_protocol = protocol(&var, "traces")?;
    let metrics_protocol = protocol(&var, "metrics")?;
    let named = value(&var, "OTEL_SERVICE_NAME").is_some()
        || value(&var, "OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
            a.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    // The builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES itself.
    let resource = if named {
        Resource::builder().build()
    } else {
        Resource::builder()
            .with_service_name(service_name.to_owned())
            .build()
    };
    let client = http_client()?;
    let tracer = if traces {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(traces_protocol)
            .with_http_client(client.clone())
            .build()
            .map_err(|e| TelemetryError::Exporter {
                signal: "traces",
                message: e.to_string(),
            })?;
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.clone())
                .build(),
        )
    } else {
        None
    };
    let meter = if metrics {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(metrics_protocol)
            .with_http_client(client)
            .build()
            .map_err(|e| TelemetryError::Exporter {
                signal: "metrics",
                message: e.to_string(),
            })?;
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter).build())
            .with_resource(resource)
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        Some(provider)
    } else {
        None
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(Telemetry { tracer, meter })
}

/// The exporters' HTTP client: blocking (the SDK exports from its own threads),
/// rustls on ring for `https` endpoints. Built on a thread of its own, as a
/// blocking client must not be built or dropped inside an async runtime.
fn http_client() -> Result<reqwest_blocking::blocking::Client, TelemetryError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let built = std::thread::spawn(|| reqwest_blocking::blocking::Client::builder().build())
        .join()
        .map_err(|_| TelemetryError::Exporter {
            signal: "traces and metrics",
            message: "the HTTP client's builder panicked".to_owned(),
        })?;
    built.map_err(|e| TelemetryError::Exporter {
        signal: "traces and metrics",
        message: format!("cannot build the HTTP client: {e}"),
    })
}

/// Writes the W3C trace context of `span` (`traceparent`, `tracestate`) into
/// `headers`, through the global propagator: nothing when export is off.
pub(crate) fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    struct Headers<'a>(&'a mut http::HeaderMap);
    impl Injector for Headers<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                http::header::HeaderName::from_bytes(key.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Headers(headers));
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn export_is_off_without_an_endpoint_or_when_disabled() {
        let t = from_vars("svc", vars(&[])).unwrap();
        assert!(!t.traces() && !t.metrics());
        let t = from_vars(
            "svc",
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
                ("OTEL_SDK_DISABLED", "true"),
            ]),
        )
        .unwrap();
        assert!(!t.traces() && !t.metrics());
    }

    #[test]
    fn one_signal_can_be_turned_off() {
        let t = from_vars(
            "svc",
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
                ("OTEL_METRICS_EXPORTER", "none"),
            ]),
        )
        .unwrap();
        assert!(t.traces() && !t.metrics());
        let t = from_vars(
            "svc",
            vars(&[(
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://127.0.0.1:9/m",
            )]),
        )
        .unwrap();
        assert!(!t.traces() && t.metrics());
    }

    #[test]
    fn an_unsupported_protocol_is_refused_naming_the_variable() {
        let err = from_vars(
            "svc",
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL: `grpc`"),
            "{err}"
        );
        let err = from_vars(
            "svc",
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "carrier-pigeon"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL:"),
            "{err}"
        );
        let err = from_vars(
            "svc",
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
                ("OTEL_TRACES_EXPORTER", "zipkin"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("OTEL_TRACES_EXPORTER:"), "{err}");
        let json = from_vars(
            "svc",
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ]),
        )
        .unwrap();
        assert!(json.traces());
    }
}
