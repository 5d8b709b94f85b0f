//! Audit export bundles: a ZIP of JSONL artifacts with a signed `manifest.json`,
//! written by the gateway and checked offline by [`verify_bundle`].
//!
//! The manifest's signed *core* is its keys `schema_version, kind, tenant_realm_id,
//! job_id, generated_at_rfc3339, gateway_build_version, score_model_version,
//! disclosure_tier, redaction_profile, checkpoint_last_ledger_seq, export_filter,
//! artifacts` (in that order, those present; `checkpoint_last_ledger_seq` left out
//! when null or 0) serialized as compact JSON. `signed_payload_sha256_hex` is the
//! SHA-256 of those bytes and `ed25519_signature_hex` an Ed25519 signature over the
//! 32-byte digest, by the key `signing_public_key_ed25519_hex`. Every artifact is
//! listed with its SHA-256, and `proof/ledger_verifier_pack.json` names the first
//! and last hashes of the ledger segment in `ledger/events.jsonl`, so the chain's
//! continuity is checked without the database.

use std::io::{Cursor, Read as _, Write as _};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::engine::ledger::{LedgerEvent, verify_segment};
use crate::error::ApiError;
use crate::tokens::{hex, unhex};

/// `kind` of an audit export manifest.
pub const MANIFEST_KIND: &str = "paybond.audit_export_manifest_v1";

/// `kind` of the ledger verifier pack.
pub const VERIFIER_PACK_KIND: &str = "paybond.ledger_verifier_pack_v1";

/// The manifest keys the signature covers, in the order they are signed.
pub const MANIFEST_CORE_FIELDS: [&str; 12] = [
    "schema_version",
    "kind",
    "tenant_realm_id",
    "job_id",
    "generated_at_rfc3339",
    "gateway_build_version",
    "score_model_version",
    "disclosure_tier",
    "redaction_profile",
    "checkpoint_last_ledger_seq",
    "export_filter",
    "artifacts",
];

/// Path of the manifest in a bundle.
pub const MANIFEST_PATH: &str = "manifest.json";
/// Path of the ledger segment in a bundle.
pub const LEDGER_PATH: &str = "ledger/events.jsonl";
/// Path of the ledger verifier pack in a bundle.
pub const VERIFIER_PACK_PATH: &str = "proof/ledger_verifier_pack.json";

/// A bundle entry larger than this is refused by [`verify_bundle`] (a ZIP bomb
/// guard; exports are far smaller).
const MAX_ENTRY_BYTES: u64 = 1 << 30;
/// Entries a bundle may hold.
const MAX_ENTRIES: usize = 1024;

/// One file of a bundle as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ArtifactEntry {
    /// Path inside the ZIP.
    pub path: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Its size.
    pub size_bytes: u64,
}

/// `proof/ledger_verifier_pack.json`: what a reviewer needs to check the exported
/// ledger segment without the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LedgerVerifierPack {
    /// [`VERIFIER_PACK_KIND`].
    pub kind: String,
    /// The tenant whose chain this is (it is part of every entry's hash).
    pub tenant_realm_id: String,
    /// How an entry's hash is computed.
    pub hash_algorithm: String,
    /// `prev_hash` of a chain's first entry.
    pub genesis_hash: String,
    /// Entries in the segment.
    pub event_count: u64,
    /// First entry's `seq` (0 when the segment is empty).
    pub first_seq: u64,
    /// Last entry's `seq` (0 when the segment is empty).
    pub last_seq: u64,
    /// `prev_hash` of the first entry: the hash of the entry before the segment
    /// (the genesis hash when the segment starts the chain).
    pub first_prev_hash: String,
    /// Hash of the first entry.
    pub first_hash: String,
    /// Hash of the last entry: where the chain stood at the end of the window.
    pub last_hash: String,
    /// The chain's tip when the bundle was written.
    pub tip_seq: u64,
    /// Hash of that tip.
    pub tip_hash: String,
}

