//! The in-process demos reach the scenario's end state on the embedded gateway;
//! an unreachable gateway fails the run before any tool runs. (The mcp demo runs
//! its server as a child of the demo binary: the smoke runner covers it.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use paybond_demos::{DemoError, Framework, GatewayChoice, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_openai_and_rig_reach_the_end_state() {
    for framework in [Framework::Generic, Framework::Openai, Framework::Rig] {
        let report = run(framework, &GatewayChoice::Embedded).await.unwrap();
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
        &GatewayChoice::Http {
            url: "http://127.0.0.1:9".to_owned(),
            env_file: dir.path().join("nothing"),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(missing, DemoError::Usage(_)), "{missing}");
}
