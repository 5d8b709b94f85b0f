//! The SCIM 2.0 service provider at `/scim/v2` (RFC 7643, RFC 7644): users and
//! groups of the tenant whose bearer token the request carries, provisioned by the
//! company's identity provider. A person's tenant roles come from the groups they
//! are in ([role mappings](crate::RoleMapping)); deactivating or deleting them, or
//! taking them out of their last mapped group, ends their console sessions.
//!
//! `Users` and `Groups` take POST, GET (one, or a filtered and paged list), PUT,
//! PATCH and DELETE, with `meta.version` ETags (`If-Match`, `If-None-Match`).
//! `ServiceProviderConfig`, `Schemas` and `ResourceTypes` describe what is
//! supported. Errors use the SCIM error schema with a `scimType` where RFC 7644
//! defines one.

pub(crate) mod filter;
mod http;
mod patch;
pub(crate) mod resources;

pub(crate) use http::router;

pub(crate) const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub(crate) const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub(crate) const ENTERPRISE_USER_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// Results a list returns at most, whatever `count` asks.
const MAX_RESULTS: usize = 200;

/// A SCIM error: its HTTP status, `scimType` and detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScimError {
    pub(crate) status: u16,
    pub(crate) scim_type: Option<&'static str>,
    pub(crate) detail: String,
}

impl ScimError {
    pub(crate) fn new(
        status: u16,
        scim_type: Option<&'static str>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            scim_type,
            detail: detail.into(),
        }
    }

    pub(crate) fn bad(scim_type: &'static str, detail: impl Into<String>) -> Self {
        Self::new(400, Some(scim_type), detail)
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, None, detail)
    }
}

impl From<crate::error::ApiError> for ScimError {
    fn from(e: crate::error::ApiError) -> Self {
        Self::new(e.status, None, e.message)
    }
}

impl From<crate::store::StoreError> for ScimError {
    fn from(e: crate::store::StoreError) -> Self {
        crate::error::ApiError::from(e).into()
    }
}