impl LedgerVerifierPack {
    /// The pack describing `events` (a contiguous segment of `tenant`'s chain).
    pub(crate) fn describe(
        tenant: &str,
        events: &[LedgerEvent],
        tip_seq: u64,
        tip_hash: &str,
    ) -> Self {
        let first = events.first();
        let last = events.last();
        Self {
            kind: VERIFIER_PACK_KIND.to_owned(),
            tenant_realm_id: tenant.to_owned(),
            hash_algorithm: "sha256 of the canonical JSON (sorted keys, no whitespace) of \
                             {tenant_id, seq, event, payload, at_ms, prev_hash}"
                .to_owned(),
            genesis_hash: crate::GENESIS.to_owned(),
            event_count: events.len() as u64,
            first_seq: first.map_or(0, |e| e.seq),
            last_seq: last.map_or(0, |e| e.seq),
            first_prev_hash: first.map_or_else(String::new, |e| e.prev_hash.clone()),
            first_hash: first.map_or_else(String::new, |e| e.hash.clone()),
            last_hash: last.map_or_else(String::new, |e| e.hash.clone()),
            tip_seq,
            tip_hash: tip_hash.to_owned(),
        }
    }
}

/// SHA-256 of `bytes`, hex: what the manifest and the job list for each file.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::tokens::sha256_hex(bytes)
}

/// A tenant's audit signing key.
pub(crate) struct AuditSigner(SigningKey);

