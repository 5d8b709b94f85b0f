//! `PaybondAgentRun`: authorize every side-effecting tool call before it runs.

mod error;
mod layer;
mod protocol;
mod service;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use paybond_policies::ToolPolicy;
use uuid::Uuid;

pub use error::{ApprovalRequired, BoxError, RunError, RunErrorKind, SpendDenied};

pub use service::PaybondAgentRunService;

use crate::gateway::{GatewayError, SpendGateway};
use crate::trace::RunTrace;
use crate::wire::Phase;
use crate::{ApprovalToken, CapabilityToken};

/// How long a held call waits for an operator before it gives up, and how often it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalWait {
    /// Give up (and return [`RunError::ApprovalRequired`]) after this long.
    pub timeout: Duration,
    /// Time between two approval status requests.
    pub poll_interval: Duration,
}

impl Default for ApprovalWait {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
        }
    }
}

/// One agent run bound to `(tenant, intent, capability token)`: a tower [`Layer`](tower::Layer)
/// and the handle to the run's state (approval tokens, trace).
///
/// The tenant comes from the gateway's principal lookup when the run is bound, never
/// from the caller. Clones share state, so layer as many services as you like and
/// keep one clone to store approval tokens and read the trace.
///
/// ```
/// # #[cfg(not(feature = "test-util"))] fn main() {}
/// # #[cfg(feature = "test-util")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
/// use std::sync::Arc;
/// use paybond_middleware_core::{PaybondAgentRun, ToolCall, ToolOutput, testing::ScriptedGateway};
/// use paybond_policies::ToolPolicy;
/// use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
/// use uuid::Uuid;
///
/// let gateway = Arc::new(ScriptedGateway::new());
/// let run = PaybondAgentRun::builder(gateway, Uuid::new_v4(), "capability-token".into())
///     .tool("travel.book_hotel", ToolPolicy::side_effecting("cost_and_completion").with_max_spend_cents(20_000))
///     .bind()
///     .await?;
/// let mut book = ServiceBuilder::new()
///     .layer(run.clone())
///     .service(service_fn(|_call: ToolCall| async {
///         Ok::<_, std::convert::Infallible>(ToolOutput::new(serde_json::json!({"booked": true})).with_cost_cents(18_700))
///     }));
/// let out = book.ready().await?.call(ToolCall::new("travel.book_hotel", serde_json::json!({}), "call_1")).await?;
/// assert_eq!(out.cost_cents, Some(18_700));
/// assert_eq!(run.trace().totals().consumed_cents, 18_700);
/// # Ok::<_, Box<dyn std::error::Error>>(()) }) }
/// ```
#[derive(Clone)]
pub struct PaybondAgentRun {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) gateway: Arc<dyn SpendGateway>,
    pub(crate) tenant: String,
    pub(crate) intent_id: Uuid,
    pub(crate) capability_token: CapabilityToken,
    /// What the effective policy decides for the run, swapped whole on a reload.
    policy: std::sync::RwLock<Arc<RunPolicy>>,
    /// The builder's local entries and overrides, to resolve a reloaded policy.
    local_tools: BTreeMap<String, ToolPolicy>,
    overrides: BTreeMap<String, ToolPolicy>,
    pub(crate) agent_subject: Option<String>,
    pub(crate) currency: Option<String>,
    pub(crate) wait: Option<ApprovalWait>,
    pub(crate) trace: RunTrace,
    /// Where the run stands (see [`Phase`]).
    phase: Mutex<Phase>,
    calls: Mutex<HashMap<String, CallState>>,
}

/// A move to an earlier phase: a run's phase only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a run's phase only moves forward: {from} cannot go back to {to}")]
pub struct PhaseError {
    /// Where the run is.
    pub from: Phase,
    /// Where it was asked to go.
    pub to: Phase,
}

/// Per tool call id: attempts so far and an approval token waiting for the next one.
#[derive(Default)]
struct CallState {
    attempts: u32,
    approval_token: Option<ApprovalToken>,
}

