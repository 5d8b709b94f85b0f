//! Policy tool names as model function names, and back.
//!
//! Policy tool names may hold dots (`travel.book_hotel`) and run to 128 characters;
//! OpenAI-compatible APIs (and Anthropic's) accept only `^[a-zA-Z0-9_-]{1,64}$` and
//! refuse the whole request otherwise. [`FunctionNames`] gives every tool of a set a
//! valid, distinct function name and maps the model's calls back to the tool:
//!
//! - a name that is already valid is kept as it is;
//! - otherwise each character outside `[a-zA-Z0-9_-]` becomes `_`
//!   (`travel.book_hotel` → `travel_book_hotel`);
//! - when that is longer than 64 characters, or is another tool's name (or its
//!   function name), it is cut to 47 characters and suffixed with `_` and 16 hex
//!   digits of a hash of the tool's name.
//!
//! The mapping back is a table lookup over the set, so it is exact; a set that
//! still has two tools on one function name is refused with both names.
//!
//! ```
//! use paybond_middleware_core::function_names::FunctionNames;
//!
//! let names = FunctionNames::new(["travel.book_hotel", "travel_search"])?;
//! assert_eq!(names.function_name("travel.book_hotel"), Some("travel_book_hotel"));
//! assert_eq!(names.tool_name("travel_book_hotel"), Some("travel.book_hotel"));
//! assert_eq!(names.function_name("travel_search"), Some("travel_search"));
//! # Ok::<_, paybond_middleware_core::function_names::FunctionNameError>(())
//! ```

use std::collections::BTreeMap;

/// The longest function name OpenAI-compatible APIs accept.
pub const MAX_FUNCTION_NAME: usize = 64;

/// Whether `name` is a function name OpenAI-compatible APIs accept
/// (`^[a-zA-Z0-9_-]{1,64}$`).
pub fn is_valid_function_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FUNCTION_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Why a set of tools cannot be offered to a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FunctionNameError {
    /// Two tools would be one function.
    #[error(
        "tools `{first}` and `{second}` would both be the model function `{function}`; rename one"
    )]
    Collision {
        /// One tool.
        first: String,
        /// The other.
        second: String,
        /// The function name they share.
        function: String,
    },
    /// A tool with an empty name.
    #[error("a tool has an empty name")]
    Empty,
}

/// The function names of a set of tools, both ways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionNames {
    to_function: BTreeMap<String, String>,
    to_tool: BTreeMap<String, String>,
}

/// FNV-1a, 64 bits: stable across builds and platforms (unlike `DefaultHasher`).
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn sanitized(tool: &str) -> String {
    tool.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn hashed(tool: &str) -> String {
    let mut base: String = sanitized(tool).chars().take(47).collect();
    base.push_str(&format!("_{:016x}", stable_hash(tool)));
    base
}

impl FunctionNames {
    /// Function names for `tools` (policy tool names), checked: distinct and valid.
    pub fn new<'a>(tools: impl IntoIterator<Item = &'a str>) -> Result<Self, FunctionNameError> {
        let tools: Vec<&str> = tools.into_iter().collect();
        if tools.iter().any(|t| t.is_empty()) {
            return Err(FunctionNameError::Empty);
        }
        // How many tools each plain candidate would serve (valid names count as theirs).
        let mut claims: BTreeMap<String, usize> = BTreeMap::new();
        for tool in &tools {
            *claims.entry(sanitized(tool)).or_default() += 1;
        }
        let mut names = Self::default();
        for tool in &tools {
            let function = if is_valid_function_name(tool) {
                (*tool).to_owned()
            } else {
                let plain = sanitized(tool);
                let taken = claims.get(&plain).copied().unwrap_or(0) > 1;
                if plain.len() <= MAX_FUNCTION_NAME && !taken {
                    plain
                } else {
                    hashed(tool)
                }
            };
            if let Some(first) = names.to_tool.get(&function) {
                if first == tool {
                    continue;
                }
                return Err(FunctionNameError::Collision {
                    first: first.clone(),
                    second: (*tool).to_owned(),
                    function,
                });
            }
            names.to_tool.insert(function.clone(), (*tool).to_owned());
            names.to_function.insert((*tool).to_owned(), function);
        }
        Ok(names)
    }

    /// The function name the model sees for `tool`.
    pub fn function_name(&self, tool: &str) -> Option<&str> {
        self.to_function.get(tool).map(String::as_str)
    }

    /// The tool a model's function call is about.
    pub fn tool_name(&self, function: &str) -> Option<&str> {
        self.to_tool.get(function).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_becomes_valid_distinct_and_maps_back() {
        let long = format!("vendor.{}", "x".repeat(120));
        let tools = [
            "travel.book_hotel",
            "travel.search_hotels",
            "travel_book.hotel",
            "already_valid-name",
            long.as_str(),
        ];
        let names = FunctionNames::new(tools).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for tool in tools {
            let function = names.function_name(tool).unwrap();
            assert!(is_valid_function_name(function), "{function}");
            assert!(seen.insert(function.to_owned()), "{function} twice");
            assert_eq!(names.tool_name(function), Some(tool));
        }
        assert_eq!(
            names.function_name("already_valid-name"),
            Some("already_valid-name")
        );
        // Two dotted names that sanitize alike both get hashed names.
        assert_ne!(
            names.function_name("travel.book_hotel"),
            Some("travel_book_hotel")
        );
        assert!(names.function_name(&long).unwrap().len() <= MAX_FUNCTION_NAME);
        // Alone, a dotted name reads naturally.
        let alone = FunctionNames::new(["travel.book_hotel"]).unwrap();
        assert_eq!(
            alone.function_name("travel.book_hotel"),
            Some("travel_book_hotel")
        );
        assert_eq!(alone.tool_name("travel.book_hotel"), None);
    }

    #[test]
    fn a_valid_name_keeps_itself_when_a_dotted_one_would_take_it() {
        let names = FunctionNames::new(["travel_book_hotel", "travel.book_hotel"]).unwrap();
        assert_eq!(
            names.function_name("travel_book_hotel"),
            Some("travel_book_hotel")
        );
        let dotted = names.function_name("travel.book_hotel").unwrap();
        assert_ne!(dotted, "travel_book_hotel");
        assert!(is_valid_function_name(dotted));
        assert_eq!(names.tool_name(dotted), Some("travel.book_hotel"));
        assert_eq!(
            FunctionNames::new([""]).unwrap_err(),
            FunctionNameError::Empty
        );
    }

    #[test]
    fn the_names_are_the_same_on_every_build() {
        // A model's conversation may outlive the process: the names must not change.
        let names = FunctionNames::new(["a.b", "a_b"]).unwrap();
        assert_eq!(names.function_name("a.b"), Some("a_b_e61d99190466522c"));
    }
}
