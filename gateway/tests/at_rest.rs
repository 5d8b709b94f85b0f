//! Secrets at rest: what a local user who can read the gateway's files finds there.
//! The data dir is 0700 and its files 0600; the root key lives in its own 0600 file
//! (rotatable), never in the database; approval tokens and the capability tokens of
//! idempotent answers are never written, in the database or its WAL.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::block_on;

use common::Blocking;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{BOOK, Fixture, call};
use paybond_gateway::{Engine, EngineConfig, Storage, root_key_path};
use reqwest::Method;
use serde_json::json;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The database and its WAL, as bytes (what a reader of the files sees).
fn raw(db: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(db).unwrap();
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    bytes.extend(std::fs::read(PathBuf::from(wal)).unwrap_or_default());
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn key_bytes(db: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(root_key_path(db)).unwrap();
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_are_private_and_hold_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join(".paybond");
    let db = data.join("paybond.db");
    let fx = Fixture::with_config(EngineConfig::new(Storage::File(db.clone())));
    let base = common::serve(fx.engine.clone()).await;
    let agent = fx.keys.agent.expose_secret();
    let operator = fx.keys.operator.expose_secret();

    // An idempotent bootstrap, replayed: each answer carries a working token.
    let body =
        json!({"operation": BOOK, "requested_spend_cents": 60_000, "idempotency_key": "boot-1"})
            .to_string();
    let (_, first) = call(
        &base,
        Method::POST,
        "/v1/sandbox/guardrails/bootstrap",
        Some(agent),
        Some(&body),
    )
    .await;
    let (_, replay) = call(
        &base,
        Method::POST,
        "/v1/sandbox/guardrails/bootstrap",
        Some(agent),
        Some(&body),
    )
    .await;
    assert_eq!(first["intent_id"], replay["intent_id"]);
    let first_token = first["capability_token"].as_str().unwrap().to_owned();
    let replay_token = replay["capability_token"].as_str().unwrap().to_owned();
    let intent = first["intent_id"].as_str().unwrap().to_owned();
    for token in [&first_token, &replay_token] {
        let verify = json!({"intent_id": intent, "token": token, "operation": BOOK,
                            "requested_spend_cents": 100, "vendor_id": "vendor_acme"});
        let (_, answer) = call(
            &base,
            Method::POST,
            "/verify",
            Some(agent),
            Some(&verify.to_string()),
        )
        .await;
        assert_eq!(answer["allow"], json!(true), "{answer}");
    }

    // A hold, approved; the agent fetches its token once.
    let verify = json!({"intent_id": intent, "token": first_token, "operation": BOOK,
                        "requested_spend_cents": 18_700, "vendor_id": "vendor_acme"});
    let (_, held) = call(
        &base,
        Method::POST,
        "/verify",
        Some(agent),
        Some(&verify.to_string()),
    )
    .await;
    let approval = held["approval_request_id"].as_str().unwrap().to_owned();
    let (_, approved) = call(
        &base,
        Method::POST,
        &format!("/v1/approvals/{approval}/approve"),
        Some(operator),
        None,
    )
    .await;
    assert_eq!(approved["state"], "approved");
    assert!(
        approved["approval_token"].is_null(),
        "the operator saw the token: {approved}"
    );
    let (_, fetched) = call(
        &base,
        Method::GET,
        &format!("/v1/approvals/{approval}"),
        Some(agent),
        None,
    )
    .await;
    let approval_token = fetched["approval_token"].as_str().unwrap().to_owned();
    let (_, again) = call(
        &base,
        Method::GET,
        &format!("/v1/approvals/{approval}"),
        Some(agent),
        None,
    )
    .await;
    assert!(again["approval_token"].is_null(), "fetched twice: {again}");
    let mut retry = verify.clone();
    retry["approval_token"] = json!(approval_token);
    let (_, allowed) = call(
        &base,
        Method::POST,
        "/verify",
        Some(agent),
        Some(&retry.to_string()),
    )
    .await;
    assert_eq!(allowed["allow"], json!(true), "{allowed}");

    // Modes: the dir 0700, every file 0600.
    assert_eq!(mode(&data), 0o700);
    let key_file = root_key_path(&db);
    for file in [
        db.clone(),
        key_file.clone(),
        data.join("paybond.db-wal"),
        data.join("paybond.db-shm"),
    ] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    // Contents: no root key, no approval token, no capability token.
    let bytes = raw(&db);
    assert!(
        !contains(&bytes, &key_bytes(&db)),
        "the root key is in the database"
    );
    assert!(
        !contains(&bytes, approval_token.as_bytes()),
        "an approval token is in the database"
    );
    for token in [&first_token, &replay_token] {
        assert!(
            !contains(&bytes, token.as_bytes()),
            "a capability token is in the database"
        );
    }
}

#[test]
fn existing_files_are_narrowed_and_a_key_kept_in_the_database_moves_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join(".paybond");
    let db = data.join("paybond.db");
    // A store from before: a 0755 dir, a 0644 database with the key inside.
    let (intent, token, fx_keys) = {
        let fx = Fixture::with_config(EngineConfig::new(Storage::File(db.clone())));
        let (intent, token) = fx.intent(10_000);
        (intent, token, fx.keys)
    };
    let key = key_bytes(&db);
    std::fs::remove_file(root_key_path(&db)).unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('root_key', ?1)",
            [&key],
        )
        .unwrap();
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();

    let engine =
        std::sync::Arc::new(Engine::open(EngineConfig::new(Storage::File(db.clone()))).unwrap());
    assert_eq!((mode(&data), mode(&db)), (0o700, 0o600));
    assert_eq!(key_bytes(&db), key, "the stored key moved to its file");
    assert_eq!(mode(&root_key_path(&db)), 0o600);
    let agent = block_on(engine.authenticate(fx_keys.agent.expose_secret())).unwrap();
    let request = |token: &paybond_middleware_core::CapabilityToken| {
        paybond_middleware_core::wire::VerifyRequest {
            vendor_id: Some("vendor_acme".to_owned()),
            ..common::verify_request(intent, token, 100)
        }
    };
    assert!(engine.verify_now(&agent, &request(&token)).unwrap().allow);
    // The tenant's audit signing key: the database holds it wrapped under the root
    // key, not as a key whose public half is the published one.
    let signing = block_on(engine.signing_keys(&agent)).unwrap().keys[0]
        .public_key_hex
        .clone();
    drop(engine);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let stored: Vec<u8> = conn
        .query_row("SELECT secret_key FROM signing_keys", [], |r| r.get(0))
        .unwrap();
    let as_is = ed25519_dalek::SigningKey::from_bytes(&stored.try_into().unwrap());
    let as_is: String = as_is
        .verifying_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_ne!(as_is, signing, "the signing key is stored in clear");
    let rows: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM meta WHERE key = 'root_key'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0);
    drop(conn);

    // Rotation: the old token is refused, a new one works.
    Engine::rotate_root_key(&Storage::File(db.clone())).unwrap();
    assert_ne!(key_bytes(&db), key);
    assert_eq!(mode(&root_key_path(&db)), 0o600);
    let engine =
        std::sync::Arc::new(Engine::open(EngineConfig::new(Storage::File(db.clone()))).unwrap());
    let agent = block_on(engine.authenticate(fx_keys.agent.expose_secret())).unwrap();
    let refused = engine.verify_now(&agent, &request(&token)).unwrap();
    assert!(!refused.allow);
    assert_eq!(refused.reason_codes, ["capability_invalid"]);
    let fresh = block_on(engine.fund_intent(&agent, intent)).unwrap();
    assert!(
        engine
            .verify_now(&agent, &request(&fresh.capability_token.unwrap()))
            .unwrap()
            .allow
    );
    // The audit signing key survived the rotation: the same key signs a new export.
    assert_eq!(
        block_on(engine.signing_keys(&agent)).unwrap().keys[0].public_key_hex,
        signing
    );
    let operator = block_on(engine.authenticate(fx_keys.operator.expose_secret())).unwrap();
    let job = block_on(engine.create_audit_export(
        &operator,
        &paybond_gateway::CreateAuditExportRequest::default(),
    ))
    .unwrap()
    .job;
    block_on(engine.build_audit_export(&fx_keys.tenant_id, job.id)).unwrap();
    let zip = block_on(engine.audit_export_bundle(
        paybond_gateway::BundleCredential::Principal(&operator),
        job.id,
    ))
    .unwrap();
    let report = paybond_gateway::audit::verify_bundle(&zip, Some(&signing)).unwrap();
    assert!(report.verified, "{report:?}");
}

#[test]
fn a_key_file_that_is_not_a_key_stops_the_gateway_instead_of_replacing_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("paybond.db");
    std::fs::write(root_key_path(&db), "not a key\n").unwrap();
    let err = Engine::open(EngineConfig::new(Storage::File(db.clone()))).unwrap_err();
    assert!(err.message.contains("paybond.key"), "{}", err.message);
    assert_eq!(
        std::fs::read_to_string(root_key_path(&db)).unwrap(),
        "not a key\n"
    );
}
