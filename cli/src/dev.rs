//! `paybond dev loop --offline`: the gateway on 127.0.0.1 with a local sandbox tenant.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use paybond_gateway::{DatabaseUrl, Engine, EngineConfig, PolicyFile, Storage, database_path};
use paybond_middleware_core::wire::Environment;

use crate::output::Global;
use crate::{Outcome, envfile, usage_error};

#[derive(Debug, Subcommand)]
pub(crate) enum DevCommand {
    /// Run the gateway locally: `paybond dev loop --offline`.
    Loop(Loop),
    /// Replace the capability-token root key (stop the gateway first). Every
    /// capability token minted before is refused from the next start; agents fund
    /// their intents again for new ones.
    RotateRootKey(RotateRootKey),
}

#[derive(Debug, Args)]
pub(crate) struct RotateRootKey {
    /// The gateway's data directory (its key file is `paybond.key` there).
    #[arg(long, env = "PAYBOND_DATA_DIR", default_value = ".paybond")]
    data_dir: PathBuf,
    /// A fleet's PostgreSQL database instead.
    #[arg(long, env = "PAYBOND_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct Loop {
    /// Run without the hosted gateway (the only mode of this build).
    #[arg(long)]
    offline: bool,
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8787)]
    port: u16,
    /// Where the gateway keeps its state (a SQLite database in this directory).
    #[arg(long, env = "PAYBOND_DATA_DIR", default_value = ".paybond")]
    data_dir: PathBuf,
    /// Keep the state in PostgreSQL instead (`postgres://user@host:port/db`): several
    /// replicas on one database share tenants, keys, budgets, approvals and ledger.
    #[arg(long, env = "PAYBOND_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The tenant's policy, published at start [default: the policy the gateway
    /// already has, else the canonical scenario's overlay, built in].
    #[arg(long)]
    policy_file: Option<PathBuf>,
    /// The org base the tenant policy extends [default: the overlay's
    /// `extends.base_policy`, else the canonical scenario's org base, built in].
    #[arg(long)]
    org_policy_file: Option<PathBuf>,
    /// Issue new keys even if the env file's keys still work (the old ones stop working).
    #[arg(long)]
    force: bool,
    /// Seconds before an unfinalized reservation expires.
    #[arg(long, default_value_t = 300)]
    reservation_ttl_secs: u64,
    /// Connections the server holds at once.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Connections one client address may hold at once; over it, that address's
    /// idlest connection is closed to make room (503 when all of them are busy).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_peer: u32,
}

/// Runs `cmd`; with `export_metrics` the dev loop exports the engine's metrics
/// over OpenTelemetry (the process set the meter provider up).
pub(crate) fn run(cmd: DevCommand, global: &Global, export_metrics: bool) -> Outcome {
    if global.gateway.is_some() {
        return usage_error(
            "--gateway names a gateway to talk to; `paybond dev` runs one on this machine",
        );
    }
    match cmd {
        DevCommand::Loop(args) => dev_loop(&args, global, export_metrics),
        DevCommand::RotateRootKey(args) => rotate_root_key(&args),
    }
}

fn rotate_root_key(a: &RotateRootKey) -> Outcome {
    let storage = match &a.database_url {
        None => Storage::File(database_path(&a.data_dir)),
        Some(url) => match DatabaseUrl::parse(url) {
            Ok(url) => Storage::Postgres(url),
            Err(e) => return usage_error(format!("--database-url: {}", e.message)),
        },
    };
    match Engine::rotate_root_key(&storage) {
        Ok(()) => {
            let place = match &storage {
                Storage::File(db) => paybond_gateway::root_key_path(db).display().to_string(),
                Storage::Postgres(url) => url.to_string(),
                Storage::Memory => String::new(),
            };
            println!(
                "root key rotated ({place}); start the gateway again: capability tokens \
                 minted before are refused, fund intents again for new ones"
            );
            Outcome::Success
        }
        Err(e) => usage_error(format!("cannot rotate the root key: {}", e.message)),
    }
}

