//! Checking an overlay together with its org base: both files, their link, and the
//! merge's refused widenings, as one list of located diagnostics.

use serde::Serialize;

use crate::document::PolicyDocument;
use crate::locate::Locations;
use crate::merge::{MergeReport, merge};
use crate::validate::{Diagnostic, check_policy};

/// A policy file's text and the name it goes by in diagnostics.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The file's contents.
    pub text: &'a str,
    /// Its name (a path, or `<input>`).
    pub file: &'a str,
}

/// A policy resolved against its org base.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolution {
    /// Whether there are no errors.
    pub valid: bool,
    /// Problems in either file, in the link between them, and refused widenings.
    pub errors: Vec<Diagnostic>,
    /// Problems that do not make the policy invalid.
    pub warnings: Vec<Diagnostic>,
    /// The effective policy (a flat version-1 document), when there are no errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective: Option<PolicyDocument>,
    /// What the merge applied and refused, when the policy extends a base.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<MergeReport>,
}

/// Resolves `policy` (a flat policy, an org base, or an overlay) into its effective policy.
///
/// An overlay needs its `base`; the base must be the one it names (`org_policy_id`,
/// and `base_digest` when given). A widening the merge refuses is an error here,
/// placed at its path in the overlay: a policy that tries to widen its base is
/// refused whole, not applied in part.
pub fn resolve_policy(policy: Source<'_>, base: Option<Source<'_>>) -> Resolution {
    let checked = check_policy(policy.text, policy.file);
    let mut errors = checked.errors;
    let mut warnings = checked.warnings;
    let base_checked = base.map(|b| check_policy(b.text, b.file));
    if let Some(b) = &base_checked {
        errors.extend(b.errors.iter().cloned());
        warnings.extend(b.warnings.iter().cloned());
    }
    let Some(doc) = checked.document else {
        return Resolution::refused(errors, warnings);
    };
    let locations = Locations::of(policy.text);
    let at = |path: &str, code: &str, message: String| {
        let (line, column) = locations.find(path);
        Diagnostic {
            file: policy.file.to_owned(),
            line,
            column,
            path: path.to_owned(),
            code: code.to_owned(),
            message,
        }
    };

    let Some(extends) = &doc.extends else {
        if base.is_some() {
            warnings.push(at(
                "",
                "policy.base_not_extended",
                "the policy does not extend a base; the base given is not used".to_owned(),
            ));
        }
        if !errors.is_empty() {
            return Resolution::refused(errors, warnings);
        }
        let mut effective = doc;
        effective.schema = None;
        effective.version = 1;
        return Resolution {
            valid: true,
            errors,
            warnings,
            effective: Some(effective),
            report: None,
        };
    };
    let Some(base_doc) = base_checked.and_then(|b| b.document) else {
        if base.is_none() {
            errors.push(at(
                "extends",
                "policy.base_required",
                format!(
                    "the policy extends `{}`: give its org base (--base FILE, or extends.base_policy)",
                    extends.org_policy_id
                ),
            ));
        }
        return Resolution::refused(errors, warnings);
    };
    if base_doc.extends.is_some() {
        errors.push(at(
            "extends.org_policy_id",
            "policy.base_extends",
            format!(
                "the base `{}` extends another policy; an org base must be self-contained",
                base_doc.name
            ),
        ));
    }
    if base_doc.name != extends.org_policy_id {
        errors.push(at(
            "extends.org_policy_id",
            "policy.base_mismatch",
            format!(
                "the policy extends `{}` but the base given is `{}`",
                extends.org_policy_id, base_doc.name
            ),
        ));
    }
    if let Some(expected) = &extends.base_digest {
        let actual = base_doc.digest();
        if *expected != actual {
            errors.push(at(
                "extends.base_digest",
                "policy.base_digest_mismatch",
                format!("the base has changed: its digest is {actual}, not {expected}"),
            ));
        }
    }
    let merged = merge(&base_doc, &doc);
    for denied in &merged.report.denied_widenings {
        errors.push(at(&denied.path, denied.code, denied.message.clone()));
    }
    if !errors.is_empty() {
        return Resolution {
            report: Some(merged.report),
            ..Resolution::refused(errors, warnings)
        };
    }
    Resolution {
        valid: true,
        errors,
        warnings,
        effective: Some(merged.effective),
        report: Some(merged.report),
    }
}

impl Resolution {
    fn refused(errors: Vec<Diagnostic>, warnings: Vec<Diagnostic>) -> Self {
        Self {
            valid: false,
            errors,
            warnings,
            effective: None,
            report: None,
        }
    }
}
