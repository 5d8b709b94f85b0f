//! `.env.local`: `KEY=VALUE` lines that the dev loop writes and the other commands read.

use std::path::Path;

/// The `KEY=VALUE` pairs of an env file (comments and blank lines skipped; quotes removed).
pub(crate) fn read(path: &Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

/// The value of `key`: the process environment first, then the env file.
pub(crate) fn lookup(key: &str, file: &Path) -> Option<String> {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| {
            read(file)
                .into_iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
        })
}

/// Sets `pairs` in the env file, keeping its other lines, with mode 0600.
pub(crate) fn write(path: &Path, pairs: &[(&str, &str)]) -> std::io::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    for line in existing.lines() {
        let key = line
            .trim()
            .strip_prefix("export ")
            .unwrap_or(line.trim())
            .split_once('=')
            .map(|(k, _)| k.trim());
        if key.is_some_and(|k| pairs.iter().any(|(p, _)| *p == k)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if existing.is_empty() {
        out.push_str("# Written by `paybond dev loop --offline`: local sandbox credentials. Keep out of version control.\n");
    }
    for (k, v) in pairs {
        out.push_str(k);
        out.push('=');
        out.push_str(v);
        out.push('\n');
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Created 0600 from the start, so the keys are never readable by others, then
    // renamed over the old file in one step.
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    {
        use std::io::Write as _;
        let mut f = options.open(&tmp)?;
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
