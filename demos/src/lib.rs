//! The scenarios (see the crate's README), one demo per agent framework.
//!
//! In the canonical scenario every demo runs the same five tool calls against the
//! same policy and must reach the same end state: consumed 30700, released 9000,
//! one hold, one deny, no open reservations, a valid ledger. The governed scenario
//! ([`governed`]) adds a payment phase, a sensitive-data deny, a compensation and a
//! policy reload mid-run. The gateway is embedded in the process by default;
//! [`GatewayChoice::Http`] points a demo at `paybond dev loop --offline`.

pub mod anthropic;
pub mod cli;
pub mod generic;
pub mod governed;
pub mod harness;
pub mod mcp;
pub mod openai;
pub mod rig;
pub mod scenario;
pub mod travel;

use std::sync::Arc;

pub use harness::{GatewayChoice, Harness};
pub use scenario::{Problem, Report, Scenario, Summary};

use std::collections::BTreeMap;
use std::time::Duration;

use paybond_middleware_core::scope::CompensationEntry;
use paybond_middleware_core::trace::{TraceEntry, TraceTotals};
use paybond_middleware_core::wire::CompensationOutcome;
use paybond_middleware_core::{
    ApprovalWait, CapabilityToken, PaybondAgentRun, PolicyReloaded, SpendGateway,
};
use paybond_policies::ToolPolicy;
use uuid::Uuid;

/// Why a demo could not run to its end (as opposed to reaching a wrong end state,
/// which is a [`Report`] with problems).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Bad flags or missing credentials (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The gateway cannot be reached (exit code 2, like a usage error: nothing ran).
    #[error("{0}")]
    Environment(String),
    /// The gateway or the demo's own setup failed.
    #[error("setup failed: {0}")]
    Setup(String),
    /// A gateway call failed mid-run.
    #[error("gateway: {0}")]
    Gateway(String),
    /// The model (or the agent loop) failed.
    #[error("model: {0}")]
    Model(String),
}

/// The frameworks with a demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    /// The generic `{name, execute}` tool trait and a custom orchestrator.
    Generic,
    /// OpenAI-style tool calling (async-openai).
    Openai,
    /// A rig agent with guarded rig tools.
    Rig,
    /// An MCP server (rmcp) in a child process, driven by an rmcp client.
    Mcp,
}

impl Framework {
    /// Every framework, in the order `all` runs them.
    pub const ALL: [Self; 4] = [Self::Generic, Self::Openai, Self::Rig, Self::Mcp];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Openai => "openai",
            Self::Rig => "rig",
            Self::Mcp => "mcp",
        }
    }

    /// The framework called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// Which model API a demo's agent talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Provider {
    /// OpenAI's chat completions (a scripted server, or `OPENAI_API_KEY`).
    #[default]
    Openai,
    /// Anthropic's Messages API: Claude (a scripted server, or `ANTHROPIC_API_KEY`).
    /// The rig demo only.
    Anthropic,
}

