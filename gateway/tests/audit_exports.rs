//! Audit exports over HTTP: a job built in the background from one snapshot, a
//! signed ZIP downloaded with a short-lived token, and the offline check that finds
//! any change to the manifest, an artifact or the ledger segment. On a SQLite file
//! and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::block_on;

use std::io::{Read as _, Write as _};

use common::Fixture;
use ed25519_dalek::Signer as _;
use paybond_gateway::audit::{manifest_core_bytes, verify_bundle};
use paybond_gateway::{Clock, CreateAuditExportRequest, EngineConfig, Storage};
use paybond_middleware_core::SpendGateway;
use paybond_middleware_core::wire::{Environment, VerifyRequest};
use reqwest::Method;
use serde_json::{Map, Value, json};
use sha2::Digest as _;
use uuid::Uuid;

fn verify(
    intent: Uuid,
    token: &paybond_middleware_core::CapabilityToken,
    cents: u64,
) -> VerifyRequest {
    VerifyRequest {
        agent_subject: Some("agent:travel-bot".into()),
        ..common::verify_request(intent, token, cents)
    }
}

async fn call(
    base: &str,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    common::call(base, method, path, Some(key), body.as_deref()).await
}

/// Polls a job until it leaves queued/running.
async fn wait_ready(base: &str, key: &str, id: &str) -> Value {
    for _ in 0..200 {
        let (status, body) = call(
            base,
            Method::GET,
            &format!("/v1/compliance/audit-exports/{id}"),
            key,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let state = body["job"]["status"].as_str().unwrap().to_owned();
        if !matches!(state.as_str(), "queued" | "running") {
            return body["job"].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the export {id} did not finish");
}

async fn download(base: &str, id: &str, bearer: &str, method: Method) -> (u16, Vec<u8>) {
    let resp = reqwest::Client::new()
        .request(
            method,
            format!("{base}/v1/compliance/audit-exports/{id}/bundle"),
        )
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

fn entries(zip: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut f = archive.by_index(i).unwrap();
            let name = f.name().unwrap().into_owned();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

fn rezip(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        w.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn file<'a>(files: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &files
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .1
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `files` with `change` applied to one artifact, its digest updated in the
/// manifest, and the manifest signed again by `key`: a bundle whose signature and
/// digests hold, so only the content checks can find what changed.
fn resigned(
    files: &[(String, Vec<u8>)],
    path: &str,
    change: impl FnOnce(Vec<u8>) -> Vec<u8>,
    key: &ed25519_dalek::SigningKey,
) -> Vec<u8> {
    let mut files = files.to_vec();
    let entry = files.iter_mut().find(|(n, _)| n == path).unwrap();
    entry.1 = change(std::mem::take(&mut entry.1));
    let digest = hex(&sha2::Sha256::digest(&entry.1));
    let size = entry.1.len();
    let m = files
        .iter_mut()
        .find(|(n, _)| n == "manifest.json")
        .unwrap();
    let mut manifest: Map<String, Value> = serde_json::from_slice(&m.1).unwrap();
    for a in manifest["artifacts"].as_array_mut().unwrap() {
        if a["path"] == path {
            a["sha256"] = json!(digest);
            a["size_bytes"] = json!(size);
        }
    }
    let core = sha2::Sha256::digest(manifest_core_bytes(&manifest));
    manifest["signed_payload_sha256_hex"] = json!(hex(&core));
    manifest["ed25519_signature_hex"] = json!(hex(&key.sign(&core).to_bytes()));
    manifest["signing_public_key_ed25519_hex"] = json!(hex(key.verifying_key().as_bytes()));
    m.1 = serde_json::to_vec_pretty(&manifest).unwrap();
    rezip(&files)
}

async fn exports(fx: Fixture) {
    let base = common::serve(fx.engine.clone()).await;
    let gw = fx.gateway();
    let operator = fx.keys.operator.expose_secret();
    let agent = fx.keys.agent.expose_secret();
    let (other, other_token) = fx.intent(10_000);
    let (intent, token) = fx.intent(60_000);
    let allowed = gw.verify(&verify(intent, &token, 12_000)).await.unwrap();
    assert!(allowed.allow);
    let held = gw.verify(&verify(intent, &token, 18_700)).await.unwrap();
    assert!(held.approval_required);
    let denied = gw.verify(&verify(intent, &token, 25_000)).await.unwrap();
    assert!(!denied.allow && !denied.approval_required);
    let elsewhere = gw
        .verify(&verify(other, &other_token, 1_000))
        .await
        .unwrap();
    assert!(elsewhere.allow);

    // Who may ask, and what is refused.
    let create = "/v1/compliance/audit-exports";
    let (status, body) = call(&base, Method::POST, create, agent, Some(json!({}))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden_role")),
        "{body}"
    );
    for (request, field) in [
        (json!({"disclosure_tier": "secret"}), "disclosure_tier"),
        (
            json!({"filter": {"includes": ["signal"]}}),
            "includes: `signal`",
        ),
        (json!({"time_start": "yesterday"}), "time_start"),
        (
            json!({"time_start": "2026-01-02T00:00:00Z", "time_end": "2026-01-01T00:00:00Z"}),
            "time_end",
        ),
        (
            json!({"time_start": "2026-01-01T00:00:00Z", "filter": {"time_start": "2026-01-01T00:00:00Z"}}),
            "time_start: given both",
        ),
        (json!({"retention_hours": 0}), "retention_hours"),
        (json!({"filter": {"intent": "x"}}), "filter"),
    ] {
        let (status, body) =
            call(&base, Method::POST, create, operator, Some(request.clone())).await;
        assert_eq!(status, 422, "{request}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(field),
            "{request}: {body}"
        );
    }

    // The Paybond Kit's shape: the filter nested, standard tier.
    let (status, created) = call(
        &base,
        Method::POST,
        create,
        operator,
        Some(json!({"disclosure_tier": "standard", "filter": {"intent_id": intent, "case_id": "case-7"}})),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let job_id = created["job"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["job"]["tenant_realm_id"],
        fx.keys.tenant_id.as_str()
    );
    assert!(matches!(
        created["job"]["status"].as_str(),
        Some("queued" | "running" | "ready")
    ));
    let job = wait_ready(&base, operator, &job_id).await;
    assert_eq!(job["status"], "ready", "{job}");
    assert_eq!(job["progress"], json!({"stage": "done", "percent": 100}));
    assert_eq!(
        job["filter"]["includes"],
        json!([
            "ledger",
            "decisions",
            "approvals",
            "guardrails",
            "harbor_intents"
        ])
    );
    assert!(job.get("download_token").is_none(), "{job}");

    // An agent key reads the job but gets no download token and no bundle.
    let job_path = format!("/v1/compliance/audit-exports/{job_id}");
    let (status, _) = call(&base, Method::GET, &job_path, agent, None).await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &base,
        Method::GET,
        &format!("{job_path}?issue_download=1"),
        agent,
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = download(&base, &job_id, agent, Method::GET).await;
    assert_eq!(status, 403);

    // The operator gets a token and downloads with it, as the Kit does (POST).
    let (status, issued) = call(
        &base,
        Method::GET,
        &format!("{job_path}?issue_download=1"),
        operator,
        None,
    )
    .await;
    assert_eq!(status, 200, "{issued}");
    let download_token = issued["job"]["download_token"].as_str().unwrap().to_owned();
    assert!(download_token.starts_with("pbdl_"));
    assert_eq!(
        issued["job"]["download_path"],
        format!("/v1/compliance/audit-exports/{job_id}/bundle")
    );
    let (status, zip) = download(&base, &job_id, &download_token, Method::POST).await;
    assert_eq!(status, 200);
    assert_eq!(
        hex(&sha2::Sha256::digest(&zip)),
        job["bundle_sha256"].as_str().unwrap()
    );
    assert_eq!(zip.len() as u64, job["bundle_size_bytes"].as_u64().unwrap());
    let (status, same) = download(&base, &job_id, operator, Method::GET).await;
    assert_eq!((status, &same), (200, &zip));
    let (status, _) = download(&base, &job_id, "pbdl_0000", Method::POST).await;
    assert_eq!(status, 401);

    // It verifies offline, against the key the gateway publishes.
    let (_, keys) = call(
        &base,
        Method::GET,
        "/v1/compliance/signing-keys",
        agent,
        None,
    )
    .await;
    let public = keys["keys"][0]["public_key_hex"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(public.len(), 64);
    let report = verify_bundle(&zip, Some(&public)).unwrap();
    assert!(report.verified, "{report:?}");
    assert!(report.signature_valid);
    assert_eq!(report.job_id, job_id);
    let ledger = report.ledger.clone().unwrap();
    assert!(ledger.valid && ledger.first_seq == 1, "{ledger:?}");

    let files = entries(&zip);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "manifest.json",
            "ledger/events.jsonl",
            "proof/ledger_verifier_pack.json",
            "decisions.jsonl",
            "approvals.jsonl",
            "guardrails/policy_lifecycle.jsonl",
            "guardrails/denials.jsonl",
            "harbor/intents.jsonl",
            "harbor/evidence.jsonl",
        ]
    );
    let manifest: Value = serde_json::from_slice(file(&files, "manifest.json")).unwrap();
    let keys_in_order: Vec<&str> = manifest
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys_in_order,
        [
            "schema_version",
            "kind",
            "tenant_realm_id",
            "job_id",
            "generated_at_rfc3339",
            "gateway_build_version",
            "disclosure_tier",
            "redaction_profile",
            "checkpoint_last_ledger_seq",
            "export_filter",
            "artifacts",
            "signed_payload_sha256_hex",
            "ed25519_signature_hex",
            "signing_public_key_ed25519_hex",
        ]
    );
    assert_eq!(manifest["kind"], "paybond.audit_export_manifest_v1");
    assert_eq!(manifest["export_filter"]["case_id"], "case-7");
    assert_eq!(manifest["checkpoint_last_ledger_seq"], ledger.last_seq);
    assert_eq!(manifest["artifacts"].as_array().unwrap().len(), 8);
    // The whole chain so far (the filter narrows the rest, not the ledger).
    let events = lines(file(&files, "ledger/events.jsonl"));
    assert!(
        events
            .iter()
            .any(|e| e["payload"]["intent_id"] == other.to_string())
    );
    // Decisions, approvals and denials of the intent asked for only.
    let decisions = lines(file(&files, "decisions.jsonl"));
    let outcomes: Vec<&str> = decisions
        .iter()
        .map(|d| d["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["allow", "hold", "deny"], "{decisions:?}");
    assert!(
        decisions
            .iter()
            .all(|d| d["intent_id"] == intent.to_string())
    );
    assert_eq!(
        decisions[0]["result"]["decision_id"],
        allowed.decision_id.unwrap().to_string()
    );
    assert!(
        decisions[0]["result"]["checks"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    );
    let approvals = lines(file(&files, "approvals.jsonl"));
    assert_eq!(approvals.len(), 1);
    assert!(
        approvals[0]["agent"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{approvals:?}"
    );
    let denials = lines(file(&files, "guardrails/denials.jsonl"));
    assert_eq!(denials.len(), 1);
    assert!(
        denials[0]["agent_subject_sha256"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let raw = String::from_utf8(file(&files, "guardrails/denials.jsonl").to_vec()).unwrap();
    assert!(!raw.contains("travel-bot"), "{raw}");
    let lifecycle = lines(file(&files, "guardrails/policy_lifecycle.jsonl"));
    assert!(
        lifecycle
            .iter()
            .any(|e| e["event"] == "org_policy.published"),
        "{lifecycle:?}"
    );
    assert!(
        lifecycle.iter().any(|e| e["event"] == "policy.published"),
        "{lifecycle:?}"
    );
    let intents = lines(file(&files, "harbor/intents.jsonl"));
    assert_eq!(intents.len(), 1);
    // No secret anywhere in the bundle.
    let everything: Vec<u8> = files.iter().flat_map(|(_, d)| d.clone()).collect();
    let text = String::from_utf8_lossy(&everything);
    for secret in [
        token.expose_secret(),
        operator,
        agent,
        download_token.as_str(),
    ] {
        assert!(!text.contains(secret));
    }

    // What the offline check finds.
    let mut tampered = files.clone();
    tampered[3].1.extend_from_slice(b"{\"forged\":true}\n");
    let report = verify_bundle(&rezip(&tampered), None).unwrap();
    assert!(!report.verified && !report.intact);
    assert!(report.signature_valid, "the manifest itself is untouched");
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(
        report.problems[0].starts_with("decisions.jsonl: SHA-256"),
        "{report:?}"
    );

    let mut tampered = files.clone();
    let forged = String::from_utf8(tampered[0].1.clone())
        .unwrap()
        .replace(&fx.keys.tenant_id, "tnt_forged");
    tampered[0].1 = forged.into_bytes();
    let report = verify_bundle(&rezip(&tampered), None).unwrap();
    assert!(!report.intact && !report.signature_valid, "{report:?}");

    let mut tampered = files.clone();
    tampered.push(("extra.txt".into(), b"x".to_vec()));
    let report = verify_bundle(&rezip(&tampered), None).unwrap();
    assert_eq!(
        report.problems,
        ["extra.txt: in the ZIP but not in the manifest"]
    );

    // Signed again by someone else: the signature holds, the expected key does not,
    // and a changed ledger entry breaks the chain.
    let forger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let forged = resigned(
        &files,
        "ledger/events.jsonl",
        |bytes| {
            String::from_utf8(bytes)
                .unwrap()
                .replacen("12000", "1200", 1)
                .into_bytes()
        },
        &forger,
    );
    let report = verify_bundle(&forged, None).unwrap();
    assert!(report.signature_valid);
    assert!(!report.verified && !report.intact && !report.signer_checked);
    assert!(
        report
            .ledger
            .as_ref()
            .unwrap()
            .problem
            .as_deref()
            .unwrap()
            .contains("hash does not match"),
        "{report:?}"
    );
    let report = verify_bundle(&forged, Some(&public)).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("not by the expected key")),
        "{report:?}"
    );
    // Dropping the first entry: the pack's ends no longer match.
    let forged = resigned(
        &files,
        "ledger/events.jsonl",
        |bytes| {
            let text = String::from_utf8(bytes).unwrap();
            text.split_once('\n').unwrap().1.as_bytes().to_vec()
        },
        &forger,
    );
    let report = verify_bundle(&forged, None).unwrap();
    assert!(!report.ledger.unwrap().valid);
    assert!(verify_bundle(b"not a zip", None).is_err());

    // A window before anything happened: an empty segment, still signed and valid.
    let (_, early) = call(
        &base,
        Method::POST,
        create,
        operator,
        Some(json!({"time_end": "2001-01-01T00:00:00Z", "includes": ["decisions"], "disclosure_tier": "extended"})),
    )
    .await;
    let early_id = early["job"]["id"].as_str().unwrap().to_owned();
    let early_job = wait_ready(&base, operator, &early_id).await;
    assert_eq!(early_job["status"], "ready");
    let (_, early_zip) = download(&base, &early_id, operator, Method::GET).await;
    let report = verify_bundle(&early_zip, Some(&public)).unwrap();
    assert!(report.verified, "{report:?}");
    assert_eq!(report.ledger.unwrap().events, 0);
    assert_eq!(report.artifacts.len(), 3, "ledger, pack, decisions");

    // The list: newest first, a page at a time.
    let (status, list) = call(&base, Method::GET, create, agent, None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["tenant_realm_id"], fx.keys.tenant_id.as_str());
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [early_id.as_str(), job_id.as_str()]);
    let (_, page) = call(
        &base,
        Method::GET,
        &format!("{create}?limit=1"),
        operator,
        None,
    )
    .await;
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, next) = call(
        &base,
        Method::GET,
        &format!("{create}?limit=1&cursor={cursor}"),
        operator,
        None,
    )
    .await;
    assert_eq!(next["jobs"][0]["id"], job_id.as_str());
    assert!(next["next_cursor"].is_null());

    // Deleted: the bundle and its token are gone; the job says so.
    let (status, _) = call(&base, Method::DELETE, &job_path, agent, None).await;
    assert_eq!(status, 403);
    let (status, gone) = call(&base, Method::DELETE, &job_path, operator, None).await;
    assert_eq!(status, 200);
    assert_eq!(gone, json!({"job_id": job_id, "deleted": true}));
    let (_, after) = call(&base, Method::GET, &job_path, operator, None).await;
    assert_eq!(after["job"]["status"], "deleted");
    let (status, _) = download(&base, &job_id, operator, Method::GET).await;
    assert_eq!(status, 409);
    let (status, _) = download(&base, &job_id, &download_token, Method::POST).await;
    assert_eq!(status, 401);
    let (status, body) = call(
        &base,
        Method::GET,
        &format!("/v1/compliance/audit-exports/{}", Uuid::new_v4()),
        operator,
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("audit_export_not_found"))
    );

    // Another tenant sees none of it.
    let other_keys = fx
        .engine
        .create_tenant("other", Environment::Sandbox)
        .await
        .unwrap();
    let (status, _) = call(
        &base,
        Method::GET,
        &job_path,
        other_keys.operator.expose_secret(),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, theirs) = call(
        &base,
        Method::GET,
        create,
        other_keys.operator.expose_secret(),
        None,
    )
    .await;
    assert_eq!(theirs["jobs"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_exports_on_a_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let fx = Fixture::with_config(EngineConfig::new(Storage::File(
        dir.path().join("paybond.db"),
    )));
    exports(fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_exports_on_postgres() {
    let Some(config) = common::pg_config() else {
        return;
    };
    exports(Fixture::with_config(config)).await;
}

#[test]
fn a_bundle_past_its_retention_expires_and_a_job_whose_builder_stopped_fails() {
    let clock = Clock::manual(1_800_000_000_000);
    let mut config = EngineConfig::new(Storage::Memory);
    config.clock = clock.clone();
    let fx = Fixture::with_config(config);
    let engine = &fx.engine;
    let request = CreateAuditExportRequest {
        retention_hours: Some(1),
        ..Default::default()
    };
    let built = block_on(engine.create_audit_export(&fx.operator, &request))
        .unwrap()
        .job;
    block_on(engine.build_audit_export(&fx.keys.tenant_id, built.id)).unwrap();
    let abandoned = block_on(engine.create_audit_export(&fx.operator, &request))
        .unwrap()
        .job;
    assert_eq!(
        block_on(engine.audit_export(&fx.operator, built.id, false))
            .unwrap()
            .job
            .status,
        "ready"
    );
    assert_eq!(
        block_on(engine.audit_export(&fx.operator, abandoned.id, false))
            .unwrap()
            .job
            .status,
        "queued"
    );

    // Its builder never reported: after two minutes the job failed, and says why.
    clock.advance_ms(121_000);
    let job = block_on(engine.audit_export(&fx.operator, abandoned.id, false))
        .unwrap()
        .job;
    assert_eq!(job.status, "failed");
    assert!(job.error.contains("interrupted"), "{}", job.error);
    // A late builder does not bring it back.
    block_on(engine.build_audit_export(&fx.keys.tenant_id, abandoned.id)).unwrap();
    assert_eq!(
        block_on(engine.audit_export(&fx.operator, abandoned.id, false))
            .unwrap()
            .job
            .status,
        "failed"
    );

    // A download token is shown once, and its Debug hides it.
    let issued = block_on(engine.audit_export(&fx.operator, built.id, true))
        .unwrap()
        .job;
    let shown = issued.download_token.clone().unwrap();
    assert!(!format!("{issued:?}").contains(shown.expose_secret()));
    let bundle = block_on(engine.audit_export_bundle(
        paybond_gateway::BundleCredential::DownloadToken(shown.expose_secret()),
        built.id,
    ))
    .unwrap();
    // Intact by itself; verified only against the tenant's key.
    let unchecked = verify_bundle(&bundle, None).unwrap();
    assert!(unchecked.intact && !unchecked.signer_checked && !unchecked.verified);
    let public = block_on(engine.signing_keys(&fx.operator)).unwrap().keys[0]
        .public_key_hex
        .clone();
    assert!(verify_bundle(&bundle, Some(&public)).unwrap().verified);
    // Fifteen minutes later the token no longer works.
    clock.advance_ms(15 * 60_000);
    let refused = block_on(engine.audit_export_bundle(
        paybond_gateway::BundleCredential::DownloadToken(shown.expose_secret()),
        built.id,
    ))
    .unwrap_err();
    assert_eq!(refused.status, 401);
    assert!(!refused.message.contains(shown.expose_secret()));

    // Past its retention the bundle is dropped.
    clock.advance_ms(3_600_000);
    let job = block_on(engine.audit_export(&fx.operator, built.id, false))
        .unwrap()
        .job;
    assert_eq!(job.status, "expired");
    let err = block_on(engine.audit_export_bundle(
        paybond_gateway::BundleCredential::Principal(&fx.operator),
        built.id,
    ))
    .unwrap_err();
    assert_eq!(err.code, "audit_export_not_ready");
}
