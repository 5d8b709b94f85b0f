//! Where a demo's gateway is: embedded in this process (the default) or a
//! `paybond dev loop --offline` over HTTP. Either way the demo gets an agent-side
//! [`SpendGateway`], a funded intent, and an operator that approves through the
//! gateway's approval API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use paybond_gateway::{EmbeddedGateway, Engine, LedgerEvent, verify_events};
use paybond_middleware_core::wire::{
    ApprovalState, ApprovalStatus, Environment, Principal, SandboxBootstrapRequest,
};
use paybond_middleware_core::{ApiKey, CapabilityToken, HttpGateway, SpendGateway};
use paybond_policies::ToolPolicy;
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::DemoError;
use crate::scenario::BUDGET_CENTS;
use crate::travel::BOOK;

/// Where the gateway is.
#[derive(Debug, Clone)]
pub enum GatewayChoice {
    /// A fresh in-memory engine in this process, with the bundled policies.
    Embedded,
    /// A gateway at this URL; keys from the environment or `env_file`.
    Http {
        /// Base URL, e.g. `http://127.0.0.1:8787`.
        url: String,
        /// The env file `paybond dev loop --offline` wrote.
        env_file: PathBuf,
    },
}

enum Side {
    Embedded {
        engine: Arc<Engine>,
        operator: Principal,
        agent: Principal,
    },
    Http {
        url: String,
        agent_key: String,
        operator_key: String,
        env_file: PathBuf,
        client: reqwest::Client,
    },
}

/// A gateway ready for one scenario run.
pub struct Harness {
    side: Side,
    gateway: Arc<dyn SpendGateway>,
    /// The funded intent.
    pub intent_id: Uuid,
    /// Its capability token.
    pub token: CapabilityToken,
    /// The tenant.
    pub tenant_id: String,
    /// The tools of the tenant's effective policy.
    pub tools: BTreeMap<String, ToolPolicy>,
    agent_key: ApiKey,
    served: tokio::sync::OnceCell<String>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("gateway", &self.kind())
            .field("intent_id", &self.intent_id)
            .finish_non_exhaustive()
    }
}

