//! The layer's added cost per call, measured in one run against the bare inner service.
//!
//! Run with `cargo bench -p paybond-middleware-core --bench layer_overhead`.
//! Prints ns per call (median of several rounds) for:
//! - the bare inner tool service (the floor);
//! - a read-only tool through the layer (passthrough);
//! - a side-effecting tool through the layer over the scripted test gateway
//!   (verify, evidence and complete; the fake records every call);
//! - the same over a gateway that answers allow and records nothing, which
//!   isolates the layer's own work.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches panic on setup failures

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use paybond_middleware_core::testing::ScriptedGateway;
use paybond_middleware_core::wire::{
    ApprovalStatus, CompleteRequest, CompleteResponse, Environment, EvidenceRequest,
    EvidenceResponse, LifecycleStatus, Principal, Role, VerifyRequest, VerifyResult,
};
use paybond_middleware_core::{GatewayError, PaybondAgentRun, SpendGateway, ToolCall, ToolOutput};
use paybond_policies::ToolPolicy;
use serde_json::json;
use tower::{Layer, Service, ServiceExt, service_fn};
use uuid::Uuid;

const CALLS: u32 = 20_000;
const ROUNDS: usize = 7;

/// Answers allow to everything and keeps nothing.
struct AllowAll;

#[async_trait]
impl SpendGateway for AllowAll {
    async fn principal(&self) -> Result<Principal, GatewayError> {
        Ok(Principal {
            tenant_id: "tenant_bench".into(),
            environment: Environment::Sandbox,
            service_account_role: Role::Agent,
            roles: vec![],
            subject: String::new(),
            key_id: String::new(),
        })
    }
    async fn verify(&self, request: &VerifyRequest) -> Result<VerifyResult, GatewayError> {
        Ok(VerifyResult {
            allow: true,
            audit_id: None,
            tenant: "tenant_bench".into(),
            intent_id: request.intent_id,
            code: None,
            message: None,
            decision_id: Some(Uuid::new_v4()),
            approval_request_id: None,
            policy_version: None,
            policy_digest: None,
            reason_codes: vec![],
            spend_scope: None,
            remaining_cents: None,
            retry_after: None,
            approval_required: false,
            checks: Vec::new(),
        })
    }
    async fn complete_decision(
        &self,
        _decision_id: Uuid,
        _request: &CompleteRequest,
        _key: &str,
    ) -> Result<CompleteResponse, GatewayError> {
        Ok(CompleteResponse::default())
    }
    async fn submit_evidence(
        &self,
        intent_id: Uuid,
        request: &EvidenceRequest,
        _key: &str,
    ) -> Result<EvidenceResponse, GatewayError> {
        Ok(EvidenceResponse {
            tenant_id: "tenant_bench".into(),
            intent_id,
            operation: request.operation.clone().unwrap_or_default(),
            requested_spend_cents: request.requested_spend_cents.unwrap_or_default(),
            sandbox_lifecycle_status: LifecycleStatus::EvidenceSubmitted,
            predicate_passed: true,
        })
    }
    async fn approval_status(&self, _id: Uuid) -> Result<ApprovalStatus, GatewayError> {
        Err(GatewayError::Config("not used".into()))
    }
}

fn tool()
-> impl Service<ToolCall, Response = ToolOutput, Error = std::convert::Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(|call: ToolCall| async move {
        Ok(ToolOutput::new(json!({"ok": true, "hotel": call.args["hotel"]})).with_cost_cents(100))
    })
}

async fn measure<S>(mut svc: S, tool: &str) -> f64
where
    S: Service<ToolCall, Response = ToolOutput>,
    S::Error: std::fmt::Debug,
{
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for i in 0..CALLS {
            let call = ToolCall::new(tool, json!({"hotel": "h1"}), format!("call_{i}"));
            let out = svc.ready().await.unwrap().call(call).await.unwrap();
            black_box(out);
        }
        rounds.push(started.elapsed().as_nanos() as f64 / f64::from(CALLS));
    }
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

async fn bind(gateway: Arc<dyn SpendGateway>) -> PaybondAgentRun {
    PaybondAgentRun::builder(gateway, Uuid::new_v4(), "token".into())
        .tool(
            "travel.book_hotel",
            ToolPolicy::side_effecting("cost_and_completion").with_max_spend_cents(20_000),
        )
        .tool("travel.search_hotels", ToolPolicy::read_only())
        .bind()
        .await
        .unwrap()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm-up, so allocator and caches are in the same state for every measurement.
        measure(tool(), "travel.book_hotel").await;

        let bare = measure(tool(), "travel.book_hotel").await;
        let passthrough_run = bind(Arc::new(AllowAll)).await;
        let passthrough = measure(passthrough_run.layer(tool()), "travel.search_hotels").await;
        let null_run = bind(Arc::new(AllowAll)).await;
        let guarded_null = measure(null_run.layer(tool()), "travel.book_hotel").await;
        let scripted_run = bind(Arc::new(ScriptedGateway::new())).await;
        let guarded_scripted = measure(scripted_run.layer(tool()), "travel.book_hotel").await;

        println!("layer_overhead: {CALLS} calls x {ROUNDS} rounds, median ns/call, current-thread runtime");
        println!("  bare inner service                 {bare:>10.0} ns");
        println!(
            "  passthrough (read-only tool)       {passthrough:>10.0} ns  (+{:.0} ns, x{:.1})",
            passthrough - bare,
            passthrough / bare
        );
        println!(
            "  side-effecting, allow-all gateway  {guarded_null:>10.0} ns  (+{:.0} ns, x{:.1})",
            guarded_null - bare,
            guarded_null / bare
        );
        println!(
            "  side-effecting, scripted gateway   {guarded_scripted:>10.0} ns  (+{:.0} ns, x{:.1})",
            guarded_scripted - bare,
            guarded_scripted / bare
        );
        let trace_len = scripted_run.trace().entries().len() + null_run.trace().entries().len();
        black_box(trace_len);
    });
}