impl AuditSigner {
    /// A new key from the operating system's random source.
    pub(crate) fn generate() -> Self {
        Self(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// The key from its stored 32-byte secret.
    pub(crate) fn from_secret(bytes: &[u8]) -> Result<Self, ApiError> {
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ApiError::internal("storage: an audit signing key is not 32 bytes"))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// The 32-byte secret, to store.
    pub(crate) fn secret(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The raw public key, hex.
    pub(crate) fn public_hex(&self) -> String {
        hex(self.0.verifying_key().as_bytes())
    }
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditSigner({})", self.public_hex())
    }
}

/// The signed core of a manifest: its core keys, in order, serialized compactly.
pub fn manifest_core_bytes(manifest: &Map<String, Value>) -> Vec<u8> {
    let mut core = Map::new();
    for key in MANIFEST_CORE_FIELDS {
        let Some(value) = manifest.get(key) else {
            continue;
        };
        if key == "checkpoint_last_ledger_seq" && (value.is_null() || value.as_u64() == Some(0)) {
            continue;
        }
        core.insert(key.to_owned(), value.clone());
    }
    // A map of JSON values always serializes.
    serde_json::to_vec(&Value::Object(core)).unwrap_or_default()
}

/// What the gateway puts in a manifest besides the artifacts.
pub(crate) struct ManifestHead {
    pub tenant: String,
    pub job_id: String,
    pub generated_at: String,
    pub disclosure_tier: String,
    pub redaction_profile: String,
    pub checkpoint_last_ledger_seq: u64,
    pub export_filter: Value,
}

/// A written bundle.
pub(crate) struct Bundle {
    pub bytes: Vec<u8>,
    pub manifest_sha256: String,
    pub bundle_sha256: String,
}

/// Writes the ZIP: every artifact (deflated), then `manifest.json` listing them
/// with their digests and signed by `signer`.
pub(crate) fn write_bundle(
    head: ManifestHead,
    artifacts: &[(String, Vec<u8>)],
    signer: &AuditSigner,
    generated: jiff::Timestamp,
) -> Result<Bundle, ApiError> {
    let entries: Vec<ArtifactEntry> = artifacts
        .iter()
        .map(|(path, bytes)| ArtifactEntry {
            path: path.clone(),
            sha256: sha256_hex(bytes),
            size_bytes: bytes.len() as u64,
        })
        .collect();
    let mut manifest = Map::new();
    manifest.insert("schema_version".into(), Value::from(1));
    manifest.insert("kind".into(), Value::from(MANIFEST_KIND));
    manifest.insert("tenant_realm_id".into(), Value::from(head.tenant));
    manifest.insert("job_id".into(), Value::from(head.job_id));
    manifest.insert(
        "generated_at_rfc3339".into(),
        Value::from(head.generated_at),
    );
    manifest.insert(
        "gateway_build_version".into(),
        Value::from(concat!("paybond-gateway ", env!("CARGO_PKG_VERSION"))),
    );
    manifest.insert("disclosure_tier".into(), Value::from(head.disclosure_tier));
    manifest.insert(
        "redaction_profile".into(),
        Value::from(head.redaction_profile),
    );
    if head.checkpoint_last_ledger_seq > 0 {
        manifest.insert(
            "checkpoint_last_ledger_seq".into(),
            Value::from(head.checkpoint_last_ledger_seq),
        );
    }
    manifest.insert("export_filter".into(), head.export_filter);
    manifest.insert("artifacts".into(), serde_json::to_value(&entries)?);
    let digest = sha2_digest(&manifest_core_bytes(&manifest));
    let signature = signer.0.sign(&digest);
    manifest.insert(
        "signed_payload_sha256_hex".into(),
        Value::from(hex(&digest)),
    );
    manifest.insert(
        "ed25519_signature_hex".into(),
        Value::from(hex(&signature.to_bytes())),
    );
    manifest.insert(
        "signing_public_key_ed25519_hex".into(),
        Value::from(signer.public_hex()),
    );
    let mut manifest_bytes = serde_json::to_vec_pretty(&Value::Object(manifest))?;
    manifest_bytes.push(b'\n');

    let zip_error = |e: zip::result::ZipError| ApiError::internal(format_args!("audit ZIP: {e}"));
    let io_error = |e: std::io::Error| ApiError::internal(format_args!("audit ZIP: {e}"));
    let civil = generated.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let modified = u8::try_from(civil.month())
        .ok()
        .zip(u8::try_from(civil.day()).ok())
        .zip(u8::try_from(civil.hour()).ok())
        .zip(u8::try_from(civil.minute()).ok())
        .zip(u8::try_from(civil.second()).ok())
        .and_then(|((((month, day), hour), minute), second)| {
            let year = u16::try_from(civil.year()).ok()?;
            zip::DateTime::from_date_and_time(year, month, day, hour, minute, second).ok()
        })
        .unwrap_or_default();
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(modified)
        .unix_permissions(0o600);
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    zip.start_file(MANIFEST_PATH, options).map_err(zip_error)?;
    zip.write_all(&manifest_bytes).map_err(io_error)?;
    for (path, bytes) in artifacts {
        zip.start_file(path.as_str(), options).map_err(zip_error)?;
        zip.write_all(bytes).map_err(io_error)?;
    }
    let bytes = zip.finish().map_err(zip_error)?.into_inner();
    Ok(Bundle {
        manifest_sha256: sha256_hex(&manifest_bytes),
        bundle_sha256: sha256_hex(&bytes),
        bytes,
    })
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// One artifact as [`verify_bundle`] found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactCheck {
    /// Path inside the ZIP.
    pub path: String,
    /// Whether the file is there and its SHA-256 is the manifest's.
    pub ok: bool,
    /// What is wrong, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The ledger segment as [`verify_bundle`] found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSegmentCheck {
    /// Whether every entry links to the one before and hashes right, and the
    /// segment's ends are the pack's.
    pub valid: bool,
    /// Entries checked.
    pub events: u64,
    /// First entry's seq.
    pub first_seq: u64,
    /// Last entry's seq.
    pub last_seq: u64,
    /// What is wrong, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// What [`verify_bundle`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleReport {
    /// The bundle is authentic: it is [`Self::intact`] and its signer was checked
    /// against a trusted key ([`Self::signer_checked`]). Without a trusted key a
    /// bundle is never verified: anyone can re-sign an altered bundle with a key
    /// of their own.
    pub verified: bool,
    /// Everything the bundle can show by itself checks: the signature with the
    /// key the manifest names, every artifact, the ledger segment (and the signer,
    /// when trusted keys were given).
    pub intact: bool,
    /// The signing key was checked against trusted keys (and is one of them
    /// when the bundle is [`Self::verified`]).
    pub signer_checked: bool,
    /// The manifest's `kind`.
    pub manifest_kind: String,
    /// The tenant the bundle is of.
    pub tenant_realm_id: String,
    /// The export job.
    pub job_id: String,
    /// Whether `signed_payload_sha256_hex` is the digest of the core and the
    /// signature over it verifies with the manifest's public key.
    pub signature_valid: bool,
    /// The manifest's signing key, hex.
    pub signing_public_key_ed25519_hex: String,
    /// Each artifact the manifest lists.
    pub artifacts: Vec<ArtifactCheck>,
    /// The ledger segment against its verifier pack.
    pub ledger: Option<LedgerSegmentCheck>,
    /// Every problem found, in the order found.
    pub problems: Vec<String>,
}

/// Checks a bundle offline: the manifest's kind, digest and Ed25519 signature
/// (and, when `expected_key` is given, that it is the key that signed: without
/// it the bundle is not [`BundleReport::verified`]), every
/// artifact's SHA-256, that the ZIP holds nothing the manifest does not list, and
/// the ledger segment against the verifier pack. `Err` only when the bytes are not
/// a ZIP with a JSON `manifest.json`.
pub fn verify_bundle(bytes: &[u8], expected_key: Option<&str>) -> Result<BundleReport, String> {
    verify_bundle_trusting(bytes, expected_key.as_slice())
}

/// [`verify_bundle`] with the signer checked against `trusted` keys (hex), any of
/// which may have signed: a tenant's published signing keys. With none, the
/// signer is not checked and the bundle is at most [`BundleReport::intact`].
pub fn verify_bundle_trusting<K: AsRef<str>>(
    bytes: &[u8],
    trusted: &[K],
) -> Result<BundleReport, String> {
    let mut zip =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a ZIP: {e}"))?;
    if zip.len() > MAX_ENTRIES {
        return Err(format!(
            "the ZIP holds {} entries (at most {MAX_ENTRIES})",
            zip.len()
        ));
    }
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..zip.len() {
        let file = zip.by_index(i).map_err(|e| format!("ZIP entry {i}: {e}"))?;
        let name = file
            .name()
            .map_err(|e| format!("ZIP entry {i}: {e}"))?
            .into_owned();
        if file.size() > MAX_ENTRY_BYTES {
            return Err(format!("{name}: over {MAX_ENTRY_BYTES} bytes"));
        }
        let mut data = Vec::new();
        file.take(MAX_ENTRY_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(|e| format!("{name}: {e}"))?;
        // The declared size may lie: what actually inflates is what counts.
        if data.len() as u64 > MAX_ENTRY_BYTES {
            return Err(format!("{name}: over {MAX_ENTRY_BYTES} bytes"));
        }
        files.push((name, data));
    }
    let file = |path: &str| files.iter().find(|(n, _)| n == path).map(|(_, d)| d);
    let manifest_bytes = file(MANIFEST_PATH).ok_or("the ZIP has no manifest.json")?;
    let manifest: Map<String, Value> = serde_json::from_slice(manifest_bytes)
        .map_err(|e| format!("manifest.json is not a JSON object: {e}"))?;
    let text = |key: &str| {
        manifest
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut problems = Vec::new();
    let kind = text("kind");
    if kind != MANIFEST_KIND {
        problems.push(format!("manifest kind is `{kind}`, not {MANIFEST_KIND}"));
    }

    // The signature.
    let digest = sha2_digest(&manifest_core_bytes(&manifest));
    let public_hex = text("signing_public_key_ed25519_hex");
    let mut signature_valid = true;
    if text("signed_payload_sha256_hex").to_ascii_lowercase() != hex(&digest) {
        signature_valid = false;
        problems
            .push("signed_payload_sha256_hex is not the SHA-256 of the manifest's core".to_owned());
    }
    let key = unhex(&public_hex)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok());
    let signature = unhex(&text("ed25519_signature_hex"))
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b));
    match (key, signature) {
        (Some(key), Some(signature)) => {
            if key.verify(&digest, &signature).is_err() {
                signature_valid = false;
                problems.push("the Ed25519 signature does not verify".to_owned());
            }
        }
        (None, _) => {
            signature_valid = false;
            problems.push("signing_public_key_ed25519_hex is not an Ed25519 key".to_owned());
        }
        (_, None) => {
            signature_valid = false;
            problems.push("ed25519_signature_hex is not an Ed25519 signature".to_owned());
        }
    }
    let signer_checked = !trusted.is_empty();
    if signer_checked
        && !trusted
            .iter()
            .any(|k| k.as_ref().trim().eq_ignore_ascii_case(&public_hex))
    {
        let expected: Vec<&str> = trusted.iter().map(|k| k.as_ref().trim()).collect();
        problems.push(format!(
            "signed by {public_hex}, not by {} {}",
            if expected.len() == 1 {
                "the expected key"
            } else {
                "any of the expected keys"
            },
            expected.join(", ")
        ));
    }

    // The artifacts.
    let listed: Vec<ArtifactEntry> = manifest
        .get("artifacts")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("manifest artifacts: {e}"))?
        .unwrap_or_default();
    let mut artifacts = Vec::new();
    for entry in &listed {
        let problem = match file(&entry.path) {
            None => Some("missing from the ZIP".to_owned()),
            Some(data) if sha256_hex(data) != entry.sha256.to_ascii_lowercase() => Some(format!(
                "SHA-256 {} is not the manifest's {}",
                sha256_hex(data),
                entry.sha256
            )),
            Some(_) => None,
        };
        if let Some(p) = &problem {
            problems.push(format!("{}: {p}", entry.path));
        }
        artifacts.push(ArtifactCheck {
            path: entry.path.clone(),
            ok: problem.is_none(),
            problem,
        });
    }
    for (name, _) in &files {
        if name != MANIFEST_PATH && !listed.iter().any(|a| a.path == *name) {
            problems.push(format!("{name}: in the ZIP but not in the manifest"));
        }
    }