fn lookup(key: &str, env_file: &Path) -> Option<String> {
    if let Ok(v) = std::env::var(key)
        && !v.is_empty()
    {
        return Some(v);
    }
    let text = std::fs::read_to_string(env_file).ok()?;
    text.lines().find_map(|l| {
        let l = l.trim();
        let l = l.strip_prefix("export ").unwrap_or(l);
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn bootstrap_request() -> SandboxBootstrapRequest {
    SandboxBootstrapRequest {
        operation: BOOK.to_owned(),
        requested_spend_cents: BUDGET_CENTS,
        currency: Some("usd".to_owned()),
        evidence_schema: None,
        metadata: Some(serde_json::json!({"purpose": "canonical scenario"})),
        idempotency_key: None,
    }
}

impl Harness {
    /// Sets up the gateway, the tenant's keys and a funded intent of 60000 cents.
    pub async fn start(choice: &GatewayChoice) -> Result<Self, DemoError> {
        match choice {
            GatewayChoice::Embedded => Self::embedded().await,
            GatewayChoice::Http { url, env_file } => Self::http(url, env_file).await,
        }
    }

    async fn embedded() -> Result<Self, DemoError> {
        let setup = async {
            let engine = Arc::new(Engine::in_memory()?);
            let keys = engine
                .create_tenant("sandbox", Environment::Sandbox)
                .await?;
            let operator = engine.authenticate(keys.operator.expose_secret()).await?;
            let gateway = EmbeddedGateway::new(engine.clone(), &keys.agent)?;
            let agent = gateway.principal_ref().clone();
            let policy = engine.effective_policy(&agent).await?;
            Ok::<_, paybond_gateway::ApiError>((
                engine, operator, agent, gateway, policy, keys.agent,
            ))
        }
        .await
        .map_err(|e| DemoError::Setup(e.to_string()))?;
        let (engine, operator, agent, gateway, policy, agent_key) = setup;
        let intent = gateway
            .bootstrap_sandbox(&bootstrap_request())
            .await
            .map_err(|e| DemoError::Setup(e.to_string()))?;
        Ok(Self {
            tenant_id: agent.tenant_id.clone(),
            side: Side::Embedded {
                engine,
                operator,
                agent,
            },
            gateway: Arc::new(gateway),
            intent_id: intent.intent_id,
            token: intent.capability_token,
            tools: policy.policy.tools,
            agent_key,
            served: tokio::sync::OnceCell::new(),
        })
    }

    async fn http(url: &str, env_file: &Path) -> Result<Self, DemoError> {
        let agent_key = lookup("PAYBOND_API_KEY", env_file);
        let operator_key = lookup("PAYBOND_OPERATOR_API_KEY", env_file);
        let (Some(agent_key), Some(operator_key)) = (agent_key, operator_key) else {
            return Err(DemoError::Usage(format!(
                "--gateway needs PAYBOND_API_KEY and PAYBOND_OPERATOR_API_KEY, from the \
                 environment or {} (`paybond dev loop --offline` writes them)",
                env_file.display()
            )));
        };
        let url = url.trim_end_matches('/').to_owned();
        let gateway = HttpGateway::builder(&url, ApiKey::new(agent_key.clone()))
            .build()
            .map_err(|e| DemoError::Usage(e.to_string()))?;
        let principal = gateway.principal().await.map_err(|e| {
            DemoError::Environment(format!("cannot reach the gateway at {url}: {e}"))
        })?;
        let client = reqwest::Client::new();
        let policy: Value = client
            .get(format!("{url}/v1/policy/effective"))
            .bearer_auth(&agent_key)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| DemoError::Setup(format!("cannot read the effective policy: {e}")))?
            .json()
            .await
            .map_err(|e| DemoError::Setup(format!("the effective policy is not JSON: {e}")))?;
        let tools: BTreeMap<String, ToolPolicy> =
            serde_json::from_value(policy["policy"]["tools"].clone())
                .map_err(|e| DemoError::Setup(format!("the effective policy's tools: {e}")))?;
        let intent = gateway
            .bootstrap_sandbox(&bootstrap_request())
            .await
            .map_err(|e| DemoError::Setup(e.to_string()))?;
        Ok(Self {
            tenant_id: principal.tenant_id,
            agent_key: ApiKey::new(agent_key.clone()),
            side: Side::Http {
                url,
                agent_key,
                operator_key,
                env_file: env_file.to_owned(),
                client,
            },
            gateway: Arc::new(gateway),
            intent_id: intent.intent_id,
            token: intent.capability_token,
            tools,
            served: tokio::sync::OnceCell::new(),
        })
    }

    /// `embedded` or `http`.
    pub fn kind(&self) -> &'static str {
        match self.side {
            Side::Embedded { .. } => "embedded",
            Side::Http { .. } => "http",
        }
    }

    /// The agent-side gateway.
    pub fn gateway(&self) -> Arc<dyn SpendGateway> {
        self.gateway.clone()
    }

    /// Binds a run on the funded intent for the demo agent `subject` (see
    /// [`crate::bind_run`]), waiting for approvals when `wait`.
    pub async fn bind(
        &self,
        subject: &str,
        wait: bool,
    ) -> Result<paybond_middleware_core::PaybondAgentRun, DemoError> {
        crate::bind_run(
            self.gateway(),
            self.intent_id,
            self.token.clone(),
            self.tools.clone(),
            subject,
            wait,
            None,
        )
        .await
    }

    /// The HTTP base URL, when the gateway is remote.
    pub fn url(&self) -> Option<&str> {
        match &self.side {
            Side::Http { url, .. } => Some(url),
            Side::Embedded { .. } => None,
        }
    }

    /// The agent's API key (for a process that talks to the gateway on the demo's behalf).
    pub fn agent_key(&self) -> &ApiKey {
        &self.agent_key
    }

    /// A URL another process can reach the gateway at: the remote gateway's, or the
    /// embedded engine served on a free loopback port (started on first use, stopped
    /// with the runtime).
    pub async fn http_url(&self) -> Result<String, DemoError> {
        let engine = match &self.side {
            Side::Http { url, .. } => return Ok(url.clone()),
            Side::Embedded { engine, .. } => engine.clone(),
        };
        self.served
            .get_or_try_init(|| async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| {
                        DemoError::Setup(format!("cannot serve the embedded gateway: {e}"))
                    })?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| DemoError::Setup(e.to_string()))?;
                tokio::spawn(paybond_gateway::server::serve(
                    listener,
                    engine,
                    std::future::pending(),
                ));
                Ok(format!("http://{addr}"))
            })
            .await
            .cloned()
    }

    /// Acts as the tenant's admin: publishes `text` as the tenant's policy (refused
    /// whole when invalid or wider than the org base) and answers its digest.
    pub async fn publish_policy(&self, text: &str, file: &str) -> Result<String, DemoError> {
        match &self.side {
            Side::Embedded { engine, .. } => {
                let policy = paybond_gateway::PolicyFile {
                    text: text.to_owned(),
                    file: file.to_owned(),
                };
                engine
                    .publish_tenant_policy_text(&self.tenant_id, &policy)
                    .await
                    .map(|p| p.digest)
                    .map_err(|e| DemoError::Setup(format!("publishing {file}: {e}")))
            }
            Side::Http {
                url,
                env_file,
                client,
                ..
            } => {
                let Some(admin_key) = lookup("PAYBOND_ADMIN_API_KEY", env_file) else {
                    return Err(DemoError::Usage(format!(
                        "this scenario publishes policies: it needs PAYBOND_ADMIN_API_KEY, from \
                         the environment or {} (`paybond dev loop --offline` writes it)",
                        env_file.display()
                    )));
                };
                let response = client
                    .put(format!("{url}/v1/tenant/policy"))
                    .bearer_auth(admin_key)
                    .header(reqwest::header::CONTENT_TYPE, "application/yaml")
                    .body(text.to_owned())
                    .send()
                    .await
                    .map_err(|e| DemoError::Gateway(format!("publishing {file}: {e}")))?;
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if !status.is_success() {
                    return Err(DemoError::Setup(format!(
                        "publishing {file}: {status}: {}",
                        body["message"].as_str().unwrap_or("no message")
                    )));
                }
                body["digest"].as_str().map(str::to_owned).ok_or_else(|| {
                    DemoError::Gateway(format!("publishing {file}: the answer has no digest"))
                })
            }
        }
    }

    /// The digest of the tenant's effective policy.
    pub async fn policy_digest(&self) -> Result<String, DemoError> {
        let policy = match &self.side {
            Side::Embedded { engine, agent, .. } => engine
                .effective_policy(agent)
                .await
                .map_err(|e| DemoError::Gateway(e.to_string()))?,
            Side::Http {
                url,
                agent_key,
                client,
                ..
            } => client
                .get(format!("{url}/v1/policy/effective"))
                .bearer_auth(agent_key)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| DemoError::Gateway(format!("effective policy: {e}")))?
                .json()
                .await
                .map_err(|e| DemoError::Gateway(format!("effective policy: {e}")))?,
        };
        Ok(policy.digest)
    }

    /// The embedded engine, when there is one.
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        match &self.side {
            Side::Embedded { engine, .. } => Some(engine),
            Side::Http { .. } => None,
        }
    }

    /// Acts as the held agent: fetches the approval token of an approved request
    /// (handed out once, to an agent key).
    pub async fn approval_token(
        &self,
        approval_request_id: Uuid,
    ) -> Result<paybond_middleware_core::ApprovalToken, DemoError> {
        self.gateway
            .approval_status(approval_request_id)
            .await
            .map_err(|e| DemoError::Gateway(e.to_string()))?
            .approval_token
            .ok_or_else(|| DemoError::Gateway("approved without a token".into()))
    }

    /// Acts as the operator: approves `approval_request_id` through the gateway.
    pub async fn approve(&self, approval_request_id: Uuid) -> Result<ApprovalStatus, DemoError> {
        match &self.side {
            Side::Embedded {
                engine, operator, ..
            } => engine
                .approve(operator, approval_request_id)
                .await
                .map_err(|e| DemoError::Gateway(e.to_string())),
            Side::Http {
                url,
                operator_key,
                client,
                ..
            } => client
                .post(format!("{url}/v1/approvals/{approval_request_id}/approve"))
                .bearer_auth(operator_key)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| DemoError::Gateway(format!("approve: {e}")))?
                .json()
                .await
                .map_err(|e| DemoError::Gateway(format!("approve: {e}"))),
        }
    }

    /// The pending approval requests of this run's intent.
    pub async fn pending(&self) -> Result<Vec<Uuid>, DemoError> {
        let list: Vec<ApprovalStatus> = match &self.side {
            Side::Embedded {
                engine, operator, ..
            } => {
                engine
                    .list_approvals(
                        operator,
                        &paybond_gateway::ApprovalQuery {
                            state: Some(ApprovalState::Pending),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| DemoError::Gateway(e.to_string()))?
                    .approvals
            }
            Side::Http {
                url,
                operator_key,
                client,
                ..
            } => {
                let body: Value = client
                    .get(format!("{url}/v1/approvals?state=pending"))
                    .bearer_auth(operator_key)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| DemoError::Gateway(format!("approvals: {e}")))?
                    .json()
                    .await
                    .map_err(|e| DemoError::Gateway(format!("approvals: {e}")))?;
                serde_json::from_value(body["approvals"].clone())
                    .map_err(|e| DemoError::Gateway(format!("approvals: {e}")))?
            }
        };
        Ok(list
            .into_iter()
            .filter(|a| a.intent_id == Some(self.intent_id))
            .map(|a| a.approval_request_id)
            .collect())
    }

    /// An operator in the background: approves this intent's pending requests as
    /// they appear, until the returned handle is dropped or aborted.
    pub fn spawn_operator(self: &Arc<Self>) -> OperatorTask {
        let me = self.clone();
        OperatorTask(tokio::spawn(async move {
            loop {
                if let Ok(ids) = me.pending().await {
                    for id in ids {
                        match me.approve(id).await {
                            Ok(_) => tracing::info!(approval_request_id = %id, "operator approved"),
                            Err(e) => tracing::warn!(error = %e, "operator could not approve"),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }))
    }

    /// The intent's reservations still open.
    pub async fn open_reservations(&self) -> Result<u64, DemoError> {
        match &self.side {
            Side::Embedded { engine, agent, .. } => Ok(engine
                .get_intent(agent, self.intent_id)
                .await
                .map_err(|e| DemoError::Gateway(e.to_string()))?
                .open_reservations),
            Side::Http {
                url,
                agent_key,
                client,
                ..
            } => {
                let body: Value = client
                    .get(format!("{url}/harbor/intents/{}", self.intent_id))
                    .bearer_auth(agent_key)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| DemoError::Gateway(format!("intent: {e}")))?
                    .json()
                    .await
                    .map_err(|e| DemoError::Gateway(format!("intent: {e}")))?;
                body["open_reservations"]
                    .as_u64()
                    .ok_or_else(|| DemoError::Gateway("intent: no open_reservations".to_owned()))
            }
        }
    }

    /// Whether the gateway's ledger verifies: every chain in the embedded store, or the
    /// tenant's chain read over HTTP and checked here.
    pub async fn ledger_valid(&self) -> Result<bool, DemoError> {
        match &self.side {
            Side::Embedded { engine, .. } => Ok(engine
                .verify_ledger()
                .await
                .map_err(|e| DemoError::Gateway(e.to_string()))?
                .valid),
            Side::Http {
                url,
                operator_key,
                client,
                ..
            } => {
                let mut events: Vec<LedgerEvent> = Vec::new();
                loop {
                    let after = events.last().map_or(0, |e| e.seq);
                    let page: Value = client
                        .get(format!(
                            "{url}/ledger/v1/events?after_seq={after}&limit=1000"
                        ))
                        .bearer_auth(operator_key)
                        .send()
                        .await
                        .and_then(reqwest::Response::error_for_status)
                        .map_err(|e| DemoError::Gateway(format!("ledger: {e}")))?
                        .json()
                        .await
                        .map_err(|e| DemoError::Gateway(format!("ledger: {e}")))?;
                    let batch: Vec<LedgerEvent> = serde_json::from_value(page["events"].clone())
                        .map_err(|e| DemoError::Gateway(format!("ledger: {e}")))?;
                    if batch.is_empty() {
                        break;
                    }
                    events.extend(batch);
                }
                Ok(verify_events(&self.tenant_id, &events).is_ok())
            }
        }
    }
}

/// The background operator; stops when dropped.
#[derive(Debug)]
pub struct OperatorTask(tokio::task::JoinHandle<()>);

impl Drop for OperatorTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
