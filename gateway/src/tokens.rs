//! Secrets the gateway issues: API keys, capability tokens (Biscuit) and approval tokens.
//!
//! API keys and approval tokens are random and stored as SHA-256 digests only (an
//! approval token's plain value is kept until it is used or expires, so the agent
//! that was held can read it). Capability tokens are Biscuit tokens signed with the
//! gateway's Ed25519 root key: every verify checks the signature; a token already
//! verified is remembered by its digest.

use std::collections::HashMap;
use std::sync::Mutex;

use biscuit_auth::builder::{fact, int, string};
use std::time::Duration;

use biscuit_auth::builder::AuthorizerBuilder;
use biscuit_auth::{AuthorizerLimits, Biscuit, KeyPair, PrivateKey};
use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// `bytes` as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The bytes of a hex string (surrounding whitespace ignored); `None` if it is not hex.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// 256 random bits from the OS random source, as 64 hex characters: keys,
/// tokens and other secrets.
pub(crate) fn random_hex() -> String {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// What a valid capability token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    pub tenant: String,
    pub intent: String,
    pub operations: Vec<String>,
    pub expires_ms: i64,
}

/// Why a capability token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not a token of this gateway, or tampered with.
    Invalid,
}

/// Mints and checks capability tokens with the gateway's root key.
pub(crate) struct Minter {
    root: KeyPair,
    verified: Mutex<HashMap<String, Claims>>,
}

const CACHE_LIMIT: usize = 4096;

impl Minter {
    /// A minter for a stored root key, or a new key (returned for storing).
    pub(crate) fn load(stored: Option<&[u8]>) -> (Self, Option<Vec<u8>>) {
        let existing = stored.and_then(|bytes| {
            PrivateKey::from_bytes(bytes, biscuit_auth::Algorithm::Ed25519)
                .ok()
                .map(|k| KeyPair::from(&k))
        });
        let (root, new) = match existing {
            Some(root) => (root, None),
            None => {
                let root = KeyPair::new();
                let bytes = root.private().to_bytes().to_vec();
                (root, Some(bytes))
            }
        };
        (
            Self {
                root,
                verified: Mutex::new(HashMap::new()),
            },
            new,
        )
    }

    /// The approval token of an approval request: derived from the root key and the
    /// request, so the store keeps only its digest and the gateway can still hand it
    /// to the held agent once.
    pub(crate) fn approval_token(&self, approval_id: &str, expires_ms: i64) -> String {
        use hmac::{Hmac, Mac};
        use sha2::Digest;
        // A key of its own for approval tokens, derived from the root key.
        let key = sha2::Sha256::new()
            .chain_update(b"paybond approval tokens v1\0")
            .chain_update(self.root.private().to_bytes())
            .finalize();
        // A 32-byte key zero-padded to SHA-256's 64-byte block: what HMAC does with
        // any key shorter than a block, without a fallible constructor.
        let mut block = [0_u8; 64];
        block[..key.len()].copy_from_slice(&key);
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new(&block.into());
        mac.update(approval_id.as_bytes());
        mac.update(b"\0");
        mac.update(&expires_ms.to_be_bytes());
        let tag = mac.finalize().into_bytes();
        format!("paybond_at_{}", hex(&tag))
    }

    /// What a tenant's audit signing key is XORed with in the store: a pad derived
    /// from the root key and the tenant, so the database alone does not hold the
    /// signing key (a SQLite store keeps the root key in its own file).
    pub(crate) fn audit_key_pad(&self, tenant: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::new()
            .chain_update(b"paybond audit signing key v1\0")
            .chain_update(self.root.private().to_bytes())
            .chain_update(tenant.as_bytes())
            .finalize()
            .into()
    }

    /// `secret` XORed with a keystream derived from the root key and the tenant
    /// (SHA-256 in counter mode): how an OpenID Connect client secret is kept in
    /// the store. The same call turns it back.
    pub(crate) fn wrap_client_secret(&self, tenant: &str, secret: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        let mut out = Vec::with_capacity(secret.len());
        for (block, chunk) in secret.chunks(32).enumerate() {
            let pad: [u8; 32] = sha2::Sha256::new()
                .chain_update(b"paybond oidc client secret v1\0")
                .chain_update(self.root.private().to_bytes())
                .chain_update(tenant.as_bytes())
                .chain_update((block as u64).to_be_bytes())
                .finalize()
                .into();
            out.extend(chunk.iter().zip(pad).map(|(a, b)| a ^ b));
        }
        out
    }

