//! Compensation: a failed workflow undoes its paid steps in reverse order, each at
//! most once, records every outcome in the trace and the ledger, keeps its own
//! error, and still compensates when its future is dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use paybond_middleware_core::registry::GuardedRegistry;
use paybond_middleware_core::scope::transaction;
use paybond_middleware_core::testing::{GatewayCall, ScriptedGateway, VerifyScript};
use paybond_middleware_core::wire::CompensationOutcome;
use paybond_middleware_core::{
    BoxError, PaybondAgentRun, ToolOutput, ToolPolicy, ToolRegistry, tool_fn,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const PAY: &str = "shop.pay";

async fn setup(calls: usize) -> (Arc<ScriptedGateway>, PaybondAgentRun, GuardedRegistry) {
    let gateway = Arc::new(ScriptedGateway::new());
    for _ in 0..calls {
        gateway.push_verify(VerifyScript::Allow);
    }
    let run = PaybondAgentRun::builder(gateway.clone(), uuid::Uuid::new_v4(), "cap".into())
        .tool(
            PAY,
            ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
        )
        .bind()
        .await
        .unwrap();
    let tools = ToolRegistry::new()
        .with(tool_fn(
            PAY,
            ToolPolicy::read_only(),
            |args: Value| async move {
                Ok(ToolOutput::new(json!({"paid": true}))
                    .with_cost_cents(args["amount_cents"].as_u64().unwrap_or(0)))
            },
        ))
        .guarded(&run);
    (gateway, run, tools)
}

fn compensations_sent(gateway: &ScriptedGateway) -> Vec<(uuid::Uuid, CompensationOutcome)> {
    gateway
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            GatewayCall::Compensation {
                decision_id,
                request,
            } => Some((decision_id, request.outcome)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_failed_workflow_undoes_its_paid_steps_last_first_and_keeps_its_error() {
    let (gateway, run, tools) = setup(3).await;
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let failed = transaction(&run, "trip", |scope| {
        let order = order.clone();
        async move {
            for (i, id) in ["hotel", "car", "tour"].iter().enumerate() {
                tools
                    .call(PAY, json!({"amount_cents": 100 * (i + 1)}), id)
                    .await
                    .map_err(|e| e.to_string())?;
                let order = order.clone();
                let id = (*id).to_owned();
                scope.compensate_with(&id.clone(), move || async move {
                    order.lock().unwrap().push(id.clone());
                    if id == "car" {
                        return Err::<(), BoxError>("the rental desk is closed".into());
                    }
                    Ok(())
                });
            }
            Err::<(), String>("the flight is sold out".to_owned())
        }
    })
    .await
    .unwrap_err();
    assert_eq!(
        failed.error, "the flight is sold out",
        "the original error is kept"
    );
    assert_eq!(failed.workflow, "trip");
    assert_eq!(*order.lock().unwrap(), ["tour", "car", "hotel"]);
    let outcomes: Vec<(&str, CompensationOutcome)> = failed
        .compensations
        .iter()
        .map(|c| (c.tool_call_id.as_str(), c.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("tour", CompensationOutcome::Compensated),
            ("car", CompensationOutcome::CompensationFailed),
            ("hotel", CompensationOutcome::Compensated),
        ]
    );
    assert_eq!(
        failed.compensations[1].error.as_deref(),
        Some("the rental desk is closed")
    );
    // Each linked to its decision, recorded with the gateway and in the trace.
    let decisions: Vec<_> = run
        .trace()
        .entries()
        .iter()
        .map(|e| e.decision_id.unwrap())
        .collect();
    let sent = compensations_sent(&gateway);
    assert_eq!(
        sent,
        [
            (decisions[2], CompensationOutcome::Compensated),
            (decisions[1], CompensationOutcome::CompensationFailed),
            (decisions[0], CompensationOutcome::Compensated),
        ]
    );
    assert!(failed.compensations.iter().all(|c| c.ledger_seq.is_some()));
    assert_eq!(run.trace().compensations(), failed.compensations);
    assert!(
        run.trace()
            .table()
            .contains("compensation_failed  car (trip): the rental desk is closed")
    );
    assert!(failed.to_string().contains("the flight is sold out"));
}

#[tokio::test]
async fn a_workflow_that_succeeds_compensates_nothing() {
    let (gateway, run, tools) = setup(1).await;
    let ran = Arc::new(AtomicU32::new(0));
    let counter = ran.clone();
    let done = transaction(&run, "ok", |scope| async move {
        tools.call(PAY, json!({"amount_cents": 100}), "p1").await?;
        scope.compensate_with("p1", move || async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        Ok::<_, paybond_middleware_core::RunError>(7)
    })
    .await
    .unwrap();
    assert_eq!(done, 7);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert!(compensations_sent(&gateway).is_empty());
}

#[tokio::test]
async fn dropping_the_workflow_midway_still_compensates_the_steps_done() {
    let (gateway, run, tools) = setup(2).await;
    let ran = Arc::new(AtomicU32::new(0));
    let counter = ran.clone();
    let workflow = transaction(&run, "dropped", move |scope| async move {
        for id in ["a", "b"] {
            tools.call(PAY, json!({"amount_cents": 100}), id).await?;
            let counter = counter.clone();
            scope.compensate_with(id, move || async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(())
            });
        }
        // Never finishes: the caller gives up.
        std::future::pending::<()>().await;
        Ok::<(), paybond_middleware_core::RunError>(())
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(100), workflow)
            .await
            .is_err()
    );
    let start = std::time::Instant::now();
    while run.trace().compensations().len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "not compensated");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    assert_eq!(compensations_sent(&gateway).len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever step the workflow fails at, or is dropped at, each compensation runs
    /// at most once, and exactly once for a registered step of a workflow that did
    /// not succeed.
    #[test]
    fn a_compensation_runs_at_most_once(steps in 1usize..5, stop_at in 0usize..6, cancel in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let (_gateway, run, tools) = setup(steps).await;
            let counters: Vec<Arc<AtomicU32>> = (0..steps).map(|_| Arc::new(AtomicU32::new(0))).collect();
            let registered = Arc::new(AtomicU32::new(0));
            let (c2, r2) = (counters.clone(), registered.clone());
            let workflow = transaction(&run, "prop", move |scope| async move {
                for (i, counter) in c2.iter().enumerate() {
                    if i == stop_at {
                        if cancel {
                            std::future::pending::<()>().await;
                        }
                        return Err::<(), String>(format!("failed at {i}"));
                    }
                    tools.call(PAY, json!({"amount_cents": 10}), &format!("s{i}")).await.map_err(|e| e.to_string())?;
                    let counter = counter.clone();
                    scope.compensate_with(&format!("s{i}"), move || async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    });
                    r2.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            });
            let outcome = tokio::time::timeout(Duration::from_millis(200), workflow).await;
            let succeeded = matches!(outcome, Ok(Ok(())));
            // Give a dropped workflow's task time to run.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = registered.load(Ordering::SeqCst) as usize;
            for (i, c) in counters.iter().enumerate() {
                let runs = c.load(Ordering::SeqCst);
                assert!(runs <= 1, "step {i} compensated {runs} times");
                let expected = u32::from(!succeeded && i < n);
                assert_eq!(runs, expected, "step {i}: steps {steps}, stop {stop_at}, cancel {cancel}");
            }
            assert_eq!(run.trace().compensations().len(), if succeeded { 0 } else { n });
        });
    }
}
