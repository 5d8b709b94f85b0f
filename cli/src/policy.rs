//! `paybond policy init-org | extend | validate-tools | schema`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use paybond_policies::{
    Diagnostic, PolicyDocument, Resolution, SCHEMA_ID, Source, check_policy, is_valid_tool_name,
    read_policy, resolve_policy,
};

use crate::output::{self, Category, Failure, Global};
use crate::{Outcome, usage_error};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Scaffold an org base policy (version 2) with one side-effecting tool.
    InitOrg(InitOrg),
    /// Scaffold a tenant overlay that extends an org base.
    Extend(Extend),
    /// Check a policy file (and, with --resolve-inheritance, its org base and the merge).
    ValidateTools(ValidateTools),
    /// Print the JSON Schema of the policy file format.
    Schema(Schema),
    /// Publish a policy to a gateway (tenant admin key): an overlay's org base
    /// first (from `extends.base_policy` or --base), then the tenant policy. The
    /// gateway refuses a file with any problem, or a widening overlay, whole.
    Publish(Publish),
    /// What-if: decide every recorded verify of a gateway's store again under
    /// another policy, in order, and report each decision that would change.
    /// Read-only on the store.
    Replay(crate::replay::Replay),
}

#[derive(Debug, Args)]
pub(crate) struct Publish {
    /// The tenant policy (version 1, or a version 2 overlay).
    #[arg(long)]
    file: PathBuf,
    /// The org base of an overlay [default: its `extends.base_policy`].
    #[arg(long)]
    base: Option<PathBuf>,
    /// Publish the tenant policy only (the org base is already on the gateway).
    #[arg(long, conflicts_with = "base")]
    skip_base: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InitOrg {
    /// The org policy id (the base's `name`), e.g. acme-agent-spend-v1.
    #[arg(long)]
    policy_id: String,
    /// Where to write the policy.
    #[arg(long)]
    out: PathBuf,
    /// The side-effecting tool (its operation name), e.g. travel.book_hotel.
    #[arg(long)]
    operation: String,
    /// The tool's evidence preset (the one this gateway evaluates).
    #[arg(long, default_value = "cost_and_completion", value_parser = ["cost_and_completion"])]
    evidence_preset: String,
    /// The fixed amount reserved per call, in cents (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_spend_cents: u64,
    /// Overwrite --out if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct Extend {
    /// The org base to extend.
    #[arg(long)]
    base: PathBuf,
    /// Where to write the overlay.
    #[arg(long)]
    out: PathBuf,
    /// The overlay's name [default: from the --out file name].
    #[arg(long)]
    name: Option<String>,
    /// The org id, e.g. org_acme_corp [default: from the base's name].
    #[arg(long)]
    org_id: Option<String>,
    /// Overwrite --out if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ValidateTools {
    /// The policy file to check.
    #[arg(long)]
    file: PathBuf,
    /// The org base the file extends [default: its extends.base_policy, relative to the file].
    #[arg(long)]
    base: Option<PathBuf>,
    /// Merge the file onto its org base and check the result (refused widenings are errors).
    #[arg(long)]
    resolve_inheritance: bool,
    /// Check on this machine only, without a gateway (the default).
    #[arg(long, conflicts_with = "remote")]
    local_only: bool,
    /// Also compare with the policy the gateway enforces (needs the gateway URL and an
    /// API key, from --gateway, the environment or the env file); a difference is a warning.
    #[arg(long)]
    remote: bool,
}

#[derive(Debug, Args)]
pub(crate) struct Schema {
    /// Write the schema to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(crate) fn run(cmd: PolicyCommand, global: &Global) -> Outcome {
    match cmd {
        PolicyCommand::InitOrg(args) => init_org(&args),
        PolicyCommand::Extend(args) => extend(&args),
        PolicyCommand::ValidateTools(args) => validate_tools(&args, global),
        PolicyCommand::Schema(args) => schema(&args),
        PolicyCommand::Publish(args) => publish(&args, global),
        PolicyCommand::Replay(args) => crate::replay::replay(&args),
    }
}

fn write_new(path: &Path, text: &str, force: bool) -> Result<(), String> {
    if path.exists() && !force {
        return Err(format!(
            "{} exists; pass --force to overwrite it",
            path.display()
        ));
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Checks text this command generated, so a bad flag value is caught before writing.
fn check_generated(text: &str, what: &Path) -> Result<(), String> {
    let checked = check_policy(text, &what.display().to_string());
    if checked.is_valid() {
        return Ok(());
    }
    let mut msg = String::from("the options give an invalid policy:");
    for d in &checked.errors {
        let _ = write!(msg, "\n  {}: {} [{}]", d.path, d.message, d.code);
    }
    Err(msg)
}

fn init_org(a: &InitOrg) -> Outcome {
    if !is_valid_tool_name(&a.operation) {
        return usage_error(format!(
            "--operation `{}` is not a tool name (^[a-z][a-z0-9_.-]{{0,127}}$)",
            a.operation
        ));
    }
    let text = format!(
        "# Org base policy (platform operator). Tenants extend it with\n\
         # `paybond policy extend --base {out}` and may only narrow it.\n\
         $schema: {SCHEMA_ID}\n\
         version: 2\n\
         name: {id}\n\
         default_deny: true\n\
         \n\
         tools:\n\
         \x20 {op}:\n\
         \x20   side_effecting: true\n\
         \x20   max_spend_cents: {cents}\n\
         \x20   evidence_preset: {preset}\n\
         \n\
         intent:\n\
         \x20 allowed_tools:\n\
         \x20   - {op}\n",
        out = a.out.display(),
        id = a.policy_id,
        op = a.operation,
        cents = a.max_spend_cents,
        preset = yaml_string(&a.evidence_preset),
    );
    match check_generated(&text, &a.out).and_then(|()| write_new(&a.out, &text, a.force)) {
        Ok(()) => {
            println!("wrote {}", a.out.display());
            Outcome::Success
        }
        Err(e) => usage_error(e),
    }
}

/// `s` as a YAML scalar: plain when that reads back as the same string, else quoted.
fn yaml_string(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
        && !matches!(
            s,
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
        )
        && s.parse::<f64>().is_err();
    if plain {
        s.to_owned()
    } else {
        serde_json::Value::String(s.to_owned()).to_string()
    }
}

/// Lowercase letters, digits and `_` from `s` (other characters become `_`).
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_matches('_')
        .to_owned()
}

fn extend(a: &Extend) -> Outcome {
    let base = match read_policy(&a.base) {
        Ok(doc) => doc,
        Err(e) => {
            eprintln!("{e}");
            return usage_error(format!(
                "--base {} is not a valid policy; fix it first",
                a.base.display()
            ));
        }
    };
    let name = a.name.clone().unwrap_or_else(|| {
        let stem = a
            .out
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.split('.').next())
            .map(|s| slug(s).replace('_', "-"))
            .unwrap_or_default();
        if stem.is_empty() || !stem.starts_with(|c: char| c.is_ascii_lowercase()) {
            "tenant-policy".to_owned()
        } else {
            stem
        }
    });
    let org_id = a.org_id.clone().unwrap_or_else(|| {
        let s = slug(&base.name);
        if s.starts_with(|c: char| c.is_ascii_lowercase()) {
            format!("org_{s}")
        } else {
            "org_default".to_owned()
        }
    });
    let base_policy = relative_to(&a.base, a.out.parent().unwrap_or(Path::new("")));
    let mut text = format!(
        "# Tenant overlay of `{base_name}`: it may narrow the org base, never widen it.\n\
         # Check it with `paybond policy validate-tools --file {out} --resolve-inheritance`.\n\
         $schema: {SCHEMA_ID}\n\
         version: 2\n\
         name: {name}\n\
         extends:\n\
         \x20 org_policy_id: {base_name}\n\
         \x20 org_id: {org_id}\n\
         \x20 base_digest: \"{digest}\"\n\
         \x20 base_policy: {base_policy}\n",
        base_name = base.name,
        out = a.out.display(),
        digest = base.digest(),
        base_policy = yaml_string(&base_policy),
    );
    if base.default_deny == Some(true) {
        text.push_str("default_deny: true\n");
    }
    text.push_str(
        "\n# Narrow org tools here, e.g.:\n\
         # overrides:\n\
         #   tools:\n",
    );
    for (tool, entry) in &base.tools {
        if let Some(cents) = entry.max_spend_cents {
            let _ = writeln!(text, "#     {tool}:\n#       max_spend_cents: {cents}");
        }
    }
    text.push_str("\n# Tools of this tenant only:\n# tools:\n#   acme.internal.approve_po:\n#     side_effecting: true\n#     evidence_preset: cost_and_completion\n");
    match check_generated(&text, &a.out).and_then(|()| write_new(&a.out, &text, a.force)) {
        Ok(()) => {
            println!("wrote {}", a.out.display());
            Outcome::Success
        }
        Err(e) => usage_error(e),
    }
}

/// `target` as seen from directory `from` when both are relative, else as given.
fn relative_to(target: &Path, from: &Path) -> String {
    let (Ok(t), Ok(f)) = (
        std::path::absolute(target),
        std::path::absolute(if from.as_os_str().is_empty() {
            Path::new(".")
        } else {
            from
        }),
    ) else {
        return target.display().to_string();
    };
    let t: Vec<_> = t.components().collect();
    let f: Vec<_> = f.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return target.display().to_string();
    }
    let mut rel = PathBuf::new();
    for _ in common..f.len() {
        rel.push("..");
    }
    for c in &t[common..] {
        rel.push(c);
    }
    rel.display().to_string()
}