/// Adds `paths` (the env file, the data dir) to the `.gitignore` of the git
/// repository the current directory is in, as the Paybond CLI's `login` does, so
/// keys are not committed by accident. Answers the file and what was added, if
/// anything; nothing outside a repository, nothing already listed.
fn ignore_in_git(paths: &[PathBuf]) -> std::io::Result<Option<(PathBuf, Vec<String>)>> {
    let cwd = std::env::current_dir()?;
    let Some(root) = cwd.ancestors().find(|d| d.join(".git").exists()) else {
        return Ok(None);
    };
    let file = root.join(".gitignore");
    let existing = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let listed: Vec<&str> = existing.lines().map(str::trim).collect();
    let mut added = Vec::new();
    for path in paths {
        let absolute = if path.is_absolute() {
            path.clone()
        } else {
            cwd.join(path)
        };
        // Only what lives inside the repository, as a path from its root.
        let Ok(relative) = absolute.strip_prefix(root) else {
            continue;
        };
        let mut entry = format!("/{}", relative.display());
        if absolute.is_dir() {
            entry.push('/');
        }
        let bare = entry.trim_start_matches('/');
        let name = relative
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let covered = listed.iter().any(|l| {
            let l = l.trim_end_matches('/');
            l == entry.trim_end_matches('/') || l == bare.trim_end_matches('/') || l == name
        });
        if !covered {
            added.push(entry);
        }
    }
    if added.is_empty() {
        return Ok(None);
    }
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for entry in &added {
        text.push_str(entry);
        text.push('\n');
    }
    std::fs::write(&file, text)?;
    Ok(Some((file, added)))
}

fn read_policy(path: Option<&PathBuf>, bundled: fn() -> PolicyFile) -> Result<PolicyFile, Outcome> {
    match path {
        None => Ok(bundled()),
        Some(p) => PolicyFile::read(p)
            .map_err(|e| crate::unreadable(format!("cannot read {}: {e}", p.display()))),
    }
}

/// The org base an overlay names in `extends.base_policy`, relative to the
/// overlay's file (as `paybond policy validate-tools` finds it).
fn base_of(overlay: &PolicyFile, path: &std::path::Path) -> Option<PathBuf> {
    let checked = paybond_policies::check_policy(&overlay.text, &overlay.file);
    let base = checked.document?.extends?.base_policy?;
    Some(path.parent().unwrap_or(std::path::Path::new("")).join(base))
}

