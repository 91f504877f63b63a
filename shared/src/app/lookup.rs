//! Reading the organisation tree (organisation → database → container) with typed "not found" answers. Every
//! use case that acts on a name starts here, so a missing or deleted parent is reported the same way everywhere.

use crate::ids::{ContainerRef, DbName, OrgId};
use crate::records::{
    ContainerRecord, DbRecord, OrgRecord, RecoveryRecord, container_key, db_key, decode, org_key, recovery_key,
};
use crate::store::{Store, StoreError, Version};

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("organisation '{0}' does not exist")]
    OrgNotFound(OrgId),
    #[error("database '{db}' does not exist in organisation '{org}'")]
    DatabaseNotFound { org: OrgId, db: DbName },
    #[error("{0} does not exist")]
    ContainerNotFound(ContainerRef),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The organisation and its item version. A deleted organisation (a tombstone) does not exist.
pub async fn org(store: &dyn Store, org: &OrgId) -> Result<(OrgRecord, Version), LookupError> {
    let item = store.get(&org_key(org)).await?.ok_or_else(|| LookupError::OrgNotFound(org.clone()))?;
    let rec: OrgRecord = decode(&item)?;
    if rec.deleted_at_ms.is_some() {
        return Err(LookupError::OrgNotFound(org.clone()));
    }
    Ok((rec, item.version))
}

/// The database, once its organisation exists.
pub async fn database(store: &dyn Store, org_id: &OrgId, db: &DbName) -> Result<DbRecord, LookupError> {
    org(store, org_id).await?;
    let item = store
        .get(&db_key(org_id, db))
        .await?
        .ok_or_else(|| LookupError::DatabaseNotFound { org: org_id.clone(), db: db.clone() })?;
    Ok(decode(&item)?)
}

/// The container and its item version. One read when it exists: a database with containers, and an organisation
/// with databases, cannot be deleted (`app::orgs`), so its parents exist too. When it does not, its parents are
/// read to say which name is missing.
pub async fn container(store: &dyn Store, c: &ContainerRef) -> Result<(ContainerRecord, Version), LookupError> {
    let read = store.get(&container_key(c)).await?;
    container_read(store, c, read).await
}

/// [`container`], given what the caller has just read at its key (with something else, in one read).
pub async fn container_read(
    store: &dyn Store,
    c: &ContainerRef,
    read: Option<crate::store::Item>,
) -> Result<(ContainerRecord, Version), LookupError> {
    match read {
        Some(item) => Ok((decode(&item)?, item.version)),
        None => {
            database(store, &c.org, &c.db).await?;
            Err(LookupError::ContainerNotFound(c.clone()))
        }
    }
}

/// The container's auto-recovery credentials (sealed), if stored and not expired.
pub async fn recovery(store: &dyn Store, c: &ContainerRef) -> Result<Option<(RecoveryRecord, Version)>, StoreError> {
    match store.get(&recovery_key(c)).await? {
        Some(item) => Ok(Some((decode(&item)?, item.version))),
        None => Ok(None),
    }
}
