//! Test helpers: a scriptable in-memory [`SpendGateway`] (feature `test-util`).
//!
//! [`ScriptedGateway`] answers what a test scripts and records every call, so a
//! test can assert what the layer asked and in which order. It makes no decision
//! of its own: the product's decision engine is the `gateway` crate.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use uuid::Uuid;

use crate::ApprovalToken;
use crate::gateway::{GatewayError, SpendGateway};
use crate::wire::{
    ApprovalState, ApprovalStatus, CompensationRecorded, CompensationRequest, CompleteRequest,
    CompleteResponse, EffectivePolicy, Environment, EvidenceRequest, EvidenceResponse,
    LifecycleStatus, Principal, Role, VerifyRequest, VerifyResult,
};

/// The answer to one scripted verify.
#[derive(Debug, Clone)]
pub enum VerifyScript {
    /// `allow: true` with a fresh decision id.
    Allow,
    /// A hold with a fresh decision and approval request id.
    Hold {
        /// Reason codes of the hold.
        reason_codes: Vec<String>,
    },
    /// A hard denial.
    Deny {
        /// Reason codes of the denial.
        reason_codes: Vec<String>,
    },
    /// The gateway fails.
    Fail(GatewayError),
    /// This exact answer.
    Respond(Box<VerifyResult>),
}

impl VerifyScript {
    /// A hold for `approval_threshold_exceeded`.
    pub fn hold() -> Self {
        Self::Hold {
            reason_codes: vec!["approval_threshold_exceeded".to_owned()],
        }
    }

    /// A denial with one reason code.
    pub fn deny(reason: &str) -> Self {
        Self::Deny {
            reason_codes: vec![reason.to_owned()],
        }
    }
}

/// The answer to one scripted approval status request.
#[derive(Debug, Clone)]
pub enum ApprovalScript {
    /// Still pending.
    Pending,
    /// Approved, with this token.
    Approved(ApprovalToken),
    /// Denied by an operator.
    Denied,
    /// Expired.
    Expired,
    /// The gateway fails.
    Fail(GatewayError),
}

/// One recorded call of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayCall {
    /// `principal()`.
    Principal,
    /// `record_compensation()`.
    Compensation {
        /// The compensated decision.
        decision_id: Uuid,
        /// How it ended.
        request: CompensationRequest,
    },
    /// `verify()`.
    Verify(VerifyRequest),
    /// `complete_decision()`.
    Complete {
        /// The decision finalized.
        decision_id: Uuid,
        /// Consumed or released, and the actual cost.
        request: CompleteRequest,
        /// The idempotency key sent.
        idempotency_key: String,
    },
    /// `submit_evidence()`.
    Evidence {
        /// The intent.
        intent_id: Uuid,
        /// The evidence.
        request: EvidenceRequest,
        /// The idempotency key sent.
        idempotency_key: String,
    },
    /// `approval_status()`.
    ApprovalStatus(Uuid),
}

/// A [`SpendGateway`] that answers from a script and records every call.
///
/// Verify answers come from [`push_verify`](Self::push_verify) in order, then
/// allow; approval statuses from [`push_approval`](Self::push_approval), then
/// pending; completes and evidence succeed unless a failure was queued.
#[derive(Debug)]
pub struct ScriptedGateway {
    tenant: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    principal_error: Option<GatewayError>,
    verify: VecDeque<VerifyScript>,
    approvals: VecDeque<ApprovalScript>,
    complete_errors: VecDeque<GatewayError>,
    evidence_errors: VecDeque<GatewayError>,
    effective_policy: Option<EffectivePolicy>,
    calls: Vec<GatewayCall>,
}

impl Default for ScriptedGateway {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptedGateway {
    /// A gateway for tenant `tenant_test` that allows everything.
    pub fn new() -> Self {
        Self::for_tenant("tenant_test")
    }

