//! Newtypes for secrets whose `Debug` and `Display` never show the value.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! secret_newtype {
    ($(#[$meta:meta])* $name:ident, $label:literal) => {
        $(#[$meta])*
        ///
        /// `Debug` and `Display` print a fixed placeholder; read the value with
        /// [`expose_secret`](Self::expose_secret) only where it goes on the wire.
        #[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The secret itself, for the request that needs it.
            pub fn expose_secret(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!($label, "([redacted])"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[redacted]")
            }
        }
    };
}

secret_newtype!(
    /// An intent-scoped capability token (a Biscuit token minted by the gateway).
    CapabilityToken,
    "CapabilityToken"
);
secret_newtype!(
    /// A short-lived, single-use token that an operator's approval yields.
    ApprovalToken,
    "ApprovalToken"
);
secret_newtype!(
    /// A gateway API key (`paybond_sk_sandbox_…` / `paybond_sk_live_…`).
    ApiKey,
    "ApiKey"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let token = CapabilityToken::new("biscuit-secret-123");
        assert_eq!(format!("{token:?}"), "CapabilityToken([redacted])");
        assert_eq!(token.to_string(), "[redacted]");
        assert_eq!(token.expose_secret(), "biscuit-secret-123");
        let key = ApiKey::from("paybond_sk_sandbox_abc");
        assert!(!format!("{key:?} {key}").contains("abc"));
        let approval = ApprovalToken::from("appr-xyz".to_owned());
        assert!(!format!("{:?}", Some(&approval)).contains("xyz"));
    }

    #[test]
    fn serializes_as_the_bare_string() {
        let token = ApprovalToken::new("t1");
        assert_eq!(serde_json::to_string(&token).unwrap(), r#""t1""#);
        let back: ApprovalToken = serde_json::from_str(r#""t1""#).unwrap();
        assert_eq!(back, token);
    }
}