/// What a run's effective policy decides, read once per call: a reload swaps it
/// whole, so a call never sees half of two policies.
pub(crate) struct RunPolicy {
    pub(crate) tools: Arc<BTreeMap<String, ToolPolicy>>,
    /// `spend_controls.data.sensitive_patterns`.
    pub(crate) sensitive: Vec<regex::Regex>,
    /// `spend_controls.phases.payment_phase`.
    pub(crate) payment_phase: Option<Phase>,
    /// The effective policy's digest and version (none when the gateway gave none).
    pub(crate) digest: Option<String>,
    pub(crate) version: Option<u64>,
}

impl RunPolicy {
    /// The run's view of `effective`, with the local entries and overrides.
    fn resolve(
        effective: Option<crate::wire::EffectivePolicy>,
        local: BTreeMap<String, ToolPolicy>,
        overrides: BTreeMap<String, ToolPolicy>,
    ) -> Result<Self, GatewayError> {
        // The gateway checked the patterns when the policy was published; one that
        // does not compile here is reported and cannot be skipped silently.
        let mut sensitive = Vec::new();
        for pattern in effective
            .as_ref()
            .and_then(|p| p.policy.spend_controls.as_ref())
            .and_then(|c| c.data.as_ref())
            .map(|d| d.sensitive_patterns.as_slice())
            .unwrap_or_default()
        {
            sensitive.push(
                regex::Regex::new(pattern).map_err(|e| GatewayError::Malformed {
                    operation: "effective_policy",
                    detail: format!("spend_controls.data.sensitive_patterns: {e}"),
                })?,
            );
        }
        let payment_phase = effective
            .as_ref()
            .and_then(|p| p.policy.spend_controls.as_ref())
            .and_then(|c| c.phases.as_ref())
            .and_then(|p| Phase::parse(&p.payment_phase));
        let (digest, version) = effective
            .as_ref()
            .map_or((None, None), |p| (Some(p.digest.clone()), Some(p.version)));
        let tools = resolve_tools(effective.map(|p| p.policy.tools), local, overrides);
        Ok(Self {
            tools: Arc::new(tools),
            sensitive,
            payment_phase,
            digest,
            version,
        })
    }
}

/// A run's policy replaced by a newer effective policy (see
/// [`PaybondAgentRun::reload_policy`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyReloaded {
    /// Always `policy_reloaded`.
    pub event: String,
    /// The digest the run had.
    pub from_digest: Option<String>,
    /// The digest it has now.
    pub to_digest: Option<String>,
    /// The version it had.
    pub from_version: Option<u64>,
    /// The version it has now.
    pub to_version: Option<u64>,
}

impl Shared {
    /// The policy the next call is decided under.
    pub(crate) fn policy(&self) -> Arc<RunPolicy> {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The run's phase now.
    pub(crate) fn phase(&self) -> Phase {
        *self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the next attempt of a tool call and returns its number. With
    /// `take_token`, also the approval token stored for the call, which this
    /// attempt then uses up.
    pub(crate) fn next_attempt(
        &self,
        tool_call_id: &str,
        take_token: bool,
    ) -> (u32, Option<ApprovalToken>) {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        // A retry finds its entry without allocating its key again.
        let state = match calls.get_mut(tool_call_id) {
            Some(state) => state,
            None => calls.entry(tool_call_id.to_owned()).or_default(),
        };
        state.attempts += 1;
        let token = if take_token {
            state.approval_token.take()
        } else {
            None
        };
        (state.attempts, token)
    }
}

impl std::fmt::Debug for PaybondAgentRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &*self.shared;
        f.debug_struct("PaybondAgentRun")
            .field("tenant", &s.tenant)
            .field("intent_id", &s.intent_id)
            .field("capability_token", &s.capability_token)
            .field(
                "tools",
                &s.policy().tools.keys().cloned().collect::<Vec<_>>(),
            )
            .field("agent_subject", &s.agent_subject)
            .field("wait", &s.wait)
            .finish_non_exhaustive()
    }
}

impl PaybondAgentRun {
    /// Starts binding a run to `intent_id` and its capability token on `gateway`.
    pub fn builder(
        gateway: Arc<dyn SpendGateway>,
        intent_id: Uuid,
        capability_token: CapabilityToken,
    ) -> PaybondAgentRunBuilder {
        PaybondAgentRunBuilder {
            gateway,
            intent_id,
            capability_token,
            tools: BTreeMap::new(),
            overrides: BTreeMap::new(),
            agent_subject: None,
            currency: None,
            wait: None,
            reload_every: None,
            outside_policy: false,
        }
    }

