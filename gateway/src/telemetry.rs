//! OpenTelemetry for the server (feature `otel`): each request continues the
//! caller's W3C trace context, and the engine's decision metrics go to the
//! process's global meter provider (set up by
//! `paybond_middleware_core::telemetry`), alongside `/metrics`.
//!
//! The instruments:
//!
//! | name | kind | attributes |
//! |---|---|---|
//! | `paybond.decisions` | counter | `paybond.outcome`, `paybond.reason_code` (the first, or `none`) |
//! | `paybond.decision.duration` | histogram, seconds | `paybond.outcome` |
//! | `paybond.reservations.open` | gauge | |
//! | `paybond.approvals.pending` | gauge | |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::propagation::Extractor;
use paybond_middleware_core::wire::VerifyResult;

use crate::engine::Engine;

/// Makes `span` a child of the trace context in `headers` (`traceparent`,
/// `tracestate`), read by the global propagator: nothing when export is off or
/// the caller sent none.
pub(crate) fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    struct Headers<'a>(&'a HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let _ = span.set_parent(parent);
}

/// The engine's instruments, once [`spawn_metrics_export`] made them.
pub(crate) struct Instruments {
    decisions: Counter<u64>,
    duration: Histogram<f64>,
}

impl std::fmt::Debug for Instruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instruments").finish_non_exhaustive()
    }
}

impl Instruments {
    /// One verify's outcome, first reason and latency.
    pub(crate) fn record(&self, result: &VerifyResult, elapsed: Duration) {
        let outcome = KeyValue::new("paybond.outcome", result.decision().as_str());
        let reason = KeyValue::new(
            "paybond.reason_code",
            result
                .reason_codes
                .first()
                .cloned()
                .unwrap_or_else(|| "none".to_owned()),
        );
        self.decisions.add(1, &[outcome.clone(), reason]);
        self.duration.record(elapsed.as_secs_f64(), &[outcome]);
    }
}

/// Makes the engine's instruments on the global meter provider and refreshes the
/// gauges (open reservations, pending approvals) every `every`, reading the store
/// off the async threads. Call it after `paybond_middleware_core::telemetry` set
/// the provider up; a second call changes nothing.
pub fn spawn_metrics_export(engine: Arc<Engine>, every: Duration) -> tokio::task::JoinHandle<()> {
    let meter = opentelemetry::global::meter("paybond-gateway");
    let open = Arc::new(AtomicU64::new(0));
    let pending = Arc::new(AtomicU64::new(0));
    let instruments = Instruments {
        decisions: meter
            .u64_counter("paybond.decisions")
            .with_description("Verify decisions by outcome and first reason code.")
            .with_unit("{decision}")
            .build(),
        duration: meter
            .f64_histogram("paybond.decision.duration")
            .with_description("Time to decide a verify.")
            .with_unit("s")
            .with_boundaries(
                crate::engine::LATENCY_BOUNDS_US
                    .iter()
                    .map(|us| *us as f64 / 1e6)
                    .collect(),
            )
            .build(),
    };
    let gauge_open = open.clone();
    let _ = meter
        .u64_observable_gauge("paybond.reservations.open")
        .with_description("Reservations not yet finalized.")
        .with_unit("{reservation}")
        .with_callback(move |o| o.observe(gauge_open.load(Ordering::Relaxed), &[]))
        .build();
    let gauge_pending = pending.clone();
    let _ = meter
        .u64_observable_gauge("paybond.approvals.pending")
        .with_description("Approval requests waiting for an operator.")
        .with_unit("{approval}")
        .with_callback(move |o| o.observe(gauge_pending.load(Ordering::Relaxed), &[]))
        .build();
    let _ = engine.metrics.otel.set(instruments);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let read = async {
                Ok::<_, crate::ApiError>((
                    engine.open_reservations().await?,
                    engine.pending_approvals().await?,
                ))
            };
            match read.await {
                Ok((o, p)) => {
                    open.store(o, Ordering::Relaxed);
                    pending.store(p, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the gauges"),
            }
        }
    })
}
