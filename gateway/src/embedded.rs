//! The engine as a [`SpendGateway`] in the same process: no HTTP, same decisions.

use std::sync::Arc;

use async_trait::async_trait;
use paybond_middleware_core::wire::{
    ApprovalStatus, CompensationRecorded, CompensationRequest, CompleteRequest, CompleteResponse,
    CreateIntentRequest, EffectivePolicy, EvidenceRequest, EvidenceResponse, IntentView, Principal,
    SandboxBootstrapRequest, SandboxBootstrapResponse, VerifyRequest, VerifyResult,
};
use paybond_middleware_core::{ApiKey, GatewayError, SpendGateway};
use uuid::Uuid;

use crate::engine::Engine;
use crate::error::ApiError;

/// An [`Engine`] bound to one API key, usable wherever a [`SpendGateway`] is.
///
/// Each call runs on tokio's blocking pool (the engine's SQLite transactions block),
/// so it suits any runtime flavour. Refusals come back as
/// [`GatewayError::Rejected`] with the same status and code the HTTP server sends.
#[derive(Debug, Clone)]
pub struct EmbeddedGateway {
    engine: Arc<Engine>,
    principal: Principal,
}

fn rejected(operation: &'static str, e: ApiError) -> GatewayError {
    GatewayError::Rejected {
        operation,
        status: e.status,
        code: e.code.to_owned(),
        message: e.message,
        request_id: None,
    }
}

impl EmbeddedGateway {
    /// Binds `engine` to `api_key`; fails if the engine did not issue the key.
    pub fn new(engine: Arc<Engine>, api_key: &ApiKey) -> Result<Self, ApiError> {
        let principal = engine.authenticate(api_key.expose_secret())?;
        Ok(Self { engine, principal })
    }

    /// The engine behind this gateway.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Who the bound key is.
    pub fn principal_ref(&self) -> &Principal {
        &self.principal
    }

    async fn run<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Engine, &Principal) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, GatewayError> {
        let engine = self.engine.clone();
        let principal = self.principal.clone();
        tokio::task::spawn_blocking(move || f(&engine, &principal))
            .await
            .map_err(|e| GatewayError::Transport {
                operation,
                detail: format!("the embedded engine's task failed: {e}"),
            })?
            .map_err(|e| rejected(operation, e))
    }

    /// `POST /harbor/intents`.
    pub async fn create_intent(
        &self,
        request: &CreateIntentRequest,
    ) -> Result<IntentView, GatewayError> {
        let request = request.clone();
        self.run("create_intent", move |e, p| e.create_intent(p, &request))
            .await
    }

    /// `POST /v1/sandbox/guardrails/bootstrap`.
    pub async fn bootstrap_sandbox(
        &self,
        request: &SandboxBootstrapRequest,
    ) -> Result<SandboxBootstrapResponse, GatewayError> {
        let request = request.clone();
        self.run("bootstrap", move |e, p| e.bootstrap_sandbox(p, &request))
            .await
    }
}

#[async_trait]
impl SpendGateway for EmbeddedGateway {
    async fn principal(&self) -> Result<Principal, GatewayError> {
        Ok(self.principal.clone())
    }

    async fn verify(&self, request: &VerifyRequest) -> Result<VerifyResult, GatewayError> {
        self.engine
            .verify_async(self.principal.clone(), request.clone())
            .await
            .map_err(|e| rejected("verify", e))
    }

    async fn complete_decision(
        &self,
        decision_id: Uuid,
        request: &CompleteRequest,
        idempotency_key: &str,
    ) -> Result<CompleteResponse, GatewayError> {
        self.engine
            .complete_async(
                self.principal.clone(),
                decision_id,
                request.clone(),
                Some(idempotency_key.to_owned()),
            )
            .await
            .map_err(|e| rejected("complete", e))
    }

    async fn submit_evidence(
        &self,
        intent_id: Uuid,
        request: &EvidenceRequest,
        idempotency_key: &str,
    ) -> Result<EvidenceResponse, GatewayError> {
        self.engine
            .submit_evidence_async(
                self.principal.clone(),
                intent_id,
                request.clone(),
                Some(idempotency_key.to_owned()),
            )
            .await
            .map_err(|e| rejected("evidence", e))
    }

    async fn approval_status(
        &self,
        approval_request_id: Uuid,
    ) -> Result<ApprovalStatus, GatewayError> {
        self.run("approval_status", move |e, p| {
            e.approval(p, approval_request_id)
        })
        .await
    }

    async fn record_compensation(
        &self,
        decision_id: Uuid,
        request: &CompensationRequest,
    ) -> Result<CompensationRecorded, GatewayError> {
        let request = request.clone();
        let key = Uuid::new_v4().to_string();
        self.run("record_compensation", move |e, p| {
            e.record_compensation(p, decision_id, &request, Some(&key))
        })
        .await
    }

    async fn effective_policy(&self) -> Result<Option<EffectivePolicy>, GatewayError> {
        match self
            .run("effective_policy", |e, p| e.effective_policy(p))
            .await
        {
            Ok(policy) => Ok(Some(policy)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