    /// The tenant, as the gateway's principal lookup gave it.
    pub fn tenant(&self) -> &str {
        &self.shared.tenant
    }

    /// The intent this run spends from.
    pub fn intent_id(&self) -> Uuid {
        self.shared.intent_id
    }

    /// The tools' policy entries, as the run's policy has them now.
    pub fn tools(&self) -> Arc<BTreeMap<String, ToolPolicy>> {
        self.shared.policy().tools.clone()
    }

    /// The digest of the effective policy the run decides under (none when the
    /// gateway had no policy to give).
    pub fn policy_digest(&self) -> Option<String> {
        self.shared.policy().digest.clone()
    }

    /// The version of that policy.
    pub fn policy_version(&self) -> Option<u64> {
        self.shared.policy().version
    }

    /// Fetches the gateway's effective policy and, when its digest differs from the
    /// run's, swaps it in whole between calls (a call in flight finishes under the
    /// policy it started with). Records `policy_reloaded` in the trace and answers
    /// what changed; `None` when nothing did. A policy the run cannot use is an
    /// error and the old one stays.
    pub async fn reload_policy(&self) -> Result<Option<PolicyReloaded>, GatewayError> {
        let effective = self.shared.gateway.effective_policy().await?;
        let current = self.shared.policy();
        let digest = effective.as_ref().map(|p| p.digest.clone());
        if digest == current.digest {
            return Ok(None);
        }
        let next = RunPolicy::resolve(
            effective,
            self.shared.local_tools.clone(),
            self.shared.overrides.clone(),
        )
        .inspect_err(|e| {
            tracing::warn!(error = %e, "a new effective policy cannot be used; the run keeps its policy");
        })?;
        let reloaded = {
            // Compared again under the lock: of two reloads racing (the poller and
            // an explicit call), one swaps and records, the other finds nothing new.
            let mut slot = self
                .shared
                .policy
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if slot.digest == next.digest {
                return Ok(None);
            }
            let reloaded = PolicyReloaded {
                event: "policy_reloaded".to_owned(),
                from_digest: slot.digest.clone(),
                to_digest: next.digest.clone(),
                from_version: slot.version,
                to_version: next.version,
            };
            *slot = Arc::new(next);
            reloaded
        };
        tracing::info!(
            from = ?reloaded.from_digest,
            to = ?reloaded.to_digest,
            "policy_reloaded"
        );
        self.shared.trace.push_reload(reloaded.clone());
        Ok(Some(reloaded))
    }

    /// The run trace, shared with every service of this run.
    pub fn trace(&self) -> &RunTrace {
        &self.shared.trace
    }

    /// The gateway the run decides with.
    pub(crate) fn gateway(&self) -> &Arc<dyn SpendGateway> {
        &self.shared.gateway
    }

    /// Where the run stands: EXPLORE until moved on (every verify carries it).
    pub fn phase(&self) -> Phase {
        self.shared.phase()
    }

    /// The phase from which the effective policy lets side-effecting tools run
    /// (`spend_controls.phases.payment_phase`), if it names one.
    pub fn payment_phase(&self) -> Option<Phase> {
        self.shared.policy().payment_phase
    }

    /// Moves the run to `phase`, forward only: EXPLORE → DECIDE → COMMIT. Asking for
    /// the current phase changes nothing; going back is [`PhaseError`]. Answers the
    /// phase the run was in. Calls in flight keep the phase they started with.
    pub fn enter_phase(&self, phase: Phase) -> Result<Phase, PhaseError> {
        let mut now = self
            .shared
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let was = *now;
        if phase < was {
            return Err(PhaseError {
                from: was,
                to: phase,
            });
        }
        *now = phase;
        if phase != was {
            tracing::info!(from = %was, to = %phase, "the run moved to a new phase");
        }
        Ok(was)
    }

    /// Makes the next attempt of `tool_call_id` carry `token`, once. Use it after an
    /// operator approved the request an [`ApprovalRequired`] named.
    pub fn store_approval_token(&self, tool_call_id: impl Into<String>, token: ApprovalToken) {
        let mut calls = self
            .shared
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        calls.entry(tool_call_id.into()).or_default().approval_token = Some(token);
    }
}