fn validate_tools(a: &ValidateTools, global: &Global) -> Outcome {
    let remote = if a.remote {
        match remote_target(global) {
            Ok(target) => Some(target),
            Err(outcome) => return outcome,
        }
    } else {
        None
    };
    let file = a.file.display().to_string();
    let text = match std::fs::read_to_string(&a.file) {
        Ok(t) => t,
        Err(e) => return crate::unreadable(format!("cannot read --file {file}: {e}")),
    };
    let checked = check_policy(&text, &file);
    let mut resolution = if a.resolve_inheritance || remote.is_some() {
        let base_path = a.base.clone().or_else(|| {
            checked
                .document
                .as_ref()
                .and_then(|d| d.extends.as_ref())
                .and_then(|e| e.base_policy.as_ref())
                .map(|p| a.file.parent().unwrap_or(Path::new("")).join(p))
        });
        let base_text = match &base_path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => Some((t, p.display().to_string())),
                Err(e) => {
                    return crate::unreadable(format!(
                        "cannot read the org base {}: {e}",
                        p.display()
                    ));
                }
            },
            None => None,
        };
        resolve_policy(
            Source {
                text: &text,
                file: &file,
            },
            base_text.as_ref().map(|(t, f)| Source { text: t, file: f }),
        )
    } else {
        Resolution {
            valid: checked.is_valid(),
            errors: checked.errors,
            warnings: checked.warnings,
            effective: None,
            report: None,
        }
    };
    // With --remote: is the policy the gateway enforces the one this file resolves to?
    let mut remote_report = None;
    if let Some((url, key)) = &remote {
        let (version, digest) = match remote_effective(url, key) {
            Ok(r) => r,
            Err(e) => {
                return output::fail(Failure::new(Category::Environment, "remote_unavailable", e));
            }
        };
        let local = resolution.effective.as_ref().map(PolicyDocument::digest);
        let matches = local.as_deref() == Some(digest.as_str());
        if !matches && let Some(local) = &local {
            resolution.warnings.push(Diagnostic {
                file: file.clone(),
                line: 0,
                column: 0,
                path: String::new(),
                code: "policy.remote_drift".to_owned(),
                message: format!(
                    "the gateway enforces version {version} ({digest}), not this file's effective \
                     policy ({local}); publish it with PUT /v1/tenant/policy"
                ),
            });
        }
        remote_report = Some(serde_json::json!({
            "gateway": url, "version": version, "digest": digest, "matches": matches
        }));
    }
    if output::json() {
        let mut data = match serde_json::to_value(&resolution) {
            Ok(v) => v,
            Err(e) => return usage_error(format!("cannot print the result: {e}")),
        };
        if let (Some(r), serde_json::Value::Object(map)) = (&remote_report, &mut data) {
            map.insert("remote".to_owned(), r.clone());
        }
        if !resolution.valid {
            return refuse(&file, &resolution, data);
        }
        let warnings: Vec<String> = resolution
            .warnings
            .iter()
            .map(|d| format!("{}: {} [{}]", d.path, d.message, d.code))
            .collect();
        output::success_json(data, &warnings);
        return Outcome::Success;
    }
    print_text(&file, &resolution);
    if let Some(r) = &remote_report
        && r["matches"] == true
    {
        println!(
            "the gateway enforces this policy (version {})",
            r["version"]
        );
    }
    if resolution.valid {
        Outcome::Success
    } else {
        Outcome::Failed
    }
}

