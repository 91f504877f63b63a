//! The AWS adapters against moto in server mode: the same Store and Keys conformance as the embedded ones, the
//! same one-refresh-under-200-callers guarantee on DynamoDB, and Secrets Manager app registrations.

use std::sync::Arc;
use std::time::Duration;

use chainkeeper::app::App;
use chainkeeper::aws::dynamo::DynamoStore;
use chainkeeper::aws::kms::KmsKeys;
use chainkeeper::aws::secrets::SecretsManager;
use chainkeeper::clock::{Clock, ManualClock};
use chainkeeper::config::Config;
use chainkeeper::ids::{Alias, ContainerRef, DbName, OrgId};
use chainkeeper::keys::{CacheLimits, Context, KeyError, Keys, Vault};
use chainkeeper::secrets::{LocalSecrets, Secrets};
use chainkeeper::store::Store;
use chainkeeper_e2e::exact::{CLIENT_ID, CLIENT_SECRET, T0, sim_app_toml, sim_profile_toml};
use chainkeeper_e2e::moto::Moto;
use exact_sim::{ExactSim, SimApp, SimClock, SimConfig};
use secrecy::ExposeSecret;

async fn dynamo(moto: &Moto, clock: &ManualClock) -> Arc<DynamoStore> {
    let sdk = chainkeeper::aws::local_sdk_config(&moto.endpoint).await;
    let table = format!("chainkeeper-{}", chainkeeper::ids::random_id().to_lowercase().replace(['-', '_'], "x"));
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table, Arc::new(clock.clone()));
    store.create_table().await.expect("create table in moto");
    Arc::new(store)
}

