//! The property the fuzz target (`policies/fuzz`) and the mutation test check on any input.

use crate::document::PolicyDocument;
use crate::validate::check_policy;

/// Checks one input; panics when a property does not hold:
///
/// - checking never panics, and every diagnostic has a code, a message and a file;
/// - the checks never admit what the types refuse (`policy.invalid` never appears);
/// - a valid file deserializes to the same document directly, and its canonical JSON
///   and its YAML check valid again, to an equal document with an equal digest.
pub fn check_input(text: &str) {
    let checked = check_policy(text, "<fuzz>");
    for d in checked.errors.iter().chain(&checked.warnings) {
        assert!(
            d.code.starts_with("policy.") && !d.message.is_empty() && d.file == "<fuzz>",
            "malformed diagnostic {d:?} for {text:?}"
        );
        assert_ne!(
            d.code, "policy.invalid",
            "the checks admitted what the types refuse: {d} for {text:?}"
        );
    }
    assert_eq!(checked.is_valid(), checked.document.is_some());
    let Some(doc) = checked.document else {
        return;
    };
    if let Ok(direct) = serde_yaml_ng::from_str::<PolicyDocument>(text) {
        assert_eq!(direct, doc, "two readings differ for {text:?}");
    }
    let json = serde_json::to_string(&doc).unwrap_or_default();
    let again = check_policy(&json, "<fuzz>");
    assert_eq!(
        again.document.as_ref(),
        Some(&doc),
        "round trip through {json} changed the document ({:?})",
        again.errors
    );
    assert_eq!(
        doc.digest(),
        again.document.map(|d| d.digest()).unwrap_or_default()
    );
}