/// Reports an invalid policy: every problem at its line (text), or the
/// `policy_invalid` envelope with `data` (the whole report) (JSON). Exit 1.
pub(crate) fn refuse(file: &str, resolution: &Resolution, data: serde_json::Value) -> Outcome {
    if !output::json() {
        print_text(file, resolution);
        return Outcome::Failed;
    }
    output::fail(
        Failure::new(
            Category::Invalid,
            "policy_invalid",
            format!(
                "{file}: invalid ({}): every problem is in data.errors",
                output::counted(resolution.errors.len() as u64, "error", "errors")
            ),
        )
        .data(data),
    )
}

/// Where `--remote` looks: the gateway URL and a key, from flags, the environment or the env file.
fn remote_target(g: &Global) -> Result<(String, String), Outcome> {
    let env_file = g.env_file.as_path();
    let url = g
        .gateway
        .clone()
        .or_else(|| crate::envfile::lookup("PAYBOND_GATEWAY_URL", env_file));
    let key = crate::envfile::lookup("PAYBOND_ADMIN_API_KEY", env_file)
        .or_else(|| crate::envfile::lookup("PAYBOND_API_KEY", env_file));
    let mut missing = Vec::new();
    if url.is_none() {
        missing.push("a gateway URL (--gateway or PAYBOND_GATEWAY_URL)");
    }
    if key.is_none() {
        missing.push("an API key (PAYBOND_ADMIN_API_KEY or PAYBOND_API_KEY)");
    }
    match (url, key) {
        (Some(url), Some(key)) => Ok((url.trim_end_matches('/').to_owned(), key)),
        _ => Err(output::fail(Failure::new(
            Category::Environment,
            "missing_credentials",
            format!(
                "--remote needs {}; `paybond dev loop --offline` writes both to {}. \
                 Use --local-only to check without a gateway.",
                missing.join(" and "),
                env_file.display()
            ),
        ))),
    }
}