    /// A minter for exactly this key (from a key file): `None` if the bytes are not
    /// an Ed25519 private key.
    pub(crate) fn from_key(bytes: &[u8]) -> Option<Self> {
        let key = PrivateKey::from_bytes(bytes, biscuit_auth::Algorithm::Ed25519).ok()?;
        Some(Self {
            root: KeyPair::from(&key),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// A new random root key's bytes.
    pub(crate) fn new_key() -> Vec<u8> {
        KeyPair::new().private().to_bytes().to_vec()
    }

    /// A token for `tenant`'s `intent`, allowing `operations` until `expires_ms`.
    pub(crate) fn mint(&self, claims: &Claims) -> Result<String, biscuit_auth::error::Token> {
        let mut builder = Biscuit::builder()
            .fact(fact("tenant", &[string(&claims.tenant)]))?
            .fact(fact("intent", &[string(&claims.intent)]))?
            .fact(fact("expires_ms", &[int(claims.expires_ms)]))?;
        for op in &claims.operations {
            builder = builder.fact(fact("operation", &[string(op)]))?;
        }
        builder.build(&self.root)?.to_base64()
    }

    /// Checks the signature and reads the claims. Expiry and scope are judged by the caller.
    pub(crate) fn check(&self, token: &str) -> Result<Claims, TokenError> {
        let key = sha256_hex(token.as_bytes());
        if let Ok(cache) = self.verified.lock()
            && let Some(c) = cache.get(&key)
        {
            return Ok(c.clone());
        }
        let biscuit =
            Biscuit::from_base64(token, self.root.public()).map_err(|_| TokenError::Invalid)?;
        // An attenuated token (more than the authority block) would need its checks run
        // against each request; this gateway issues single-block tokens only.
        if biscuit.block_count() != 1 {
            return Err(TokenError::Invalid);
        }
        // Reading four facts takes microseconds; the default 1 ms budget of the Datalog
        // engine could still run out on a busy machine and refuse a good token, so the
        // time limit is generous while the size limits stay the library's.
        let limits = || AuthorizerLimits {
            max_time: Duration::from_secs(2),
            ..AuthorizerLimits::default()
        };
        let mut authorizer = AuthorizerBuilder::new()
            .set_limits(limits())
            .build(&biscuit)
            .map_err(|_| TokenError::Invalid)?;
        let strings = |authorizer: &mut biscuit_auth::Authorizer, rule: &str| {
            authorizer
                .query_all_with_limits::<_, (String,), _>(rule, limits())
                .map(|v| v.into_iter().map(|(s,)| s).collect::<Vec<_>>())
                .map_err(|_| TokenError::Invalid)
        };
        let tenant = strings(&mut authorizer, "data($t) <- tenant($t)")?;
        let intent = strings(&mut authorizer, "data($i) <- intent($i)")?;
        let mut operations = strings(&mut authorizer, "data($o) <- operation($o)")?;
        operations.sort();
        let expires: Vec<(i64,)> = authorizer
            .query_all_with_limits("data($e) <- expires_ms($e)", limits())
            .map_err(|_| TokenError::Invalid)?;
        let ([tenant], [intent], [(expires_ms,)]) =
            (tenant.as_slice(), intent.as_slice(), expires.as_slice())
        else {
            return Err(TokenError::Invalid);
        };
        let claims = Claims {
            tenant: tenant.clone(),
            intent: intent.clone(),
            operations,
            expires_ms: *expires_ms,
        };
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(key, claims.clone());
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_unhex_reads_it_back() {
        let bytes: Vec<u8> = (0..=255).collect();
        let text = hex(&bytes);
        assert_eq!(&text[..8], "00010203");
        assert_eq!(&text[text.len() - 6..], "fdfeff");
        assert_eq!(hex(&[0xab, 0x0c]), "ab0c");
        assert_eq!(unhex(&text), Some(bytes));
    }

    #[test]
    fn random_hex_is_256_bits_and_never_repeats() {
        let secrets: std::collections::HashSet<String> = (0..1000).map(|_| random_hex()).collect();
        assert_eq!(secrets.len(), 1000);
        for s in &secrets {
            assert_eq!(unhex(s).map(|b| b.len()), Some(32), "{s}");
        }
    }

    #[test]
    fn minted_tokens_verify_and_others_do_not() {
        let (minter, new_key) = Minter::load(None);
        let claims = Claims {
            tenant: "t1".into(),
            intent: "i1".into(),
            operations: vec!["a.op".into(), "b.op".into()],
            expires_ms: 42,
        };
        let token = minter.mint(&claims).unwrap();
        assert_eq!(minter.check(&token).unwrap(), claims);
        // Cached: same answer.
        assert_eq!(minter.check(&token).unwrap(), claims);

        // The same key restored from storage accepts it; another key does not.
        let (restored, none) = Minter::load(new_key.as_deref());
        assert!(none.is_none());
        assert_eq!(restored.check(&token).unwrap(), claims);
        let (other, _) = Minter::load(None);
        assert_eq!(other.check(&token), Err(TokenError::Invalid));

        // Tampering breaks the signature.
        let mut bytes = token.into_bytes();
        let mid = bytes.len() / 2;
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(restored.check(&tampered), Err(TokenError::Invalid));
        assert_eq!(restored.check("not a token"), Err(TokenError::Invalid));
    }
}