/// Configures a [`PaybondAgentRun`]; [`bind`](Self::bind) resolves the tenant.
#[must_use]
pub struct PaybondAgentRunBuilder {
    gateway: Arc<dyn SpendGateway>,
    intent_id: Uuid,
    capability_token: CapabilityToken,
    tools: BTreeMap<String, ToolPolicy>,
    overrides: BTreeMap<String, ToolPolicy>,
    agent_subject: Option<String>,
    currency: Option<String>,
    wait: Option<ApprovalWait>,
    reload_every: Option<Duration>,
    /// Bind even when a local side-effecting tool is unknown to a `default_deny` policy.
    outside_policy: bool,
}

impl std::fmt::Debug for PaybondAgentRunBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaybondAgentRunBuilder")
            .field("intent_id", &self.intent_id)
            .field("capability_token", &self.capability_token)
            .field("tools", &self.tools.keys().collect::<Vec<_>>())
            .field("overrides", &self.overrides.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl PaybondAgentRunBuilder {
    /// A local policy entry for one tool, used only where the gateway's effective
    /// policy has none (see [`bind`](Self::bind)).
    pub fn tool(mut self, name: impl Into<String>, policy: ToolPolicy) -> Self {
        self.tools.insert(name.into(), policy);
        self
    }

    /// Local policy entries for many tools (e.g. [`ToolRegistry::policies`](crate::ToolRegistry::policies)),
    /// used only where the gateway's effective policy has none.
    pub fn tools(mut self, tools: impl IntoIterator<Item = (String, ToolPolicy)>) -> Self {
        self.tools.extend(tools);
        self
    }

    /// Replaces the gateway's entry for `name` with `policy` in this run: the one
    /// way to make the layer treat a tool otherwise than the tenant's policy says
    /// (e.g. mark it read-only, so its calls are never verified). Logged as a
    /// warning when the run binds.
    pub fn override_tool(mut self, name: impl Into<String>, policy: ToolPolicy) -> Self {
        self.overrides.insert(name.into(), policy);
        self
    }

    /// Which agent asks, sent as `agent_subject` with every verify.
    pub fn agent_subject(mut self, subject: impl Into<String>) -> Self {
        self.agent_subject = Some(subject.into());
        self
    }

    /// Currency of calls that name none.
    pub fn currency(mut self, currency: impl Into<String>) -> Self {
        self.currency = Some(currency.into());
        self
    }

    /// Wait for approval instead of returning [`RunError::ApprovalRequired`]: poll the
    /// approval status and retry by itself once approved.
    pub fn wait_for_approval(mut self, wait: ApprovalWait) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Polls the gateway's effective policy every `every` and swaps in a new one
    /// between calls ([`PaybondAgentRun::reload_policy`]), for long-lived runs. The
    /// polling stops when the last handle of the run is dropped. Needs a tokio
    /// runtime when [`bind`](Self::bind) runs.
    pub fn reload_policy_every(mut self, every: Duration) -> Self {
        self.reload_every = Some(every);
        self
    }

    /// Binds even when a local side-effecting tool ([`tool`](Self::tool),
    /// [`override_tool`](Self::override_tool)) has an operation that the tenant's
    /// `default_deny` policy does not know, so that every call of it is denied
    /// `tool_not_in_policy` (for a run that means to show that refusal). Without
    /// it, [`bind`](Self::bind) refuses such a run.
    pub fn allow_tools_outside_policy(mut self) -> Self {
        self.outside_policy = true;
        self
    }

    /// Looks the tenant up from the gateway's principal, takes the tools' entries
    /// from the tenant's effective policy, and binds the run.
    ///
    /// A local side-effecting tool whose operation the tenant's policy does not
    /// know, under `default_deny: true`, is an error ([`GatewayError::Config`])
    /// naming the tool and the policy: every call of it would be denied
    /// `tool_not_in_policy`. [`allow_tools_outside_policy`](Self::allow_tools_outside_policy)
    /// binds anyway.
    ///
    /// Each tool's entry comes from the gateway's effective policy when it names
    /// the tool: a local [`tool`](Self::tool) entry never weakens it (a difference
    /// is logged as a warning and the gateway's entry is used). A local entry is
    /// used for a tool the effective policy does not name (logged), and for every
    /// tool when the gateway has no policy to give. [`override_tool`](Self::override_tool)
    /// is the explicit exception, logged too.
    pub async fn bind(self) -> Result<PaybondAgentRun, GatewayError> {
        let principal = self.gateway.principal().await?;
        let effective = self.gateway.effective_policy().await?;
        if !self.outside_policy
            && let Some(p) = effective
                .as_ref()
                .filter(|p| p.policy.default_deny == Some(true))
        {
            let unknown = self
                .tools
                .iter()
                .chain(&self.overrides)
                .filter(|(_, entry)| entry.side_effecting)
                .find(|(name, entry)| {
                    let operation = entry.operation_for(name);
                    !p.policy
                        .tools
                        .iter()
                        .any(|(n, t)| t.operation_for(n) == operation)
                });
            if let Some((name, entry)) = unknown {
                return Err(GatewayError::Config(format!(
                    "the tool `{name}` (operation `{}`) is not in the tenant's policy `{}` \
                     (default_deny: true): every call of it would be denied \
                     tool_not_in_policy. Add `{name}` to the policy the gateway enforces, or \
                     bind with allow_tools_outside_policy() to see those denials",
                    entry.operation_for(name),
                    p.policy.name
                )));
            }
        }
        let trace = RunTrace::in_currency(self.currency.as_deref());
        let policy = RunPolicy::resolve(effective, self.tools.clone(), self.overrides.clone())?;
        let run = PaybondAgentRun {
            shared: Arc::new(Shared {
                gateway: self.gateway,
                tenant: principal.tenant_id,
                intent_id: self.intent_id,
                capability_token: self.capability_token,
                policy: std::sync::RwLock::new(Arc::new(policy)),
                local_tools: self.tools,
                overrides: self.overrides,
                agent_subject: self.agent_subject,
                currency: self.currency,
                wait: self.wait,
                trace,
                phase: Mutex::new(Phase::Explore),
                calls: Mutex::new(HashMap::new()),
            }),
        };
        if let Some(every) = self.reload_every {
            let weak = Arc::downgrade(&run.shared);
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return Err(GatewayError::Config(
                    "reload_policy_every needs a tokio runtime to poll from".to_owned(),
                ));
            };
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(shared) = weak.upgrade() else {
                        return;
                    };
                    let run = PaybondAgentRun { shared };
                    if let Err(e) = run.reload_policy().await {
                        tracing::warn!(error = %e, "polling the effective policy failed; the run keeps its policy");
                    }
                }
            });
        }
        Ok(run)
    }
}