    /// A gateway for `tenant` that allows everything.
    pub fn for_tenant(tenant: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The effective policy the gateway serves (none by default), which a run
    /// takes its tools' entries from. Each call publishes a new version (1, 2, …)
    /// with its own digest.
    pub fn set_effective_policy(&self, policy: paybond_policies::PolicyDocument) -> &Self {
        let mut state = self.state();
        let version = state.effective_policy.as_ref().map_or(1, |p| p.version + 1);
        state.effective_policy = Some(EffectivePolicy {
            tenant_id: self.tenant.clone(),
            version,
            digest: format!("sha256:scripted-{version}"),
            org_policy_id: None,
            policy,
        });
        drop(state);
        self
    }

    /// Queues the answer to the next unanswered verify.
    pub fn push_verify(&self, script: VerifyScript) -> &Self {
        self.state().verify.push_back(script);
        self
    }

    /// Queues the answer to the next unanswered approval status request.
    pub fn push_approval(&self, script: ApprovalScript) -> &Self {
        self.state().approvals.push_back(script);
        self
    }

    /// Makes the next complete fail with `error`.
    pub fn fail_next_complete(&self, error: GatewayError) -> &Self {
        self.state().complete_errors.push_back(error);
        self
    }

    /// Makes the next evidence submission fail with `error`.
    pub fn fail_next_evidence(&self, error: GatewayError) -> &Self {
        self.state().evidence_errors.push_back(error);
        self
    }

    /// Makes every principal lookup fail with `error`.
    pub fn fail_principal(&self, error: GatewayError) -> &Self {
        self.state().principal_error = Some(error);
        self
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<GatewayCall> {
        self.state().calls.clone()
    }

    /// Every verify request so far.
    pub fn verifies(&self) -> Vec<VerifyRequest> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                GatewayCall::Verify(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// Every complete so far: decision and request.
    pub fn completes(&self) -> Vec<(Uuid, CompleteRequest)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                GatewayCall::Complete {
                    decision_id,
                    request,
                    ..
                } => Some((decision_id, request)),
                _ => None,
            })
            .collect()
    }

    /// Every evidence submission so far.
    pub fn evidence(&self) -> Vec<EvidenceRequest> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                GatewayCall::Evidence { request, .. } => Some(request),
                _ => None,
            })
            .collect()
    }

    fn record(&self, call: GatewayCall) {
        self.state().calls.push(call);
    }

    fn result(
        &self,
        request: &VerifyRequest,
        allow: bool,
        hold: bool,
        reasons: Vec<String>,
    ) -> VerifyResult {
        let code = match (allow, hold) {
            (true, _) => "allowed".to_owned(),
            (false, true) => "approval_required".to_owned(),
            (false, false) => reasons
                .first()
                .cloned()
                .unwrap_or_else(|| "denied".to_owned()),
        };
        VerifyResult {
            allow,
            audit_id: Some(Uuid::new_v4().to_string()),
            tenant: self.tenant.clone(),
            intent_id: request.intent_id,
            code: Some(code),
            message: None,
            decision_id: Some(Uuid::new_v4()),
            approval_request_id: hold.then(Uuid::new_v4),
            policy_version: Some(1),
            policy_digest: None,
            reason_codes: reasons,
            spend_scope: None,
            remaining_cents: None,
            retry_after: None,
            approval_required: hold,
            checks: Vec::new(),
        }
    }
}

#[async_trait]
impl SpendGateway for ScriptedGateway {
    async fn effective_policy(&self) -> Result<Option<EffectivePolicy>, GatewayError> {
        Ok(self.state().effective_policy.clone())
    }

    async fn record_compensation(
        &self,
        decision_id: Uuid,
        request: &CompensationRequest,
    ) -> Result<CompensationRecorded, GatewayError> {
        let mut state = self.state();
        state.calls.push(GatewayCall::Compensation {
            decision_id,
            request: request.clone(),
        });
        let ledger_seq = state.calls.len() as u64;
        Ok(CompensationRecorded {
            decision_id,
            outcome: request.outcome,
            ledger_seq,
        })
    }