    // The ledger segment.
    let tenant = text("tenant_realm_id");
    let checkpoint = manifest
        .get("checkpoint_last_ledger_seq")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let ledger = match (file(LEDGER_PATH), file(VERIFIER_PACK_PATH)) {
        (Some(events), Some(pack)) => {
            let check = check_segment(&tenant, events, pack, checkpoint);
            if let Some(p) = &check.problem {
                problems.push(format!("ledger: {p}"));
            }
            Some(check)
        }
        (None, None) => None,
        (None, Some(_)) => {
            problems.push(format!("{VERIFIER_PACK_PATH} without {LEDGER_PATH}"));
            None
        }
        (Some(_), None) => {
            problems.push(format!("{LEDGER_PATH} without {VERIFIER_PACK_PATH}"));
            None
        }
    };
    Ok(BundleReport {
        verified: problems.is_empty() && signer_checked,
        intact: problems.is_empty(),
        signer_checked,
        manifest_kind: kind,
        tenant_realm_id: tenant,
        job_id: text("job_id"),
        signature_valid,
        signing_public_key_ed25519_hex: public_hex,
        artifacts,
        ledger,
        problems,
    })
}

fn check_segment(tenant: &str, events: &[u8], pack: &[u8], checkpoint: u64) -> LedgerSegmentCheck {
    let mut check = LedgerSegmentCheck {
        valid: false,
        events: 0,
        first_seq: 0,
        last_seq: 0,
        problem: None,
    };
    let pack: LedgerVerifierPack = match serde_json::from_slice(pack) {
        Ok(p) => p,
        Err(e) => {
            check.problem = Some(format!("{VERIFIER_PACK_PATH}: {e}"));
            return check;
        }
    };
    let mut parsed = Vec::new();
    for (i, line) in events.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<LedgerEvent>(line) {
            Ok(e) => parsed.push(e),
            Err(e) => {
                check.problem = Some(format!("{LEDGER_PATH} line {}: {e}", i + 1));
                return check;
            }
        }
    }
    check.events = parsed.len() as u64;
    check.first_seq = parsed.first().map_or(0, |e| e.seq);
    check.last_seq = parsed.last().map_or(0, |e| e.seq);
    let problem = if pack.tenant_realm_id != tenant {
        Some(format!(
            "the verifier pack is of tenant {}, the manifest of {tenant}",
            pack.tenant_realm_id
        ))
    } else if let Err(e) = parsed.first().map_or(Ok(()), |first| {
        verify_segment(tenant, &parsed, first.seq, &pack.first_prev_hash)
    }) {
        Some(e)
    } else if check.events != pack.event_count {
        Some(format!(
            "{} entries, the pack says {}",
            check.events, pack.event_count
        ))
    } else if check.first_seq != pack.first_seq || check.last_seq != pack.last_seq {
        Some(format!(
            "entries {}..={}, the pack says {}..={}",
            check.first_seq, check.last_seq, pack.first_seq, pack.last_seq
        ))
    } else if parsed.first().is_some_and(|e| e.hash != pack.first_hash)
        || parsed.last().is_some_and(|e| e.hash != pack.last_hash)
    {
        Some("the segment's first or last hash is not the pack's".to_owned())
    } else if check.first_seq == 1 && pack.first_prev_hash != pack.genesis_hash {
        Some("the chain's first entry does not start from the genesis hash".to_owned())
    } else if checkpoint != check.last_seq {
        Some(format!(
            "the manifest's checkpoint_last_ledger_seq is {checkpoint}, the segment ends at {}",
            check.last_seq
        ))
    } else {
        None
    };
    check.valid = problem.is_none();
    check.problem = problem;
    check
}
