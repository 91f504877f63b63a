//! One conformance suite for every `Keys` adapter: the local key adapter always, KMS (with the `aws` feature)
//! against moto. Each check panics with a message naming the rule it broke.
//!
//! The rules are the port's contract ([`Keys`]): organisation keys are created idempotently; a data key opens
//! only under the organisation, container and field it was generated for; an organisation without a key gets
//! `NoOrgKey`; deleting an organisation's key makes its data keys unopenable (crypto-shredding) and leaves the
//! other organisations alone.

use std::sync::Arc;

use super::*;

/// Runs every check. `ns` keeps runs apart on a shared backend (organisation names are prefixed with it).
pub async fn run(keys: Arc<dyn Keys>, ns: &str) {
    let acme = format!("{ns}-acme");
    let other = format!("{ns}-other");
    keys.create_org_key(&acme).await.expect("create an organisation key");
    keys.create_org_key(&other).await.expect("create a second organisation key");

    // A data key opens under the context it was generated for.
    let ctx = Context { org: &acme, container: "finance/eol", field: "refresh_token" };
    let (key, wrapped) = keys.generate_data_key(&ctx).await.expect("generate a data key");
    assert!(!wrapped.is_empty(), "the wrapped data key is returned");
    assert_ne!(&wrapped[..], &key[..], "the wrapped data key is not the plaintext key");
    let opened = keys.decrypt_data_key(&ctx, &wrapped).await.expect("unwrap under the same context");
    assert_eq!(&opened[..], &key[..], "unwrapping gives back the same data key");

    // Two data keys are never the same.
    let (key2, _) = keys.generate_data_key(&ctx).await.unwrap();
    assert_ne!(&key2[..], &key[..], "every data key is fresh");

    // Creating the key again keeps the first one: earlier data keys still open.
    keys.create_org_key(&acme).await.expect("creating an organisation key twice succeeds");
    let again = keys.decrypt_data_key(&ctx, &wrapped).await.expect("the first organisation key stays");
    assert_eq!(&again[..], &key[..]);

    // Another organisation, container or field does not open it.
    for wrong in [
        Context { org: &other, ..ctx },
        Context { container: "finance/yuki", ..ctx },
        Context { field: "access_token", ..ctx },
    ] {
        assert!(
            keys.decrypt_data_key(&wrong, &wrapped).await.is_err(),
            "a data key of {ctx:?} must not open as {wrong:?}"
        );
    }
    // A damaged wrapped key does not open.
    let mut damaged = wrapped.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x55;
    assert!(keys.decrypt_data_key(&ctx, &damaged).await.is_err(), "a damaged wrapped key must not open");

    // An organisation without a key.
    let nobody = format!("{ns}-nobody");
    let missing = Context { org: &nobody, ..ctx };
    assert!(
        matches!(keys.generate_data_key(&missing).await, Err(KeyError::NoOrgKey(_))),
        "an organisation without a key gets NoOrgKey"
    );

    // Crypto-shredding: after deleting acme's key its data keys are gone, other's are not.
    let other_ctx = Context { org: &other, ..ctx };
    let (other_key, other_wrapped) = keys.generate_data_key(&other_ctx).await.unwrap();
    keys.delete_org_key(&acme).await.expect("delete an organisation key");
    assert!(keys.decrypt_data_key(&ctx, &wrapped).await.is_err(), "a deleted organisation's data keys do not open");
    assert!(keys.generate_data_key(&ctx).await.is_err(), "a deleted organisation gets no new data keys");
    let still = keys.decrypt_data_key(&other_ctx, &other_wrapped).await.expect("other organisations keep their keys");
    assert_eq!(&still[..], &other_key[..]);
}