impl Provider {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

/// A real model's settings from `<PREFIX>_API_KEY`, `<PREFIX>_BASE_URL` and
/// `<PREFIX>_MODEL` (`OPENAI`, `ANTHROPIC`): `(key, base URL, model)`, or `None`
/// without a key (the demo then talks to its scripted model).
pub(crate) fn real_model(
    prefix: &str,
    default_base: &str,
    default_model: &str,
) -> Option<(String, String, String)> {
    let var = |name: &str| {
        std::env::var(format!("{prefix}_{name}"))
            .ok()
            .filter(|v| !v.is_empty())
    };
    Some((
        var("API_KEY")?,
        var("BASE_URL").unwrap_or_else(|| default_base.to_owned()),
        var("MODEL").unwrap_or_else(|| default_model.to_owned()),
    ))
}

/// Serves a scripted model's `app` on a free loopback port until the process
/// ends; answers its address.
pub(crate) async fn serve_scripted(app: axum::Router) -> Result<std::net::SocketAddr, DemoError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| DemoError::Setup(format!("cannot start the scripted model: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// What a demo's run left behind.
#[derive(Debug, Default)]
pub struct Finished {
    /// The run's trace entries.
    pub entries: Vec<TraceEntry>,
    /// The model's last words, if there was a model.
    pub answer: Option<String>,
    /// The run's policy reloads.
    pub policy_reloads: Vec<PolicyReloaded>,
    /// The compensations its failed workflows ran.
    pub compensations: Vec<CompensationEntry>,
}

impl Finished {
    /// What `run`'s trace holds, and the model's answer.
    pub fn of(run: &PaybondAgentRun, answer: Option<String>) -> Self {
        let trace = run.trace();
        Self {
            entries: trace.entries(),
            answer,
            policy_reloads: trace.policy_reloads(),
            compensations: trace.compensations(),
        }
    }
}

/// Binds a run for a demo: the policy's tools, an agent subject, (for the demos
/// whose model cannot store an approval token itself) waiting for approvals, and
/// (for a long-lived agent) polling the gateway for a newer effective policy every
/// `reload_every`.
pub async fn bind_run(
    gateway: Arc<dyn SpendGateway>,
    intent_id: Uuid,
    token: CapabilityToken,
    tools: BTreeMap<String, ToolPolicy>,
    subject: &str,
    wait: bool,
    reload_every: Option<Duration>,
) -> Result<PaybondAgentRun, DemoError> {
    let mut builder = PaybondAgentRun::builder(gateway, intent_id, token)
        .tools(tools)
        .agent_subject(subject)
        .currency("usd");
    if wait {
        builder = builder.wait_for_approval(ApprovalWait {
            timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(50),
        });
    }
    if let Some(every) = reload_every {
        builder = builder.reload_policy_every(every);
    }
    builder
        .bind()
        .await
        .map_err(|e| DemoError::Gateway(e.to_string()))
}

/// Runs one demo of `scenario` on a fresh intent and checks it against the scenario.
/// The rig demo's model speaks `provider`'s API; the other demos take only
/// [`Provider::Openai`] (the openai demo is async-openai, the generic and MCP demos
/// have no model).
pub async fn run(
    framework: Framework,
    scenario: Scenario,
    provider: Provider,
    gateway: &GatewayChoice,
) -> Result<Report, DemoError> {
    if provider != Provider::Openai && framework != Framework::Rig {
        return Err(DemoError::Usage(format!(
            "--provider {}: only the rig demo talks to other model APIs than OpenAI's \
             (try `paybond agent demo rig --provider {}`)",
            provider.name(),
            provider.name()
        )));
    }
    let h = Arc::new(Harness::start(gateway).await?);
    let finished = match (scenario, framework) {
        (Scenario::Canonical, Framework::Generic) => generic::run(&h).await?,
        (Scenario::Canonical, Framework::Openai) => openai::run(&h).await?,
        (Scenario::Canonical, Framework::Rig) => rig::run(&h, provider).await?,
        (Scenario::Canonical, Framework::Mcp) => mcp::run(&h).await?,
        (Scenario::Governed, framework) => governed::run(framework, provider, &h).await?,
    };
    let totals = TraceTotals::of(&finished.entries);
    // A compensation counts once it ran and the gateway's ledger has it.
    let compensations = finished
        .compensations
        .iter()
        .filter(|c| c.outcome == CompensationOutcome::Compensated && c.ledger_seq.is_some())
        .count();
    let summary = Summary {
        framework: framework.name().to_owned(),
        gateway: h.kind().to_owned(),
        scenario: scenario.name().to_owned(),
        consumed_cents: totals.consumed_cents,
        released_cents: totals.released_cents,
        holds: totals.holds,
        denies: totals.denies,
        compensations: u32::try_from(compensations).unwrap_or(u32::MAX),
        policy_reloads: u32::try_from(finished.policy_reloads.len()).unwrap_or(u32::MAX),
        open_reservations: h.open_reservations().await?,
        ledger_valid: h.ledger_valid().await?,
        passed: false,
        problems: Vec::new(),
    };
    Ok(Report::new(
        scenario,
        &finished.entries,
        summary,
        finished.answer,
    ))
}
