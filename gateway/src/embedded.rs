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

use crate::engine::{Engine, EngineConfig, PolicyFile};
use crate::error::ApiError;
use crate::store::{Storage, database_path};

/// The tenant [`EmbeddedGateway::with_policy`] keeps its intents under.
const EMBEDDED_TENANT: &str = "embedded";

/// An [`Engine`] bound to one API key, usable wherever a [`SpendGateway`] is.
///
/// Each call is one of the engine's async calls (whose store work runs on tokio's
/// blocking pool, or on its writer thread), so it suits any runtime flavour.
/// Refusals come back as [`GatewayError::Rejected`] with the same status and code
/// the HTTP server sends.
#[derive(Debug, Clone)]
pub struct EmbeddedGateway {
    engine: Arc<Engine>,
    principal: Principal,
    /// The tenant's operator, when the gateway was opened with its keys
    /// ([`Self::with_policy`]): what approves a hold in process.
    operator: Option<Principal>,
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
        // A constructor, run once: it waits for the store on the caller's thread.
        let principal = engine.authenticate_blocking(api_key.expose_secret())?;
        Ok(Self {
            engine,
            principal,
            operator: None,
        })
    }

    /// Your policy on the engine in process, in one call: an engine in memory
    /// (`data_dir` `None`: gone with the process) or in `data_dir` (created if
    /// missing; `paybond.db` in it, kept across runs), one sandbox tenant whose
    /// policy is `policy` alone (no org base above it), and a gateway bound to
    /// that tenant's agent key, holding its operator key for [`Self::approve`] and
    /// [`Self::deny`].
    ///
    /// A policy that does not check is refused with every problem listed. In a
    /// data directory used before, the tenant is the same (its ledger goes on),
    /// `policy` is published over the one it had, and its keys are issued anew.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use paybond_gateway::{EmbeddedGateway, PolicyFile};
    /// use paybond_middleware_core::SpendGateway;
    ///
    /// let policy = PolicyFile {
    ///     text: "version: 1\nname: shop\ndefault_deny: true\ntools:\n  \
    ///            shop.buy: {side_effecting: true, spend_from_args: amount_cents, \
    ///            evidence_preset: cost_and_completion}\n"
    ///         .into(),
    ///     file: "shop.yaml".into(),
    /// };
    /// let gateway = EmbeddedGateway::with_policy(policy, None)?;
    /// let tools = gateway.effective_policy().await?.ok_or("no policy")?.policy.tools;
    /// assert!(tools.contains_key("shop.buy"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_policy(
        policy: PolicyFile,
        data_dir: Option<&std::path::Path>,
    ) -> Result<Self, ApiError> {
        let storage = match data_dir {
            None => Storage::Memory,
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    ApiError::unusable(format!("cannot create {}: {e}", dir.display()))
                })?;
                Storage::File(database_path(dir))
            }
        };
        let mut config = EngineConfig::new(storage);
        config.default_org_policy = None;
        config.default_tenant_policy = Some(policy.clone());
        let engine = Arc::new(Engine::open(config)?);
        // Opening waits for the store on the caller's thread, as `Engine::open` does.
        let keys = match engine.tenant_by_name_blocking(EMBEDDED_TENANT)? {
            Some(tenant) => {
                engine.publish_tenant_policy_text_blocking(&tenant, &policy)?;
                engine.rotate_keys_blocking(&tenant)?
            }
            None => engine.create_tenant_blocking(
                EMBEDDED_TENANT,
                paybond_middleware_core::wire::Environment::Sandbox,
            )?,
        };
        let operator = engine.authenticate_blocking(keys.operator.expose_secret())?;
        let mut gateway = Self::new(engine, &keys.agent)?;
        gateway.operator = Some(operator);
        Ok(gateway)
    }

    /// As the tenant's operator: approves a held request (`approval_request_id`
    /// of the [`RunError::ApprovalRequired`](paybond_middleware_core::RunError)
    /// the hold returned). Refused (`no_operator_key`) by a gateway bound with
    /// [`Self::new`], which holds no operator key.
    pub async fn approve(&self, approval_request_id: Uuid) -> Result<ApprovalStatus, GatewayError> {
        let operator = self.operator("approve")?;
        self.engine
            .approve(operator, approval_request_id)
            .await
            .map_err(|e| rejected("approve", e))
    }

    /// As the tenant's operator: denies a held request (see [`Self::approve`]).
    pub async fn deny(&self, approval_request_id: Uuid) -> Result<ApprovalStatus, GatewayError> {
        let operator = self.operator("deny")?;
        self.engine
            .deny_approval(operator, approval_request_id)
            .await
            .map_err(|e| rejected("deny", e))
    }

    /// The operator key this gateway holds, for `operation`.
    fn operator(&self, operation: &'static str) -> Result<&Principal, GatewayError> {
        let Some(operator) = &self.operator else {
            return Err(rejected(
                operation,
                ApiError::new(
                    403,
                    "no_operator_key",
                    "this gateway holds no operator key; open it with \
                     EmbeddedGateway::with_policy, or bind one to an operator key",
                ),
            ));
        };
        Ok(operator)
    }

    /// The engine behind this gateway.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Who the bound key is.
    pub fn principal_ref(&self) -> &Principal {
        &self.principal
    }

    /// `POST /harbor/intents`.
    pub async fn create_intent(
        &self,
        request: &CreateIntentRequest,
    ) -> Result<IntentView, GatewayError> {
        self.engine
            .create_intent(&self.principal, request)
            .await
            .map_err(|e| rejected("create_intent", e))
    }

    /// `POST /v1/sandbox/guardrails/bootstrap`.
    pub async fn bootstrap_sandbox(
        &self,
        request: &SandboxBootstrapRequest,
    ) -> Result<SandboxBootstrapResponse, GatewayError> {
        self.engine
            .bootstrap_sandbox(&self.principal, request)
            .await
            .map_err(|e| rejected("bootstrap", e))
    }
}

#[async_trait]
impl SpendGateway for EmbeddedGateway {
    async fn principal(&self) -> Result<Principal, GatewayError> {
        Ok(self.principal.clone())
    }

    async fn verify(&self, request: &VerifyRequest) -> Result<VerifyResult, GatewayError> {
        self.engine
            .verify(self.principal.clone(), request.clone())
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
            .complete(
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
            .submit_evidence(
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
        self.engine
            .approval(&self.principal, approval_request_id)
            .await
            .map_err(|e| rejected("approval_status", e))
    }

    async fn record_compensation(
        &self,
        decision_id: Uuid,
        request: &CompensationRequest,
    ) -> Result<CompensationRecorded, GatewayError> {
        let key = paybond_middleware_core::new_idempotency_key();
        self.engine
            .record_compensation(&self.principal, decision_id, request, Some(&key))
            .await
            .map_err(|e| rejected("record_compensation", e))
    }

    async fn effective_policy(&self) -> Result<Option<EffectivePolicy>, GatewayError> {
        match self
            .engine
            .effective_policy(&self.principal)
            .await
            .map_err(|e| rejected("effective_policy", e))
        {
            Ok(policy) => Ok(Some(policy)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