async fn kms(moto: &Moto) -> Arc<KmsKeys> {
    let sdk = chainkeeper::aws::local_sdk_config(&moto.endpoint).await;
    Arc::new(KmsKeys::new(aws_sdk_kms::Client::new(&sdk), "test".into(), "alias/chainkeeper/test/".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_store_conforms() {
    let moto = Moto::start().await.unwrap();
    let clock = ManualClock::new(T0);
    let store = dynamo(&moto, &clock).await;
    chainkeeper::store::conformance::run(store.clone(), clock.clone(), "t").await;

    // Items that expire carry DynamoDB's TTL attribute (`expires_at`, a Number of epoch seconds, as the template's
    // TimeToLiveSpecification names it), so AWS deletes them; items that do not expire carry none.
    use chainkeeper::store::{Condition, Key, Put};
    let at = clock.now_ms() + 90_500;
    store
        .put(Put::new(Key::new("ttl#x", "authz"), b"{}".to_vec(), Condition::Absent).expires_at(Some(at)))
        .await
        .unwrap();
    store.put(Put::new(Key::new("ttl#y", "meta"), b"{}".to_vec(), Condition::Absent)).await.unwrap();
    let sdk = chainkeeper::aws::local_sdk_config(&moto.endpoint).await;
    let raw = |pk: &'static str, sk: &'static str| {
        let client = aws_sdk_dynamodb::Client::new(&sdk);
        let table = store.table().to_string();
        async move {
            use aws_sdk_dynamodb::types::AttributeValue;
            client
                .get_item()
                .table_name(table)
                .key("pk", AttributeValue::S(pk.into()))
                .key("sk", AttributeValue::S(sk.into()))
                .send()
                .await
                .unwrap()
                .item
                .unwrap()
        }
    };
    let expiring = raw("ttl#x", "authz").await;
    let ttl: i64 = expiring["expires_at"].as_n().expect("expires_at is a Number").parse().unwrap();
    assert_eq!(ttl, at / 1000 + 1, "epoch seconds, rounded up so an item is never deleted early");
    assert!(
        !raw("ttl#y", "meta").await.contains_key("expires_at"),
        "an item that does not expire has no TTL attribute"
    );
}

/// An SDK retry of a conditional write that DynamoDB had already applied meets its own write: moto returns the
/// item (`ReturnValuesOnConditionCheckFailure = ALL_OLD`), the adapter recognises its write id and answers as the
/// first attempt would have; a different write at that version (even of the same bytes) is still a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_retried_conditional_writes_that_had_succeeded_are_ours() {
    use chainkeeper::store::{Condition, IndexKey, Key, Put, StoreError, WriteOp};
    let moto = Moto::start().await.unwrap();
    let clock = ManualClock::new(T0);
    let store = dynamo(&moto, &clock).await;
    let key = Key::new("chain#acme#finance#eol", "chain");
    let with_due = |body: &[u8], c| {
        let mut p = Put::new(key.clone(), body.to_vec(), c);
        p.due = Some(IndexKey { pk: "due".into(), sk: "0001800000600000#x".into() });
        p
    };
    store.send_every_write_twice(true);
    assert_eq!(store.put(with_due(b"A", Condition::Absent)).await.unwrap(), 1, "a create retried: ours");
    assert_eq!(store.put(with_due(b"B", Condition::Version(1))).await.unwrap(), 2, "an update retried: ours");
    let item = store.get(&key).await.unwrap().unwrap();
    assert_eq!((item.version, &item.body[..]), (2, &b"B"[..]), "written once, not twice");
    // Another writer's item at the version we expected is no success of ours, even with the very same bytes.
    store.send_every_write_twice(false);
    assert!(matches!(store.put(with_due(b"C", Condition::Version(1))).await, Err(StoreError::Conflict)));
    assert!(matches!(store.put(with_due(b"B", Condition::Version(1))).await, Err(StoreError::Conflict)));
    assert!(matches!(store.put(with_due(b"A", Condition::Absent)).await, Err(StoreError::Conflict)));
    // A transaction retried after it was applied: ours too; a genuinely failed one is still a conflict.
    store.send_every_write_twice(true);
    let other = Key::new("chain#acme#finance#eol", "rescue#1");
    let tx = vec![
        WriteOp::Put(with_due(b"D", Condition::Version(2))),
        WriteOp::Put(Put::new(other.clone(), b"R".to_vec(), Condition::Absent)),
    ];
    store.transact(tx).await.expect("a retried transaction that had been applied is ours");
    assert_eq!(store.get(&key).await.unwrap().unwrap().version, 3);
    assert_eq!(store.get(&other).await.unwrap().unwrap().body, b"R");
    store.send_every_write_twice(false);
    let stale = vec![WriteOp::Put(with_due(b"E", Condition::Version(2)))];
    assert!(matches!(store.transact(stale).await, Err(StoreError::Conflict)));
    assert_eq!(store.get(&key).await.unwrap().unwrap().body, b"D", "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_keys_conform_bind_ciphertexts_and_shred_on_delete() {
    let moto = Moto::start().await.unwrap();
    let keys: Arc<dyn Keys> = kms(&moto).await;
    chainkeeper::keys::conformance::run(keys.clone(), "conf").await;
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    keys.create_org_key("acme").await.unwrap();
    keys.create_org_key("acme").await.expect("idempotent");
    keys.create_org_key("other").await.unwrap();
    let vault = Vault::new(keys.clone(), clock.clone(), CacheLimits::default());
    let ctx = Context { org: "acme", container: "finance/eol", field: "refresh_token" };
    let sealed = vault.seal(&ctx, b"rt-PLANTED").await.unwrap();
    // A fresh vault (no cache) opens it through KMS with the same context, and nothing else.
    let fresh = Vault::new(keys.clone(), clock.clone(), CacheLimits::default());
    assert_eq!(&fresh.open(&ctx, &sealed).await.unwrap()[..], b"rt-PLANTED");
    for wrong in [
        Context { org: "other", ..ctx },
        Context { container: "finance/yuki", ..ctx },
        Context { field: "access_token", ..ctx },
    ] {
        let v = Vault::new(keys.clone(), clock.clone(), CacheLimits::default());
        assert!(v.open(&wrong, &sealed).await.is_err(), "{wrong:?} must not open");
    }
    keys.delete_org_key("acme").await.unwrap();
    let after = Vault::new(keys.clone(), clock.clone(), CacheLimits::default());
    assert!(
        matches!(after.open(&ctx, &sealed).await, Err(KeyError::NoOrgKey(_)) | Err(KeyError::Decrypt)),
        "the organisation's key is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_holds_app_registrations_and_the_signing_key() {
    let moto = Moto::start().await.unwrap();
    let sdk = chainkeeper::aws::local_sdk_config(&moto.endpoint).await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    sm.create_secret()
        .name("chainkeeper/apps/exact-online-nl")
        .secret_string(r#"{"client_id":"app","client_secret":"app-secret-PLANTED","redirect_uri":"https://ck.example/v1/callback"}"#)
        .send()
        .await
        .unwrap();
    sm.create_secret().name("chainkeeper/test/signing").secret_string("x".repeat(64)).send().await.unwrap();
    let secrets = SecretsManager::new(
        sm.clone(),
        "chainkeeper/apps/".into(),
        Some("chainkeeper/test/signing".into()),
        Arc::new(ManualClock::new(T0)),
    );
    let app = secrets.app("exact-online-nl").await.unwrap().expect("registered");
    assert_eq!(app.client_id, "app");
    assert_eq!(app.client_secret.expose_secret(), "app-secret-PLANTED");
    assert!(!format!("{app:?}").contains("PLANTED"));
    assert!(secrets.app("twinfield").await.unwrap().is_none(), "an unregistered provider has no app");
    assert_eq!(secrets.signing_keys().await.unwrap().current.len(), 64);
    // The scheduled functions are not given the signing key's secret (nor may they read it).
    let unsigned = SecretsManager::new(sm, "chainkeeper/apps/".into(), None, Arc::new(ManualClock::new(T0)));
    assert!(unsigned.app("exact-online-nl").await.unwrap().is_some());
    assert!(unsigned.signing_keys().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_rotation_in_secrets_manager_keeps_the_previous_version_for_its_window() {
    use chainkeeper::auth::{Claims, issue, verify_any};
    let moto = Moto::start().await.unwrap();
    let sdk = chainkeeper::aws::local_sdk_config(&moto.endpoint).await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let id = "chainkeeper/test/api-token-signing-key";
    let (v1, v2, v3) = ("1".repeat(48), "2".repeat(48), "3".repeat(48));
    sm.create_secret().name(id).secret_string(&v1).send().await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // A fresh adapter each time: the adapter caches the keys for a minute.
    let adapter = |window_ms| {
        SecretsManager::new(sm.clone(), "chainkeeper/apps/".into(), Some(id.into()), Arc::new(ManualClock::new(now)))
            .with_rotation_window_ms(window_ms)
    };
    let keys = adapter(3_600_000).signing_keys().await.unwrap();
    assert_eq!(keys.current.as_slice(), v1.as_bytes());
    assert!(keys.previous.is_none(), "no rotation yet");
    let claims = Claims {
        sub: "a".into(),
        org: None,
        scopes: vec!["admin".into()],
        exp: now / 1000 + 600,
        iat: now / 1000,
        jti: "j".into(),
    };
    let before = issue(&keys.current, &claims).unwrap();

    // Rotation as a deployer does it: `aws secretsmanager put-secret-value` moves AWSCURRENT to the new version
    // and AWSPREVIOUS to the old one.
    sm.put_secret_value().secret_id(id).secret_string(&v2).send().await.unwrap();
    let keys = adapter(3_600_000).signing_keys().await.unwrap();
    assert_eq!(keys.current.as_slice(), v2.as_bytes());
    let previous = keys.previous.as_ref().expect("the previous version is kept");
    assert_eq!(previous.key.as_slice(), v1.as_bytes());
    assert!((previous.accepted_until_ms - (now + 3_600_000)).abs() < 120_000, "window from the rotation");
    assert!(verify_any(&keys.accepted(now), &before, now).is_ok(), "a token of before is accepted in the window");
    assert!(verify_any(&keys.accepted(now + 3_700_000), &before, now).is_err(), "and refused after it");
    // With no window the previous key is refused at once.
    let keys = adapter(0).signing_keys().await.unwrap();
    assert!(verify_any(&keys.accepted(now), &before, now).is_err());

    // A second rotation: the first key is in no stage any more.
    sm.put_secret_value().secret_id(id).secret_string(&v3).send().await.unwrap();
    let keys = adapter(3_600_000).signing_keys().await.unwrap();
    assert_eq!(keys.current.as_slice(), v3.as_bytes());
    assert_eq!(keys.previous.as_ref().unwrap().key.as_slice(), v2.as_bytes());
    assert!(verify_any(&keys.accepted(now), &before, now).is_err(), "the retired key's token is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organisation_exported_from_one_table_imports_into_another_under_its_kms_key() {
    use chainkeeper::app::backup::BackupError;
    use chainkeeper::app::containers::{Credentials, NewContainer};
    use chainkeeper::keys::{ContainerFields, Field};
    use chainkeeper::records::{ContainerRecord, CredentialKind, container_key, decode};
    let moto = Moto::start().await.unwrap();
    let clock = ManualClock::new(T0);
    let app_on = |store: Arc<dyn Store>, keys: Arc<dyn Keys>| {
        let secrets: Arc<dyn Secrets> = Arc::new(LocalSecrets::new(Default::default(), [4u8; 32]));
        App::new(store, keys, secrets, Arc::new(clock.clone()), Config::load(None).unwrap())
    };
    let a = app_on(dynamo(&moto, &clock).await, kms(&moto).await);
    let org = OrgId::parse("acme").unwrap();
    let c =
        ContainerRef { org: org.clone(), db: DbName::parse("finance").unwrap(), alias: Alias::parse("sql").unwrap() };
    a.orgs.create("t", &org, None).await.unwrap();
    a.orgs.create_db("t", &org, &c.db, None).await.unwrap();
    let new = NewContainer { kind: CredentialKind::Password, provider: None, scopes: None };
    a.containers.create("t", &c, new).await.unwrap();
    let given = Credentials {
        username: Some("reporting".into()),
        password: Some(secrecy::SecretString::from("pw-aws-PLANTED")),
        ..Default::default()
    };
    a.containers.set_credentials("t", &c, given).await.unwrap();
    let file = a.backup.export("t", &org).await.unwrap();
    assert!(!file.contains("PLANTED") && !file.contains("reporting"), "sealed");
    assert!(!file.contains("org_key_item"), "on AWS the key stays in KMS: {}", &file[..200.min(file.len())]);

    // Another table in the same account: the organisation's KMS key (by its alias) opens the file.
    let b = app_on(dynamo(&moto, &clock).await, kms(&moto).await);
    let done = b.backup.import("t", &file, Some(&org)).await.unwrap();
    assert_eq!(done.containers, 1);
    let rec: ContainerRecord = decode(&b.store.get(&container_key(&c)).await.unwrap().unwrap()).unwrap();
    let pw = b
        .vault
        .open_string(&ContainerFields::of(&c).context(Field::Password), rec.sealed_password.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(pw.expose_secret(), "pw-aws-PLANTED");
    assert!(matches!(b.backup.import("t", &file, None).await, Err(BackupError::Exists(_))));
    // A deployment whose KMS has no key for the organisation cannot open it.
    let other_stage = {
        let sdk = chainkeeper::aws::local_sdk_config(&moto.endpoint).await;
        Arc::new(KmsKeys::new(aws_sdk_kms::Client::new(&sdk), "other".into(), "alias/chainkeeper/other/".into()))
    };
    let elsewhere = app_on(dynamo(&moto, &clock).await, other_stage);
    assert!(matches!(elsewhere.backup.import("t", &file, None).await, Err(BackupError::Unreadable(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_callers_cause_one_refresh_on_dynamodb_and_kms() {
    let moto = Moto::start().await.unwrap();
    let clock = ManualClock::new(T0);
    let sim = ExactSim::start(
        SimConfig {
            apps: vec![SimApp {
                client_id: CLIENT_ID.into(),
                client_secret: CLIENT_SECRET.into(),
                redirect_uris: vec![],
            }],
            ..SimConfig::default()
        },
        SimClock::new(T0),
    )
    .await
    .unwrap();
    let config =
        Config::from_toml(&format!("{}{}", sim_profile_toml(&sim), sim_app_toml("http://127.0.0.1:1/v1/callback")))
            .unwrap();
    let store: Arc<dyn Store> = dynamo(&moto, &clock).await;
    let keys: Arc<dyn Keys> = kms(&moto).await;
    let secrets: Arc<dyn Secrets> = Arc::new(LocalSecrets::new(config.apps.clone(), [3u8; 32]));
    let services = App::new(store, keys.clone(), secrets, Arc::new(clock.clone()), config);
    keys.create_org_key("acme").await.unwrap();
    let c = ContainerRef {
        org: OrgId::parse("acme").unwrap(),
        db: DbName::parse("finance").unwrap(),
        alias: Alias::parse("eol").unwrap(),
    };
    let (access, refresh) = sim.mint_tokens(CLIENT_ID, exact_sim::DEFAULT_USER_ID);
    let tokens = chainkeeper::provider::oauth::TokenSet {
        access_token: secrecy::SecretString::from(access),
        refresh_token: Some(secrecy::SecretString::from(refresh)),
        expires_in: Some(600.0),
        scope: None,
    };
    services.engine.install(&c, "exact-online-nl", &tokens).await.unwrap();
    clock.advance(Duration::from_secs(601));
    sim.clock().advance(Duration::from_secs(601));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let engine = services.engine.clone();
            let c = c.clone();
            tokio::spawn(async move { engine.access_token(&c).await.map(|t| t.token.expose_secret().to_string()) })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        seen.insert(t.await.unwrap().expect("every caller gets a token"));
    }
    assert_eq!(sim.stats().refresh_requests, 1, "exactly one refresh reached Exact");
    assert_eq!(seen.len(), 1, "every caller got the same token");
    assert_eq!(sim.stats().invalid_grant, 0);
}

/// What `sam deploy` and the operator set up, on moto: the table, the signing-key secret, the app registration in
/// Secrets Manager, a config file pointing the Exact profile at the simulator (plus `extra_profile` keys), the
/// functions' environment, and the first platform token.
struct Deployment {
    _moto: Moto,
    sdk: aws_config::SdkConfig,
    sim: ExactSim,
    table: String,
    env: Vec<(&'static str, String)>,
    token: String,
    _dir: tempfile::TempDir,
}

impl Deployment {
    async fn start(extra_profile: &str) -> Deployment {
        let moto = Moto::start().await.unwrap();
        let sdk = chainkeeper::aws::local_sdk_config(&moto.endpoint).await;
        let redirect = "https://ck.example/v1/callback";
        let sim_config = SimConfig {
            apps: vec![SimApp {
                client_id: CLIENT_ID.into(),
                client_secret: CLIENT_SECRET.into(),
                redirect_uris: vec![redirect.into()],
            }],
            ..SimConfig::default()
        };
        let sim = ExactSim::start(sim_config, SimClock::system()).await.unwrap();

        // What `sam deploy` creates: the table, the signing-key secret, and the operator's app registration.
        let chainkeeper_e2e::moto::DeployedBasics { table, signing, .. } =
            chainkeeper_e2e::moto::deploy_basics(&sdk, redirect).await;
        // The operator's config file points the Exact profile at the simulator (no app in it: that is in Secrets
        // Manager).
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("chainkeeper.toml");
        std::fs::write(&config, format!("{}{extra_profile}\n", sim_profile_toml(&sim))).unwrap();
        let mut env = chainkeeper_e2e::moto::function_env(&moto, &table, &config);
        env.push(("CHAINKEEPER_SIGNING_KEY_SECRET", chainkeeper_e2e::moto::SIGNING_KEY_SECRET.to_string()));
        let token = chainkeeper_e2e::moto::platform_token_from_secret(&signing);
        Deployment { _moto: moto, sdk, sim, table, env, token, _dir: dir }
    }

    /// One of the function binaries, started as Lambda starts it (`AWS_LAMBDA_RUNTIME_API`).
    async fn function(&self, name: &str) -> chainkeeper_e2e::lambda_runtime::LocalLambda {
        let bin = chainkeeper_e2e::cli_bin().with_file_name(name);
        assert!(
            bin.exists(),
            "{} is missing: cargo build --workspace --features chainkeeper-e2e/aws,chainkeeper-cli/aws",
            bin.display()
        );
        chainkeeper_e2e::lambda_runtime::LocalLambda::start(&bin, &self.env).await.unwrap()
    }

    /// `manage` creates `acme/finance/eol` (Exact); the default simulator user signs in through `callback`.
    async fn sign_in(&self, manage: &chainkeeper_e2e::lambda_runtime::LocalLambda) {
        use chainkeeper_e2e::lambda_runtime::http_event;
        let token = Some(self.token.as_str());
        for (path, body) in [
            ("/v1/orgs", r#"{"name":"acme"}"#),
            ("/v1/orgs/acme/databases", r#"{"name":"finance"}"#),
            (
                "/v1/orgs/acme/databases/finance/containers",
                r#"{"alias":"eol","kind":"oauth2_code","provider":"exact-online-nl"}"#,
            ),
        ] {
            let r = manage.invoke(http_event("POST", path, token, Some(body))).await.unwrap();
            assert_eq!(r["statusCode"], 201, "{path}: {r}");
        }
        // A person signs in: `callback` starts the authorization and takes the redirect.
        let callback = self.function("callback").await;
        let r = callback
            .invoke(http_event("POST", "/v1/orgs/acme/databases/finance/containers/eol/authorize", token, None))
            .await
            .unwrap();
        assert_eq!(r["statusCode"], 200, "{r}");
        let authorize_url = lambda_body(&r)["authorize_url"].as_str().unwrap().to_string();
        let totp = self.sim.totp_now(exact_sim::DEFAULT_USERNAME);
        let back = exact_sim::browser::login(
            &authorize_url,
            exact_sim::DEFAULT_USERNAME,
            exact_sim::DEFAULT_PASSWORD,
            totp.as_deref(),
        )
        .await
        .expect("sign in at the simulator");
        let back = url::Url::parse(&back).unwrap();
        assert_eq!(back.path(), "/v1/callback");
        let r = callback
            .invoke(http_event("GET", &format!("/v1/callback?{}", back.query().unwrap()), None, None))
            .await
            .unwrap();
        assert_eq!(r["statusCode"], 200, "{r}");
    }
}

/// The JSON body of a function's API Gateway answer.
fn lambda_body(v: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(v["body"].as_str().unwrap_or("null")).unwrap_or(serde_json::Value::Null)
}

/// The five function binaries, started the way Lambda starts them (`AWS_LAMBDA_RUNTIME_API`), on DynamoDB, KMS
/// and Secrets Manager served by moto: an organisation gets its own KMS key, a person signs in at the Exact
/// simulator through `callback`, `query` hands out the token, and what DynamoDB holds is sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_serve_lambda_events_on_dynamodb_kms_and_secrets_manager() {
    use chainkeeper_e2e::lambda_runtime::{LocalLambda, http_event, scheduled_event};

    let d = Deployment::start("").await;
    let (sim, sdk, table, token) = (&d.sim, &d.sdk, &d.table, &d.token);
    let body = lambda_body;
    let manage = d.function("manage").await;
    d.sign_in(&manage).await;
    // The organisation's key is a KMS key under the stage's alias, tagged for this stage.
    let kms = aws_sdk_kms::Client::new(sdk);
    let key = kms
        .describe_key()
        .key_id("alias/chainkeeper/test/acme")
        .send()
        .await
        .expect("the organisation's KMS key exists");
    let key_id = key.key_metadata.unwrap().key_id;
    let tags = kms.list_resource_tags().key_id(&key_id).send().await.unwrap();
    assert!(
        tags.tags().iter().any(|t| t.tag_key == "chainkeeper-stage" && t.tag_value == "test"),
        "the key carries the stage tag the IAM policies require: {:?}",
        tags.tags()
    );

    // `query` hands out the access token the simulator issued.
    let query = d.function("query").await;
    let r = query
        .invoke(http_event("POST", "/v1/orgs/acme/databases/finance/containers/eol/token", Some(token), None))
        .await
        .unwrap();
    assert_eq!(r["statusCode"], 200, "{r}");
    let access = body(&r)["access_token"].as_str().expect("an access token").to_string();
    assert_eq!(sim.stats().code_requests, 1, "one code exchange reached Exact");

    // DynamoDB holds the chain, sealed: neither token appears in any item.
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    let items = ddb.scan().table_name(table).send().await.unwrap();
    let dump = format!("{:?}", items.items());
    assert!(items.items().len() >= 4, "organisation, database, container and chain are in DynamoDB: {dump}");
    assert!(!dump.contains(&access), "the access token is stored sealed");
    chainkeeper_e2e::assert_no_planted_secret("DynamoDB items", &dump);

    // The manage function sees the container as healthy with the signed-in user (masked view).
    let r = manage
        .invoke(http_event("GET", "/v1/orgs/acme/databases/finance/containers/eol", Some(token), None))
        .await
        .unwrap();
    assert_eq!(r["statusCode"], 200, "{r}");
    let view = body(&r);
    assert_eq!(view["status"], "healthy", "{view}");
    assert!(!view.to_string().contains(&access));

    // The scheduled functions take EventBridge events, twice without harm.
    // As in the template, the scheduled functions get no signing-key secret.
    let scheduled_env: Vec<(&str, String)> =
        d.env.iter().filter(|(k, _)| *k != "CHAINKEEPER_SIGNING_KEY_SECRET").cloned().collect();
    let function = |name: &str| chainkeeper_e2e::cli_bin().with_file_name(name);
    let refresh = LocalLambda::start(&function("refresh"), &scheduled_env).await.unwrap();
    let recover = LocalLambda::start(&function("recover"), &scheduled_env).await.unwrap();
    for _ in 0..2 {
        let r = refresh.invoke(scheduled_event()).await.expect("the sweep runs");
        assert!(r.get("due").is_some(), "{r}");
        let r = recover.invoke(scheduled_event()).await.expect("the recovery run runs");
        assert_eq!(r["needs_repair"], 0, "{r}");
    }
    assert_eq!(sim.stats().invalid_grant, 0, "no chain was broken");

    // Deleting the container, the database and the organisation: the chain's items go, the identifier is
    // released, and the organisation's KMS key is scheduled for deletion (crypto-shredding).
    for path in ["/v1/orgs/acme/databases/finance/containers/eol", "/v1/orgs/acme/databases/finance", "/v1/orgs/acme"] {
        let r = manage.invoke(http_event("DELETE", path, Some(token), None)).await.unwrap();
        assert_eq!(r["statusCode"], 204, "DELETE {path}: {r}");
    }
    let state = kms.describe_key().key_id(&key_id).send().await.unwrap().key_metadata.unwrap().key_state;
    assert_eq!(state, Some(aws_sdk_kms::types::KeyState::PendingDeletion), "the organisation's key is shredded");
    assert!(kms.describe_key().key_id("alias/chainkeeper/test/acme").send().await.is_err(), "its alias is gone");
    let left = format!("{:?}", ddb.scan().table_name(table).send().await.unwrap().items());
    assert!(!left.contains("chain#acme#finance#eol"), "the chain's items are removed: {left}");
    assert!(!left.contains("ident#"), "the single-instance identifier is released: {left}");

    for (name, f) in [("manage", &manage), ("query", &query), ("refresh", &refresh), ("recover", &recover)] {
        eprintln!("{name}: init {:?} on DynamoDB/KMS/Secrets Manager (debug build)", f.init_duration().unwrap());
    }
}

/// The web console through the `manage` function (as API Gateway's `/console/{proxy+}` events reach it): a
/// sign-in link made with `chainkeeper console-link --aws`, used once, and the organisation's page rendered from
/// DynamoDB with the session cookie (https: `__Host-`, `Secure`) and the CSP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_and_renders_through_the_manage_function() {
    use chainkeeper_e2e::lambda_runtime::http_event;
    let d = Deployment::start("").await;
    let manage = d.function("manage").await;
    let r = manage.invoke(http_event("POST", "/v1/orgs", Some(&d.token), Some(r#"{"name":"acme"}"#))).await.unwrap();
    assert_eq!(r["statusCode"], 201, "{r}");
    let out = std::process::Command::new(chainkeeper_e2e::cli_bin())
        .args(["console-link", "--aws", "--org", "acme", "--scope", "admin"])
        .env_remove("CHAINKEEPER_DATA_DIR")
        .envs(d.env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("AWS_REGION", "eu-west-1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "console-link --aws (built with --features chainkeeper-cli/aws?): {err}");
    let link = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(link.starts_with("https://ck.example/console/signin/link?t="), "{link}");
    let token = link.split("t=").nth(1).unwrap();

    let html = |method: &str, path: &str, cookie: Option<&str>, body: Option<&str>| {
        let mut e = http_event(method, path, None, body);
        e["headers"]["accept"] = serde_json::json!("text/html");
        e["headers"]["content-type"] = serde_json::json!("application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            e["cookies"] = serde_json::json!([c]);
        }
        e
    };
    let r = manage.invoke(html("GET", &format!("/console/signin/link?t={token}"), None, None)).await.unwrap();
    assert_eq!(r["statusCode"], 200, "{r}");
    let r = manage.invoke(html("POST", "/console/signin/link", None, Some(&format!("t={token}")))).await.unwrap();
    assert_eq!(r["statusCode"], 303, "{r}");
    let set = r["cookies"].as_array().and_then(|c| c.first()).and_then(|c| c.as_str()).unwrap_or("").to_string();
    assert!(set.starts_with("__Host-chainkeeper_console=") && set.contains("Secure"), "{r}");
    let cookie = set.split(';').next().unwrap().to_string();
    let r = manage.invoke(html("GET", "/console/orgs/acme", Some(&cookie), None)).await.unwrap();
    assert_eq!(r["statusCode"], 200, "{r}");
    assert!(r["body"].as_str().unwrap_or("").contains("Organisation acme"), "{r}");
    assert!(r["headers"]["content-security-policy"].as_str().unwrap_or("").starts_with("default-src 'none'"), "{r}");
    // Used once.
    let r = manage.invoke(html("POST", "/console/signin/link", None, Some(&format!("t={token}")))).await.unwrap();
    assert_eq!(r["statusCode"], 410, "{r}");
}

/// "In AWS the cache is per warm Lambda instance unless the profile opts into the store": two instances of the
/// `query` function with `cache_in_store`; the second serves the page the first fetched from DynamoDB without a
/// provider call, the item holds none of the rows' text (sealed under the organisation's KMS key), and after the
/// cache time the provider is called again. (Without the opt-in: `bi::with_cache_in_store…`, second half.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_query_instances_share_feed_answers_through_dynamodb_sealed_with_cache_in_store() {
    use chainkeeper_e2e::lambda_runtime::http_event;

    let d = Deployment::start("cache_in_store = true\nodata_cache_ttl_s = 3").await;
    d.sign_in(&d.function("manage").await).await;
    let instances = [d.function("query").await, d.function("query").await];
    let page = format!(
        "/v1/orgs/acme/databases/finance/containers/eol/odata/v1/{}/crm/Accounts?$select=ID,Name&$top=5",
        exact_sim::DEFAULT_DIVISION
    );
    let read = |i: usize| {
        let event = http_event("GET", &page, Some(&d.token), None);
        let instance = &instances[i];
        async move {
            let r = instance.invoke(event).await.unwrap();
            assert_eq!(r["statusCode"], 200, "{r}");
            (r["headers"]["x-chainkeeper-cache"].as_str().unwrap_or("").to_string(), lambda_body(&r))
        }
    };
    let calls = d.sim.stats().api_calls;
    let (first, second) = (read(0).await, read(1).await);
    assert_eq!((first.0.as_str(), second.0.as_str()), ("miss", "hit"));
    assert_eq!(d.sim.stats().api_calls, calls + 1, "the second instance read the page from DynamoDB");
    assert_eq!(first.1, second.1);
    let rows = first.1["d"]["results"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 5);
    assert!(first.1.to_string().contains("https://ck.example/v1/orgs/acme/"), "links through the feed: {}", first.1);

    // The raw DynamoDB item: one per page, with DynamoDB's TTL attribute, none of the rows' text.
    let ddb = aws_sdk_dynamodb::Client::new(&d.sdk);
    let items = ddb.scan().table_name(&d.table).send().await.unwrap();
    let answers: Vec<_> = items
        .items()
        .iter()
        .filter(|i| i.get("pk").and_then(|v| v.as_s().ok()).is_some_and(|pk| pk == "answer#acme#finance#eol"))
        .collect();
    assert_eq!(answers.len(), 1, "{:?}", items.items());
    assert!(answers[0].contains_key("expires_at"), "expires through DynamoDB's TTL: {:?}", answers[0]);
    let body = answers[0]["body"].as_b().unwrap().as_ref();
    let raw = format!("{:?} {}", answers[0], String::from_utf8_lossy(body));
    assert!(raw.contains("sealed_answer"), "{raw}");
    for row in &rows {
        for text in [row["ID"].as_str().unwrap(), row["Name"].as_str().unwrap()] {
            assert!(!raw.contains(text), "{text} is in DynamoDB in plaintext");
        }
    }

    // After the cache time (3 s here): a provider call again, then a hit in the other instance.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let (first, second) = (read(1).await, read(0).await);
    assert_eq!((first.0.as_str(), second.0.as_str()), ("miss", "hit"));
    assert_eq!(d.sim.stats().api_calls, calls + 2, "stale after the cache time, fetched once more");
}

/// The real `chainkeeper` binary with `--aws`, configured like the Lambda functions: `token issue` signs with the
/// key in Secrets Manager and records the token in DynamoDB (so it is listed and revoked by id), and `org export`
/// from one table then `org import` into another moves an organisation under its KMS key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_issues_lists_revokes_tokens_and_moves_an_organisation_with_aws() {
    let moto = Moto::start().await.unwrap();
    let sdk = chainkeeper::aws::local_sdk_config(&moto.endpoint).await;
    let clock: Arc<dyn Clock> = Arc::new(chainkeeper::clock::SystemClock);
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    sm.create_secret().name("chainkeeper/test/signing").secret_string("k".repeat(48)).send().await.unwrap();
    let mut apps = Vec::new();
    for _ in 0..2 {
        let table = format!("ck{}", chainkeeper::ids::random_id().to_lowercase().replace(['-', '_'], "x"));
        let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), table.clone(), clock.clone());
        store.create_table().await.unwrap();
        let keys = KmsKeys::new(aws_sdk_kms::Client::new(&sdk), "test".into(), "alias/chainkeeper/test/".into());
        let signing = Some("chainkeeper/test/signing".to_string());
        let secrets = SecretsManager::new(sm.clone(), "chainkeeper/test/apps/".into(), signing, clock.clone());
        apps.push((
            table,
            App::new(Arc::new(store), Arc::new(keys), Arc::new(secrets), clock.clone(), Config::built_in()),
        ));
    }
    let [(table_a, a), (table_b, b)] = <[_; 2]>::try_from(apps).ok().unwrap();
    let cli = |table: &str, args: &[&str]| {
        let out = std::process::Command::new(chainkeeper_e2e::cli_bin())
            .args(args)
            .env_remove("CHAINKEEPER_DATA_DIR")
            .env("CHAINKEEPER_TABLE", table)
            .env("CHAINKEEPER_SIGNING_KEY_SECRET", "chainkeeper/test/signing")
            .env("CHAINKEEPER_APPS_SECRET_PREFIX", "chainkeeper/test/apps/")
            .env("CHAINKEEPER_KMS_ALIAS_PREFIX", "alias/chainkeeper/test/")
            .env("CHAINKEEPER_STAGE", "test")
            .env("AWS_ENDPOINT_URL", &moto.endpoint)
            .env("AWS_REGION", "eu-west-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "chainkeeper {args:?} (built with --features chainkeeper-cli/aws?): {err}");
        String::from_utf8(out.stdout).unwrap()
    };
    let org = OrgId::parse("acme").unwrap();
    a.orgs.create("t", &org, None).await.unwrap();
    a.orgs.create_db("t", &org, &DbName::parse("finance").unwrap(), None).await.unwrap();

    let token = cli(&table_a, &["token", "issue", "--aws", "--org", "acme", "--scope", "admin", "--subject", "ops"]);
    let claims = a.api_tokens.authenticate(token.trim()).await.expect("the token authenticates on the table");
    assert_eq!((claims.org.as_deref(), claims.sub.as_str()), (Some("acme"), "ops"));
    let listed = cli(&table_a, &["token", "list", "--aws", "--org", "acme"]);
    let ids: Vec<String> = listed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, [claims.jti.as_str()], "recorded under its id: {listed}");
    cli(&table_a, &["token", "revoke", "--aws", "--org", "acme", &claims.jti]);
    assert!(a.api_tokens.authenticate(token.trim()).await.is_err(), "revoked");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.export");
    let file = file.to_str().unwrap();
    cli(&table_a, &["org", "export", "--aws", "--org", "acme", "--out", file]);
    assert!(b.orgs.get(&org).await.is_err(), "not in the second table yet");
    let done: serde_json::Value =
        serde_json::from_str(&cli(&table_b, &["org", "import", "--aws", "--org", "acme", "--in", file])).unwrap();
    assert_eq!(done["org"], "acme", "{done}");
    let dbs = b.orgs.databases(&org).await.unwrap();
    assert_eq!(dbs.iter().map(|d| d.name.to_string()).collect::<Vec<_>>(), ["finance"]);
}
