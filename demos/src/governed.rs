//! The governed scenario (`--scenario governed`): governance beyond caps, the same
//! for every framework.
//!
//! The tenant's policy becomes `demos/governed.policy.yaml`: the canonical overlay
//! plus a payment phase (COMMIT) and a card-number pattern. Then, in part 1, the
//! agent searches, tries to book before committing to a plan (denied
//! `phase_not_committed`), commits (`commit_plan`), tries to book with a card
//! number in a note (denied `sensitive_data_in_arguments`, never sent), and books
//! a two-stay trip whose second stay fails, so the first is cancelled: a
//! compensation on the ledger. Between the parts the operator lowers the
//! per-booking cap to 100.00 and the running agent reloads its policy; in part 2
//! a 120.00 booking is denied `tool_cap_exceeded` and an 80.00 one is consumed.
//!
//! Against a remote gateway the scenario publishes policies as the tenant's admin,
//! so it runs only while the tenant has the bundled policy, which it puts back at
//! the end.

use std::sync::Arc;

use paybond_gateway::{Engine, PolicyFile};
use paybond_middleware_core::PaybondAgentRun;
use paybond_middleware_core::wire::Environment;

use crate::harness::Harness;
use crate::{DemoError, Finished, Framework};

/// `demos/governed.policy.yaml`.
pub const POLICY: &str = include_str!("../governed.policy.yaml");
/// Its file name, for diagnostics.
pub const POLICY_FILE: &str = "demos/governed.policy.yaml";
/// The per-booking cap of part 1.
pub const CAP_BEFORE_CENTS: u64 = 20_000;
/// The per-booking cap the operator lowers it to before part 2.
pub const CAP_AFTER_CENTS: u64 = 10_000;

/// The scenario's policy with the per-booking cap at `cap_cents`.
pub fn policy(cap_cents: u64) -> Result<String, DemoError> {
    let from = format!("max_per_call_cents: {CAP_BEFORE_CENTS}");
    if !POLICY.contains(&from) {
        return Err(DemoError::Setup(format!(
            "{POLICY_FILE} has no `{from}` to change"
        )));
    }
    Ok(POLICY.replace(&from, &format!("max_per_call_cents: {cap_cents}")))
}

/// The digest of the bundled policies' effective policy (what `paybond dev loop`
/// publishes for its tenant).
async fn bundled_digest() -> Result<String, DemoError> {
    let digest = async {
        let engine = std::sync::Arc::new(Engine::in_memory()?);
        let keys = engine
            .create_tenant("bundled", Environment::Sandbox)
            .await?;
        Ok::<_, paybond_gateway::ApiError>(
            engine
                .tenant_policy(&keys.tenant_id)
                .await?
                .map(|p| p.digest)
                .unwrap_or_default(),
        )
    };
    digest.await.map_err(|e| DemoError::Setup(e.to_string()))
}

/// Runs the governed scenario with `framework` on `h`'s gateway.
pub async fn run(
    framework: Framework,
    provider: crate::Provider,
    h: &Arc<Harness>,
) -> Result<Finished, DemoError> {
    let bundled = bundled_digest().await?;
    let current = h.policy_digest().await?;
    if current != bundled {
        return Err(DemoError::Usage(format!(
            "the governed scenario publishes its own policy and then puts the bundled one \
             back; this tenant's policy is not the bundled one (digest {current}), so it \
             was left alone. Run it against a fresh `paybond dev loop --offline`."
        )));
    }
    h.publish_policy(&policy(CAP_BEFORE_CENTS)?, POLICY_FILE)
        .await?;
    let finished = match framework {
        Framework::Generic => crate::generic::governed(h).await,
        Framework::Openai => crate::openai::governed(h).await,
        Framework::Rig => crate::rig::governed(h, provider).await,
        Framework::Mcp => crate::mcp::governed(h).await,
    };
    let bundled = PolicyFile::bundled_tenant_overlay();
    let restored = h.publish_policy(&bundled.text, &bundled.file).await;
    let finished = finished?;
    restored?;
    Ok(finished)
}

/// Between the parts: the operator lowers the per-booking cap.
pub async fn lower_cap(h: &Harness) -> Result<(), DemoError> {
    h.publish_policy(&policy(CAP_AFTER_CENTS)?, POLICY_FILE)
        .await
        .map(drop)
}

/// Between the parts, for an agent in this process: the operator lowers the cap and
/// the running agent reloads its policy.
pub async fn between_parts(h: &Harness, run: &PaybondAgentRun) -> Result<(), DemoError> {
    lower_cap(h).await?;
    reload(run).await
}

/// The running agent reloads its policy, which must have changed.
async fn reload(run: &PaybondAgentRun) -> Result<(), DemoError> {
    match run.reload_policy().await {
        Ok(Some(reloaded)) => {
            tracing::info!(
                from = ?reloaded.from_digest,
                to = ?reloaded.to_digest,
                "policy_reloaded"
            );
            Ok(())
        }
        Ok(None) => Err(DemoError::Gateway(
            "the run found no newer policy to reload".to_owned(),
        )),
        Err(e) => Err(DemoError::Gateway(format!("reloading the policy: {e}"))),
    }
}

/// What the model is told in each part, naming the functions it is offered.
pub fn instructions(part: usize, steps: &[crate::scenario::Step]) -> String {
    let names = paybond_middleware_core::function_names::FunctionNames::new([
        crate::travel::SEARCH,
        crate::travel::BOOK,
        crate::travel::TRIP,
    ])
    .unwrap_or_default();
    let calls: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = names.function_name(s.tool).unwrap_or(s.tool);
            format!("{}) {name} {}", i + 1, s.args)
        })
        .collect();
    format!(
        "Part {part}: do exactly these tool calls, one per turn, in this order: {}. \
         Then answer with one sentence saying what happened to each.",
        calls.join("; ")
    )
}

/// The system prompt of the model-driven demos in this scenario.
pub const PROMPT: &str = "You book hotels for a traveller under a spend policy. Do exactly \
the tool calls the user lists, with exactly the arguments given. If a result says \
blocked or failed, do not retry it.";