/// The run's tool entries: the gateway's, then local ones where it has none, then
/// the explicit overrides; every departure from the gateway's policy is logged.
fn resolve_tools(
    gateway: Option<BTreeMap<String, ToolPolicy>>,
    local: BTreeMap<String, ToolPolicy>,
    overrides: BTreeMap<String, ToolPolicy>,
) -> BTreeMap<String, ToolPolicy> {
    let mut tools = match gateway {
        None => local,
        Some(mut tools) => {
            for (name, entry) in local {
                match tools.get(&name) {
                    Some(theirs) if *theirs != entry => tracing::warn!(
                        tool = %name,
                        local_side_effecting = entry.side_effecting,
                        gateway_side_effecting = theirs.side_effecting,
                        "the local policy entry differs from the gateway's effective policy; \
                         the gateway's is used (override_tool replaces it explicitly)"
                    ),
                    Some(_) => {}
                    None => {
                        tracing::warn!(
                            tool = %name,
                            side_effecting = entry.side_effecting,
                            "the gateway's effective policy does not name this tool; \
                             using its local entry"
                        );
                        tools.insert(name, entry);
                    }
                }
            }
            tools
        }
    };
    for (name, entry) in overrides {
        tracing::warn!(
            tool = %name,
            side_effecting = entry.side_effecting,
            "tool policy overridden locally for this run"
        );
        tools.insert(name, entry);
    }
    tools
}