/// The version and digest of the policy the gateway enforces for the key's tenant.
fn remote_effective(url: &str, key: &str) -> Result<(u64, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(format!("{url}/v1/policy/effective"))
            .bearer_auth(key)
            .send()
            .await
            .map_err(|e| format!("cannot reach the gateway at {url}: {e}"))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| format!("the gateway's answer is not JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "the gateway answered HTTP {status}: {}",
                body["message"].as_str().unwrap_or("no message")
            ));
        }
        match (body["version"].as_u64(), body["digest"].as_str()) {
            (Some(v), Some(d)) => Ok((v, d.to_owned())),
            _ => Err("the gateway's effective policy has no version or digest".to_owned()),
        }
    })
}

fn print_text(file: &str, r: &Resolution) {
    let line = |d: &Diagnostic, level: &str| {
        let path = if d.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", d.path)
        };
        format!(
            "{}:{}:{}: {level}: {path}{} [{}]",
            d.file, d.line, d.column, d.message, d.code
        )
    };
    for d in &r.errors {
        println!("{}", line(d, "error"));
    }
    for d in &r.warnings {
        println!("{}", line(d, "warning"));
    }
    if let Some(report) = &r.report
        && !report.overrides_applied.is_empty()
    {
        println!("overrides applied: {}", report.overrides_applied.join(", "));
    }
    if let Some(eff) = &r.effective {
        println!("effective policy: {} ({})", eff.name, eff.digest());
    }
    println!(
        "{file}: {} ({}, {})",
        if r.valid { "valid" } else { "invalid" },
        output::counted(r.errors.len() as u64, "error", "errors"),
        output::counted(r.warnings.len() as u64, "warning", "warnings")
    );
}

fn schema(a: &Schema) -> Outcome {
    let text = match serde_json::to_string_pretty(&PolicyDocument::json_schema()) {
        Ok(t) => t + "\n",
        Err(e) => return usage_error(format!("cannot print the schema: {e}")),
    };
    match &a.out {
        None => {
            print!("{text}");
            Outcome::Success
        }
        Some(path) => match std::fs::write(path, text) {
            Ok(()) => Outcome::Success,
            Err(e) => usage_error(format!("cannot write {}: {e}", path.display())),
        },
    }
}

