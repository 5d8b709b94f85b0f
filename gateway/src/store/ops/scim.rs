//! The SCIM directory: users, groups and who is in which.

use crate::scim::resources::{GroupRow, UserRow};
use crate::store::{Row, StoreError, Tx, args};

const USER_COLUMNS: &str = "id, active, resource, version, created_ms, updated_ms";
const GROUP_COLUMNS: &str = "id, display_name, resource, version, created_ms, updated_ms";

fn user_row(r: &Row) -> Result<UserRow, StoreError> {
    Ok(UserRow {
        id: r.get(0)?,
        active: r.get(1)?,
        resource: serde_json::from_str(&r.get::<String>(2)?)?,
        version: r.get(3)?,
        created_ms: r.get(4)?,
        updated_ms: r.get(5)?,
    })
}

fn group_row(r: &Row) -> Result<GroupRow, StoreError> {
    Ok(GroupRow {
        id: r.get(0)?,
        display_name: r.get(1)?,
        resource: serde_json::from_str(&r.get::<String>(2)?)?,
        version: r.get(3)?,
        created_ms: r.get(4)?,
        updated_ms: r.get(5)?,
    })
}

/// A user to store (made, or updated in place).
pub(crate) struct ScimUser<'a> {
    pub(crate) id: &'a str,
    pub(crate) tenant: &'a str,
    pub(crate) user_name: &'a str,
    pub(crate) external_id: Option<&'a str>,
    pub(crate) active: bool,
    /// Its attributes, as JSON.
    pub(crate) resource: &'a str,
    pub(crate) version: u64,
    pub(crate) created_ms: i64,
    pub(crate) updated_ms: i64,
}

/// A group to store (made, or updated in place); its members are kept apart.
pub(crate) struct ScimGroup<'a> {
    pub(crate) id: &'a str,
    pub(crate) tenant: &'a str,
    pub(crate) display_name: &'a str,
    pub(crate) external_id: Option<&'a str>,
    /// Its attributes, as JSON.
    pub(crate) resource: &'a str,
    pub(crate) version: u64,
    pub(crate) created_ms: i64,
    pub(crate) updated_ms: i64,
}

