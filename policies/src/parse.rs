//! Reading policy files.

use std::path::Path;

use crate::document::PolicyDocument;

/// A policy file that could not be read, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ParseError {
    /// The file (or `<input>`).
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// What is wrong, naming the field.
    pub message: String,
}

/// Parses a policy document from YAML (JSON is YAML too). `file` names the source in errors.
pub fn parse_policy(text: &str, file: &str) -> Result<PolicyDocument, ParseError> {
    serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        ParseError {
            file: file.to_owned(),
            line,
            column,
            message: e.to_string(),
        }
    })
}

/// Reads and parses a policy file.
pub fn read_policy(path: &Path) -> Result<PolicyDocument, ParseError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ParseError {
        file: file.clone(),
        line: 0,
        column: 0,
        message: e.to_string(),
    })?;
    parse_policy(&text, &file)
}