    async fn principal(&self) -> Result<Principal, GatewayError> {
        self.record(GatewayCall::Principal);
        if let Some(error) = self.state().principal_error.clone() {
            return Err(error);
        }
        Ok(Principal {
            tenant_id: self.tenant.clone(),
            environment: Environment::Sandbox,
            service_account_role: Role::Agent,
            roles: vec![Role::Agent],
            subject: "scripted-agent".to_owned(),
            key_id: "key_scripted".to_owned(),
        })
    }

    async fn verify(&self, request: &VerifyRequest) -> Result<VerifyResult, GatewayError> {
        self.record(GatewayCall::Verify(request.clone()));
        let script = self
            .state()
            .verify
            .pop_front()
            .unwrap_or(VerifyScript::Allow);
        match script {
            VerifyScript::Allow => Ok(self.result(request, true, false, vec![])),
            VerifyScript::Hold { reason_codes } => {
                Ok(self.result(request, false, true, reason_codes))
            }
            VerifyScript::Deny { reason_codes } => {
                Ok(self.result(request, false, false, reason_codes))
            }
            VerifyScript::Fail(error) => Err(error),
            VerifyScript::Respond(result) => Ok(*result),
        }
    }

    async fn complete_decision(
        &self,
        decision_id: Uuid,
        request: &CompleteRequest,
        idempotency_key: &str,
    ) -> Result<CompleteResponse, GatewayError> {
        self.record(GatewayCall::Complete {
            decision_id,
            request: request.clone(),
            idempotency_key: idempotency_key.to_owned(),
        });
        if let Some(error) = self.state().complete_errors.pop_front() {
            return Err(error);
        }
        Ok(CompleteResponse {
            decision_id: Some(decision_id),
            outcome: Some(request.outcome),
            actual_spend_cents: request.actual_spend_cents,
            returned_cents: None,
            reported_spend_cents: None,
        })
    }

    async fn submit_evidence(
        &self,
        intent_id: Uuid,
        request: &EvidenceRequest,
        idempotency_key: &str,
    ) -> Result<EvidenceResponse, GatewayError> {
        self.record(GatewayCall::Evidence {
            intent_id,
            request: request.clone(),
            idempotency_key: idempotency_key.to_owned(),
        });
        if let Some(error) = self.state().evidence_errors.pop_front() {
            return Err(error);
        }
        Ok(EvidenceResponse {
            tenant_id: self.tenant.clone(),
            intent_id,
            operation: request.operation.clone().unwrap_or_default(),
            requested_spend_cents: request.requested_spend_cents.unwrap_or_default(),
            sandbox_lifecycle_status: LifecycleStatus::EvidenceSubmitted,
            predicate_passed: true,
        })
    }

    async fn approval_status(
        &self,
        approval_request_id: Uuid,
    ) -> Result<ApprovalStatus, GatewayError> {
        self.record(GatewayCall::ApprovalStatus(approval_request_id));
        let script = self
            .state()
            .approvals
            .pop_front()
            .unwrap_or(ApprovalScript::Pending);
        let (state, token) = match script {
            ApprovalScript::Pending => (ApprovalState::Pending, None),
            ApprovalScript::Approved(token) => (ApprovalState::Approved, Some(token)),
            ApprovalScript::Denied => (ApprovalState::Denied, None),
            ApprovalScript::Expired => (ApprovalState::Expired, None),
            ApprovalScript::Fail(error) => return Err(error),
        };
        Ok(ApprovalStatus {
            approval_request_id,
            state,
            decision_id: None,
            intent_id: None,
            operation: None,
            requested_spend_cents: None,
            reason_codes: vec![],
            approvals: u32::from(state == ApprovalState::Approved),
            quorum: 1,
            approval_token: token,
            expires_at: None,
            tool: None,
            vendor_id: None,
            agent: None,
            created_at: None,
        })
    }
}