impl dyn Tx + '_ {
    /// The tenant's user `id`.
    pub(crate) fn scim_user(&self, tenant: &str, id: &str) -> Result<Option<UserRow>, StoreError> {
        self.query_opt(
            &format!("SELECT {USER_COLUMNS} FROM scim_users WHERE id = ?1 AND tenant_id = ?2"),
            args![id, tenant],
            user_row,
        )
    }

    /// Every user of the tenant, oldest first.
    pub(crate) fn scim_users(&self, tenant: &str) -> Result<Vec<UserRow>, StoreError> {
        self.query_map(
            &format!(
                "SELECT {USER_COLUMNS} FROM scim_users WHERE tenant_id = ?1 ORDER BY created_ms, id"
            ),
            args![tenant],
            user_row,
        )
    }

    /// The tenant's group `id`.
    pub(crate) fn scim_group(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<GroupRow>, StoreError> {
        self.query_opt(
            &format!("SELECT {GROUP_COLUMNS} FROM scim_groups WHERE id = ?1 AND tenant_id = ?2"),
            args![id, tenant],
            group_row,
        )
    }

    /// Every group of the tenant, oldest first.
    pub(crate) fn scim_groups(&self, tenant: &str) -> Result<Vec<GroupRow>, StoreError> {
        self.query_map(
            &format!(
                "SELECT {GROUP_COLUMNS} FROM scim_groups WHERE tenant_id = ?1 ORDER BY created_ms, id"
            ),
            args![tenant],
            group_row,
        )
    }

    /// The groups user `user` is in: `(id, displayName)`, by name.
    pub(crate) fn scim_groups_of(&self, user: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.query_map(
            "SELECT g.id, g.display_name FROM scim_members m JOIN scim_groups g ON g.id = m.group_id
             WHERE m.user_id = ?1 ORDER BY g.display_name, g.id",
            args![user],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// The members of group `group`: `(id, userName)`, by name.
    pub(crate) fn scim_members_of(&self, group: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.query_map(
            "SELECT u.id, u.user_name FROM scim_members m JOIN scim_users u ON u.id = m.user_id
             WHERE m.group_id = ?1 ORDER BY u.user_name, u.id",
            args![group],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Every membership of the tenant: `(user, group id, group displayName)`, by
    /// group name.
    pub(crate) fn scim_memberships_by_user(
        &self,
        tenant: &str,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        self.query_map(
            "SELECT m.user_id, g.id, g.display_name FROM scim_members m
             JOIN scim_groups g ON g.id = m.group_id WHERE m.tenant_id = ?1
             ORDER BY g.display_name, g.id",
            args![tenant],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    /// Every membership of the tenant: `(group, user id, userName)`, by user name.
    pub(crate) fn scim_memberships_by_group(
        &self,
        tenant: &str,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        self.query_map(
            "SELECT m.group_id, u.id, u.user_name FROM scim_members m
             JOIN scim_users u ON u.id = m.user_id WHERE m.tenant_id = ?1
             ORDER BY u.user_name, u.id",
            args![tenant],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    /// Whether a user of the tenant other than `id` has this `userName`
    /// (matched without case).
    pub(crate) fn scim_user_name_taken(
        &self,
        tenant: &str,
        user_name: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .query_opt(
                "SELECT id FROM scim_users WHERE tenant_id = ?1 AND user_name_key = ?2 AND id <> ?3",
                args![tenant, user_name.to_lowercase(), id],
                |_| Ok(()),
            )?
            .is_some())
    }

    /// Stores a user.
    pub(crate) fn save_scim_user(&self, u: &ScimUser<'_>) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO scim_users (id, tenant_id, user_name, user_name_key, external_id, active,
                 resource, version, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (id) DO UPDATE SET user_name = ?3, user_name_key = ?4, external_id = ?5,
                 active = ?6, resource = ?7, version = ?8, updated_ms = ?10",
            args![
                u.id,
                u.tenant,
                u.user_name,
                u.user_name.to_lowercase(),
                u.external_id,
                i64::from(u.active),
                u.resource,
                u.version,
                u.created_ms,
                u.updated_ms
            ],
        )
        .map(drop)
    }

    /// Stores a group (its members aside).
    pub(crate) fn save_scim_group(&self, g: &ScimGroup<'_>) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO scim_groups (id, tenant_id, display_name, external_id, resource, version,
                 created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (id) DO UPDATE SET display_name = ?3, external_id = ?4, resource = ?5,
                 version = ?6, updated_ms = ?8",
            args![
                g.id,
                g.tenant,
                g.display_name,
                g.external_id,
                g.resource,
                g.version,
                g.created_ms,
                g.updated_ms
            ],
        )
        .map(drop)
    }

    /// Puts user `user` in the tenant's group `group`.
    pub(crate) fn add_scim_member(
        &self,
        tenant: &str,
        group: &str,
        user: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO scim_members (group_id, user_id, tenant_id) VALUES (?1, ?2, ?3)",
            args![group, user, tenant],
        )
        .map(drop)
    }

    /// Takes user `user` out of group `group`.
    pub(crate) fn remove_scim_member(&self, group: &str, user: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM scim_members WHERE group_id = ?1 AND user_id = ?2",
            args![group, user],
        )
        .map(drop)
    }

    /// Deletes the tenant's user `id` and their memberships.
    pub(crate) fn delete_scim_user(&self, tenant: &str, id: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM scim_members WHERE user_id = ?1", args![id])?;
        self.execute(
            "DELETE FROM scim_users WHERE id = ?1 AND tenant_id = ?2",
            args![id, tenant],
        )
        .map(drop)
    }

    /// Deletes the tenant's group `id` and its memberships.
    pub(crate) fn delete_scim_group(&self, tenant: &str, id: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM scim_members WHERE group_id = ?1", args![id])?;
        self.execute(
            "DELETE FROM scim_groups WHERE id = ?1 AND tenant_id = ?2",
            args![id, tenant],
        )
        .map(drop)
    }
}