#[allow(clippy::too_many_lines)] // one start-up step after another
fn dev_loop(a: &Loop, global: &Global, export_metrics: bool) -> Outcome {
    if !a.offline {
        return usage_error(
            "this build runs the gateway locally only: pass --offline \
             (`paybond dev loop --offline`)",
        );
    }
    let tenant_policy =
        match read_policy(a.policy_file.as_ref(), PolicyFile::bundled_tenant_overlay) {
            Ok(p) => p,
            Err(o) => return o,
        };
    let org_path = a.org_policy_file.clone().or_else(|| {
        a.policy_file
            .as_ref()
            .and_then(|p| base_of(&tenant_policy, p))
    });
    let org = match read_policy(org_path.as_ref(), PolicyFile::bundled_org_base) {
        Ok(p) => p,
        Err(o) => return o,
    };
    // Where the policies came from, as the start-up line names them: a file given,
    // or the built-in one (whose repository path may not exist where this runs).
    let sources = format!(
        "{} (org base {})",
        if a.policy_file.is_some() {
            tenant_policy.file.as_str()
        } else {
            "the built-in scenario overlay"
        },
        if org_path.is_some() {
            org.file.as_str()
        } else {
            "the built-in scenario org base"
        }
    );
    let storage = match &a.database_url {
        None => Storage::File(database_path(&a.data_dir)),
        Some(url) => match DatabaseUrl::parse(url) {
            Ok(url) => Storage::Postgres(url),
            Err(e) => return usage_error(format!("--database-url: {}", e.message)),
        },
    };
    let place = match &storage {
        Storage::Postgres(url) => url.to_string(),
        _ => a.data_dir.display().to_string(),
    };
    let mut config = EngineConfig::new(storage);
    config.reservation_ttl_ms =
        i64::try_from(a.reservation_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    config.default_org_policy = Some(org.clone());
    config.default_tenant_policy = Some(tenant_policy.clone());
    let engine = match Engine::open(config) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            return usage_error(format!("cannot open the store {place}: {}", e.message));
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return usage_error(format!("cannot start the runtime: {e}")),
    };

    // The sandbox tenant and its keys.
    let existing = match runtime.block_on(engine.tenant_by_name("sandbox")) {
        Ok(t) => t,
        Err(e) => return usage_error(e.message),
    };
    let created = existing.is_none();
    let (tenant_id, new_keys) = match existing {
        None => match runtime.block_on(engine.create_tenant("sandbox", Environment::Sandbox)) {
            Ok(keys) => (keys.tenant_id.clone(), Some(keys)),
            Err(e) => return policy_or_usage(&e),
        },
        Some(tenant_id) => {
            let saved = envfile::read(&global.env_file);
            let keys_work = [
                "PAYBOND_API_KEY",
                "PAYBOND_OPERATOR_API_KEY",
                "PAYBOND_ADMIN_API_KEY",
            ]
            .iter()
            .all(|k| {
                saved
                    .iter()
                    .find(|(name, _)| name == k)
                    .is_some_and(|(_, v)| {
                        runtime
                            .block_on(engine.authenticate(v))
                            .is_ok_and(|p| p.tenant_id == tenant_id)
                    })
            });
            if keys_work && !a.force {
                (tenant_id, None)
            } else {
                match runtime.block_on(engine.rotate_keys(&tenant_id)) {
                    Ok(keys) => (tenant_id, Some(keys)),
                    Err(e) => return usage_error(e.message),
                }
            }
        }
    };
    // Which policy the tenant runs under: a file named on the command line is
    // published (it wins over one published since the last start); without one, the
    // policy the gateway has stays (a new tenant got the built-in one).
    let stored = match runtime.block_on(engine.tenant_policy(&tenant_id)) {
        Ok(p) => p,
        Err(e) => return usage_error(e.message),
    };
    let named = a.policy_file.is_some() || a.org_policy_file.is_some();
    match stored {
        // A tenant created just now got these files' policies.
        Some(p) if created => eprintln!(
            "policy: version {} ({}) from {sources}",
            p.version, p.digest
        ),
        Some(p) if !named => eprintln!(
            "policy: version {} ({}) as published to the gateway; \
             pass --policy-file to replace it",
            p.version, p.digest
        ),
        _ => match runtime.block_on(async {
            engine.publish_org_policy_text(&tenant_id, &org).await?;
            engine
                .publish_tenant_policy_text(&tenant_id, &tenant_policy)
                .await
        }) {
            Ok(p) => eprintln!(
                "policy: version {} ({}) from {sources}",
                p.version, p.digest
            ),
            Err(e) => return policy_or_usage(&e),
        },
    }

    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", a.port)).await {
            Ok(l) => l,
            Err(e) => return usage_error(format!("cannot listen on 127.0.0.1:{}: {e}", a.port)),
        };
        let port = listener.local_addr().map_or(a.port, |addr| addr.port());
        let url = format!("http://127.0.0.1:{port}");
        let mut pairs: Vec<(&str, String)> = vec![
            ("PAYBOND_GATEWAY_URL", url.clone()),
            ("PAYBOND_TENANT_ID", tenant_id.clone()),
        ];
        if let Some(keys) = &new_keys {
            pairs.push(("PAYBOND_API_KEY", keys.agent.expose_secret().to_owned()));
            pairs.push((
                "PAYBOND_OPERATOR_API_KEY",
                keys.operator.expose_secret().to_owned(),
            ));
            pairs.push((
                "PAYBOND_ADMIN_API_KEY",
                keys.tenant_admin.expose_secret().to_owned(),
            ));
        }
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Err(e) = envfile::write(&global.env_file, &borrowed) {
            return usage_error(format!("cannot write {}: {e}", global.env_file.display()));
        }
        let mut secret_paths = vec![global.env_file.clone()];
        if a.database_url.is_none() {
            secret_paths.push(a.data_dir.clone());
        }
        match ignore_in_git(&secret_paths) {
            Ok(Some((file, added))) => eprintln!(
                "added {} to {} (they hold keys)",
                added.join(", "),
                file.display()
            ),
            Ok(None) => {}
            Err(e) => eprintln!("warning: could not update .gitignore: {e}"),
        }
        eprintln!(
            "sandbox tenant {tenant_id}: keys {} {}; data in {}",
            if new_keys.is_some() {
                "written to"
            } else {
                "kept in"
            },
            global.env_file.display(),
            place
        );
        let sweeper =
            paybond_gateway::server::spawn_sweeper(engine.clone(), Duration::from_secs(1));
        let gauges = export_metrics.then(|| {
            paybond_gateway::telemetry::spawn_metrics_export(engine.clone(), Duration::from_secs(1))
        });
        println!("listening on {url}");
        println!("console: {url}/console");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let limits = paybond_gateway::server::ServeLimits {
            max_connections: a.max_connections as usize,
            max_connections_per_peer: a.max_connections_per_peer as usize,
            ..Default::default()
        };
        let served =
            paybond_gateway::server::serve_with(listener, engine, shutdown_signal(), limits).await;
        sweeper.abort();
        if let Some(gauges) = gauges {
            gauges.abort();
        }
        match served {
            Ok(()) => Outcome::Success,
            Err(e) => usage_error(format!("the server stopped: {e}")),
        }
    })
}

fn policy_or_usage(e: &paybond_gateway::ApiError) -> Outcome {
    if e.code == "policy_invalid" || e.code == "org_policy_not_found" {
        eprintln!("error: {}", e.message);
        Outcome::Failed
    } else {
        usage_error(&e.message)
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
