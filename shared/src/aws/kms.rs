//! KMS `Keys`: one customer-managed key per organisation (alias `alias/chainkeeper/<org>`, tagged
//! `chainkeeper=org` and `chainkeeper-stage=<stage>`), data keys from `GenerateDataKey` with the encryption
//! context `{org, container, field}`, crypto-shredding by scheduling the key's deletion.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeySpec, KeyUsageType, Tag};
use zeroize::Zeroizing;

use crate::keys::{Context, DataKey, KeyError, Keys};

pub struct KmsKeys {
    client: Client,
    stage: String,
    alias_prefix: String,
    deletion_window_days: i32,
}

fn unavailable(e: impl std::fmt::Display) -> KeyError {
    KeyError::Unavailable(anyhow::anyhow!("kms: {e}"))
}

fn to_key(blob: Option<Blob>) -> Result<DataKey, KeyError> {
    let bytes = blob.ok_or(KeyError::Decrypt)?;
    let key: [u8; 32] = bytes.as_ref().try_into().map_err(|_| KeyError::Decrypt)?;
    Ok(Zeroizing::new(key))
}

/// The KMS encryption context of a data key: the same three values as the AES-GCM associated data.
fn encryption_context(ctx: &Context<'_>) -> HashMap<String, String> {
    HashMap::from([
        ("org".into(), ctx.org.into()),
        ("container".into(), ctx.container.into()),
        ("field".into(), ctx.field.into()),
    ])
}

impl KmsKeys {
    /// `alias_prefix`: `alias/chainkeeper/` (or per stage, `alias/chainkeeper/<stage>/`, as the SAM template sets).
    pub fn new(client: Client, stage: String, alias_prefix: String) -> Self {
        Self { client, stage, alias_prefix, deletion_window_days: 30 }
    }

    /// The waiting period of `ScheduleKeyDeletion` (7-30 days; default 30, KMS's own default).
    pub fn with_deletion_window_days(mut self, days: i32) -> Self {
        self.deletion_window_days = days.clamp(7, 30);
        self
    }

    fn alias(&self, org: &str) -> String {
        format!("{}{org}", self.alias_prefix)
    }
}

#[async_trait]
impl Keys for KmsKeys {
    async fn create_org_key(&self, org: &str) -> Result<(), KeyError> {
        match self.client.describe_key().key_id(self.alias(org)).send().await {
            Ok(_) => return Ok(()), // idempotent: the first key stays
            Err(e) => {
                let e = e.into_service_error();
                if !e.is_not_found_exception() {
                    return Err(unavailable(e));
                }
            }
        }
        let tag = |k: &str, v: &str| Tag::builder().tag_key(k).tag_value(v).build().map_err(unavailable);
        let created = self
            .client
            .create_key()
            .key_spec(KeySpec::SymmetricDefault)
            .key_usage(KeyUsageType::EncryptDecrypt)
            .description(format!("chainkeeper organisation {org}"))
            .tags(tag("chainkeeper", "org")?)
            .tags(tag("chainkeeper-stage", &self.stage)?)
            .tags(tag("chainkeeper-org", org)?)
            .send()
            .await
            .map_err(|e| unavailable(e.into_service_error()))?;
        let id = created.key_metadata.map(|m| m.key_id).ok_or_else(|| unavailable("CreateKey returned no key id"))?;
        // Yearly rotation of the key material; old data keys still open (KMS keeps every version).
        self.client.enable_key_rotation().key_id(&id).send().await.map_err(|e| unavailable(e.into_service_error()))?;
        match self.client.create_alias().alias_name(self.alias(org)).target_key_id(&id).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = e.into_service_error();
                if e.is_already_exists_exception() {
                    // Another process created the organisation's key first: keep theirs, drop ours.
                    let _ = self
                        .client
                        .schedule_key_deletion()
                        .key_id(id)
                        .pending_window_in_days(self.deletion_window_days)
                        .send()
                        .await;
                    Ok(())
                } else {
                    Err(unavailable(e))
                }
            }
        }
    }

    async fn delete_org_key(&self, org: &str) -> Result<(), KeyError> {
        let described = self
            .client
            .describe_key()
            .key_id(self.alias(org))
            .send()
            .await
            .map_err(|e| unavailable(e.into_service_error()))?;
        let id = described.key_metadata.map(|m| m.key_id).ok_or_else(|| unavailable("no key id"))?;
        self.client
            .schedule_key_deletion()
            .key_id(&id)
            .pending_window_in_days(self.deletion_window_days)
            .send()
            .await
            .map_err(|e| unavailable(e.into_service_error()))?;
        let _ = self.client.delete_alias().alias_name(self.alias(org)).send().await;
        Ok(())
    }

    async fn generate_data_key(&self, ctx: &Context<'_>) -> Result<(DataKey, Vec<u8>), KeyError> {
        let out = self
            .client
            .generate_data_key()
            .key_id(self.alias(ctx.org))
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(encryption_context(ctx)))
            .send()
            .await
            .map_err(|e| {
                let e = e.into_service_error();
                if e.is_not_found_exception() { KeyError::NoOrgKey(ctx.org.to_string()) } else { unavailable(e) }
            })?;
        let wrapped = out
            .ciphertext_blob
            .map(|b| b.into_inner())
            .ok_or_else(|| unavailable("GenerateDataKey returned no ciphertext"))?;
        Ok((to_key(out.plaintext)?, wrapped))
    }

    async fn decrypt_data_key(&self, ctx: &Context<'_>, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let out = self
            .client
            .decrypt()
            .key_id(self.alias(ctx.org))
            .ciphertext_blob(Blob::new(wrapped.to_vec()))
            .set_encryption_context(Some(encryption_context(ctx)))
            .send()
            .await
            .map_err(|e| {
                let e = e.into_service_error();
                if e.is_invalid_ciphertext_exception() || e.is_incorrect_key_exception() {
                    KeyError::Decrypt
                } else if e.is_not_found_exception() || e.is_kms_invalid_state_exception() || e.is_disabled_exception()
                {
                    KeyError::NoOrgKey(ctx.org.to_string())
                } else {
                    unavailable(e)
                }
            })?;
        to_key(out.plaintext)
    }
}
