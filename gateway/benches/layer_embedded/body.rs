// The bench's code, shared by `layer_embedded` (the system allocator) and
// `layer_embedded_mimalloc`; each defines `ALLOCATOR_NAME`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use paybond_gateway::{EmbeddedGateway, PolicyFile};
use paybond_middleware_core::wire::{
    ApprovalStatus, CompleteRequest, CompleteResponse, EffectivePolicy, EvidenceRequest,
    EvidenceResponse, Principal, SandboxBootstrapRequest, VerifyRequest, VerifyResult,
};
use paybond_middleware_core::{GatewayError, PaybondAgentRun, SpendGateway, ToolCall, ToolOutput};
use serde_json::json;
use tower::{Service, ServiceExt, service_fn};
use uuid::Uuid;

const CALLS: u32 = 10_000;
const ROUNDS: usize = 5;
const POLICY: &str = "version: 1\nname: bench\ndefault_deny: true\ntools:\n  bench.pay: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}\n";

/// A gateway that adds up the time spent in each call to the one it wraps.
struct Timed {
    inner: Arc<EmbeddedGateway>,
    nanos: AtomicU64,
}

impl Timed {
    async fn time<T>(&self, f: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = f.await;
        self.nanos.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        out
    }
}

#[async_trait]
impl SpendGateway for Timed {
    async fn principal(&self) -> Result<Principal, GatewayError> {
        self.inner.principal().await
    }
    async fn verify(&self, request: &VerifyRequest) -> Result<VerifyResult, GatewayError> {
        self.time(self.inner.verify(request)).await
    }
    async fn complete_decision(
        &self,
        decision_id: Uuid,
        request: &CompleteRequest,
        key: &str,
    ) -> Result<CompleteResponse, GatewayError> {
        self.time(self.inner.complete_decision(decision_id, request, key))
            .await
    }
    async fn submit_evidence(
        &self,
        intent_id: Uuid,
        request: &EvidenceRequest,
        key: &str,
    ) -> Result<EvidenceResponse, GatewayError> {
        self.time(self.inner.submit_evidence(intent_id, request, key))
            .await
    }
    async fn approval_status(&self, id: Uuid) -> Result<ApprovalStatus, GatewayError> {
        self.inner.approval_status(id).await
    }
    async fn effective_policy(&self) -> Result<Option<EffectivePolicy>, GatewayError> {
        self.inner.effective_policy().await
    }
}

fn call(i: u32) -> ToolCall {
    ToolCall::new(
        "bench.pay",
        json!({"amount_cents": 1, "memo": "bench"}),
        format!("call_{i}"),
    )
}

/// Median ns per call of `CALLS` calls through `svc`, over `ROUNDS` rounds, and
/// the median ns per call spent in the gateway (`timed`, if any).
async fn measure<S>(svc: &mut S, timed: Option<&Timed>) -> (f64, f64)
where
    S: Service<ToolCall, Response = ToolOutput>,
    S::Error: std::fmt::Debug,
{
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        if let Some(t) = timed {
            t.nanos.store(0, Ordering::Relaxed);
        }
        let started = Instant::now();
        for i in 0..CALLS {
            let out = svc.ready().await.unwrap().call(call(i)).await.unwrap();
            black_box(out);
        }
        let total = started.elapsed().as_nanos() as f64 / f64::from(CALLS);
        let inside = timed.map_or(0.0, |t| {
            t.nanos.load(Ordering::Relaxed) as f64 / f64::from(CALLS)
        });
        rounds.push((total, inside));
    }
    rounds.sort_by(|a, b| (a.0 - a.1).total_cmp(&(b.0 - b.1)));
    rounds[ROUNDS / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let gateway = Arc::new(
            EmbeddedGateway::with_policy(
                PolicyFile {
                    text: POLICY.into(),
                    file: "bench.yaml".into(),
                },
                None,
            )
            .unwrap(),
        );
        let intent = gateway
            .bootstrap_sandbox(&SandboxBootstrapRequest {
                operation: "bench.pay".into(),
                requested_spend_cents: 1_000_000_000_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let timed = Arc::new(Timed {
            inner: gateway,
            nanos: AtomicU64::new(0),
        });
        let run = PaybondAgentRun::builder(
            timed.clone(),
            intent.intent_id,
            intent.capability_token,
        )
        .bind()
        .await
        .unwrap();
        let tool = service_fn(|call: ToolCall| async move {
            Ok::<_, std::convert::Infallible>(
                ToolOutput::new(json!({"ok": true, "memo": call.args["memo"]})).with_cost_cents(1),
            )
        });
        let mut bare = tool;
        let (bare_ns, _) = measure(&mut bare, None).await;
        let mut guarded = tower::Layer::layer(&run, tool);
        // Warm-up: the engine's statements and the run's maps.
        measure(&mut guarded, Some(&timed)).await;
        let (total, engine) = measure(&mut guarded, Some(&timed)).await;
        println!(
            "layer_embedded: {CALLS} calls x {ROUNDS} rounds, median, in-memory engine, current-thread runtime, {ALLOCATOR_NAME}"
        );
        println!("  bare tool                          {bare_ns:>10.0} ns");
        println!("  guarded call, embedded gateway     {total:>10.0} ns");
        println!("  of which in the gateway's calls    {engine:>10.0} ns");
        println!(
            "  the layer's own                    {:>10.0} ns   (goal <= 3,000)",
            total - engine - bare_ns
        );
        black_box(run.trace().entries().len());
    });
}
