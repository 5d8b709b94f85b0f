//! The in-process demos reach each scenario's end state on the embedded gateway;
//! the governed scenario over HTTP leaves the tenant's policy as it found it; an
//! unreachable gateway fails the run before any tool runs. (The mcp demo runs its
//! server as a child of the demo binary: the smoke runner covers it.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::sync::Arc;

use paybond_demos::{DemoError, Framework, GatewayChoice, Provider, Scenario, run};
use paybond_gateway::{Engine, PolicyFile};
use paybond_middleware_core::wire::Environment;

/// The demos that run in this process, rig with both model APIs.
const IN_PROCESS: [(Framework, Provider); 4] = [
    (Framework::Generic, Provider::Openai),
    (Framework::Openai, Provider::Openai),
    (Framework::Rig, Provider::Openai),
    (Framework::Rig, Provider::Anthropic),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_openai_and_rig_reach_the_end_state() {
    for (framework, provider) in IN_PROCESS {
        let report = run(
            framework,
            Scenario::Canonical,
            provider,
            &GatewayChoice::Embedded,
        )
        .await
        .unwrap();
        assert!(
            report.passed(),
            "{}: {:?}",
            framework.name(),
            report.problems
        );
        assert_eq!(report.entries.len(), 6);
        let json = report.json_lines();
        let last: serde_json::Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
        assert_eq!(last["summary"]["framework"], framework.name());
        assert_eq!(last["summary"]["consumed_cents"], 30_700);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_openai_and_rig_reach_the_governed_end_state() {
    for (framework, provider) in IN_PROCESS {
        let report = run(
            framework,
            Scenario::Governed,
            provider,
            &GatewayChoice::Embedded,
        )
        .await
        .unwrap();
        assert!(
            report.passed(),
            "{}: {:?}",
            framework.name(),
            report.problems
        );
        let s = &report.summary;
        assert_eq!(
            (s.scenario.as_str(), s.consumed_cents, s.denies),
            ("governed", 20_000, 3)
        );
        assert_eq!((s.compensations, s.policy_reloads), (1, 1));
        let json = report.json_lines();
        // The card number in a booking's note never reaches the output.
        assert!(!json.contains("4111"), "{json}");
        // The phase deny carries its proof trace, naming the check that failed.
        assert!(json.contains("\"name\":\"payment_phase\""), "{json}");
    }
}

/// A gateway served on a loopback port for a fresh tenant, and an env file with
/// its keys (as `paybond dev loop --offline` writes it).
async fn served() -> (Arc<Engine>, String, tempfile::TempDir, String) {
    let engine = Arc::new(Engine::in_memory().unwrap());
    let keys = engine
        .create_tenant("demo", Environment::Sandbox)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(paybond_gateway::server::serve(
        listener,
        engine.clone(),
        std::future::pending(),
    ));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env.local"),
        format!(
            "PAYBOND_API_KEY={}\nPAYBOND_OPERATOR_API_KEY={}\nPAYBOND_ADMIN_API_KEY={}\n",
            keys.agent.expose_secret(),
            keys.operator.expose_secret(),
            keys.tenant_admin.expose_secret()
        ),
    )
    .unwrap();
    (engine, url, dir, keys.tenant_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_governed_scenario_over_http_leaves_the_tenant_policy_as_it_found_it() {
    let (engine, url, dir, tenant) = served().await;
    let digest =
        async |engine: &Arc<Engine>| engine.tenant_policy(&tenant).await.unwrap().unwrap().digest;
    let bundled = digest(&engine).await;
    let choice = GatewayChoice::Http {
        url,
        env_file: dir.path().join(".env.local"),
    };
    let report = run(
        Framework::Generic,
        Scenario::Governed,
        Provider::Openai,
        &choice,
    )
    .await
    .unwrap();
    assert!(report.passed(), "{:?}", report.problems);
    assert_eq!(report.summary.gateway, "http");
    // It published its own policy twice, then put the bundled one back.
    assert_eq!(digest(&engine).await, bundled);

    // A tenant with a policy of its own is left alone: nothing runs.
    let mut custom = PolicyFile::bundled_tenant_overlay();
    custom.text = custom.text.replace(
        "approval_threshold_cents: 15000",
        "approval_threshold_cents: 14000",
    );
    let published = engine
        .publish_tenant_policy_text(&tenant, &custom)
        .await
        .unwrap();
    let err = run(
        Framework::Generic,
        Scenario::Governed,
        Provider::Openai,
        &choice,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DemoError::Usage(_)), "{err}");
    assert!(err.to_string().contains(&published.digest), "{err}");
    assert_eq!(digest(&engine).await, published.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gateway_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join(".env.local");
    std::fs::write(
        &env_file,
        "PAYBOND_API_KEY=paybond_sk_sandbox_x\nPAYBOND_OPERATOR_API_KEY=paybond_sk_sandbox_y\n",
    )
    .unwrap();
    let err = run(
        Framework::Generic,
        Scenario::Canonical,
        Provider::Openai,
        &GatewayChoice::Http {
            url: "http://127.0.0.1:9".to_owned(),
            env_file,
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DemoError::Environment(_)), "{err}");
    assert!(!err.to_string().contains("paybond_sk_sandbox_x"), "{err}");

    let missing = run(
        Framework::Generic,
        Scenario::Canonical,
        Provider::Openai,
        &GatewayChoice::Http {
            url: "http://127.0.0.1:9".to_owned(),
            env_file: dir.path().join("nothing"),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(missing, DemoError::Usage(_)), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_rig_demo_talks_to_claude() {
    for framework in [Framework::Generic, Framework::Openai, Framework::Mcp] {
        let err = run(
            framework,
            Scenario::Canonical,
            Provider::Anthropic,
            &GatewayChoice::Embedded,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, DemoError::Usage(m) if m.contains("--provider anthropic") && m.contains("rig")),
            "{err}"
        );
    }
}