/// `paybond policy publish`.
fn publish(a: &Publish, g: &Global) -> Outcome {
    let env_file = g.env_file.as_path();
    let Some(url) = g
        .gateway
        .clone()
        .or_else(|| crate::envfile::lookup("PAYBOND_GATEWAY_URL", env_file))
    else {
        return output::fail(Failure::new(
            Category::Environment,
            "missing_credentials",
            format!(
                "publish needs a gateway URL (--gateway or PAYBOND_GATEWAY_URL); \
                 `paybond dev loop --offline` writes it to {}",
                env_file.display()
            ),
        ));
    };
    let Some(key) = crate::envfile::lookup("PAYBOND_ADMIN_API_KEY", env_file) else {
        return output::fail(Failure::new(
            Category::Environment,
            "missing_credentials",
            format!(
                "publish needs a tenant admin key (PAYBOND_ADMIN_API_KEY, from the environment \
                 or {})",
                env_file.display()
            ),
        ));
    };
    let url = url.trim_end_matches('/').to_owned();
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map_err(|e| crate::unreadable(format!("cannot read {}: {e}", path.display())))
    };
    let text = match read(&a.file) {
        Ok(t) => t,
        Err(o) => return o,
    };
    // Checked here first: a file with problems is not sent (the gateway would
    // refuse it whole too), and an overlay names its org base.
    let checked = paybond_policies::check_policy(&text, &a.file.display().to_string());
    let Some(document) = checked.document else {
        if !output::json() {
            for e in &checked.errors {
                eprintln!("{e}");
            }
        }
        return output::fail(
            Failure::new(
                Category::Invalid,
                "policy_invalid",
                format!("{}: invalid; nothing was published", a.file.display()),
            )
            .data(serde_json::json!({"errors": checked.errors})),
        );
    };
    let extends = document.extends.clone();
    let mut puts: Vec<(String, String, String)> = Vec::new();
    if let Some(extends) = extends.filter(|_| !a.skip_base) {
        let id = extends.org_policy_id.clone();
        let base = a.base.clone().or_else(|| {
            extends
                .base_policy
                .as_ref()
                .map(|b| a.file.parent().unwrap_or(std::path::Path::new(".")).join(b))
        });
        let Some(base) = base else {
            return usage_error(format!(
                "{} extends `{id}` but names no base_policy file: pass --base, or \
                 --skip-base if the gateway has it",
                a.file.display()
            ));
        };
        let base_text = match read(&base) {
            Ok(t) => t,
            Err(o) => return o,
        };
        puts.push((
            format!("/v1/admin/org-policies/{id}"),
            base_text,
            base.display().to_string(),
        ));
    }
    puts.push((
        "/v1/tenant/policy".to_owned(),
        text,
        a.file.display().to_string(),
    ));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return usage_error(format!("cannot start the runtime: {e}")),
    };
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for (path, body, file) in puts {
        let sent = runtime.block_on(async {
            let response = client
                .put(format!("{url}{path}"))
                .bearer_auth(&key)
                .header("content-type", "application/yaml")
                .body(body)
                .send()
                .await?;
            let status = response.status();
            let text = response.text().await?;
            Ok::<_, reqwest::Error>((status, text))
        });
        let (status, text) = match sent {
            Ok(r) => r,
            Err(e) => {
                // reqwest's errors name the URL, never the request's headers.
                return output::fail(Failure::new(
                    Category::Environment,
                    "gateway_unreachable",
                    format!("cannot reach the gateway at {url}: {e}"),
                ));
            }
        };
        let body: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        if !status.is_success() {
            let code = body["error"].as_str().unwrap_or("refused").to_owned();
            let request_id = body["request_id"].as_str().map(str::to_owned);
            return output::fail(
                Failure::new(
                    Category::Gateway,
                    &code,
                    format!(
                        "{file}: refused by the gateway (HTTP {}): {}",
                        status.as_u16(),
                        body["message"].as_str().unwrap_or("no message")
                    ),
                )
                .details(
                    serde_json::json!({"file": file, "status": status.as_u16(), "answer": body}),
                )
                .request_id(request_id)
                .data(serde_json::json!({"published": answers})),
            );
        }
        if !output::json() {
            println!(
                "{file}: published ({})",
                body["digest"].as_str().unwrap_or("-")
            );
        }
        answers.push(serde_json::json!({"file": file, "answer": body}));
    }
    output::success_json(serde_json::json!({"published": answers}), &[]);
    Outcome::Success
}
