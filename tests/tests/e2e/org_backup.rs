//! Organisation export and import (`chainkeeper org export` / `org import`): from one data directory into
//! another, sealed under the organisation's key; the imported container hands out tokens and its sealed fields
//! open; a corrupted file, a file of another organisation or a deployment without the organisation's key is
//! refused with a clear error.

use std::path::Path;
use std::time::Duration;

use chainkeeper::config::Config;
use chainkeeper::ids::{Alias, ContainerRef, DbName, OrgId};
use chainkeeper::keys::{ContainerFields, Field};
use chainkeeper::records::{ContainerRecord, container_key, decode};
use chainkeeper::wiring::{DataDir, embedded_system};
use chainkeeper_e2e::exact::serve_processes;
use chainkeeper_e2e::{Api, Serve, cli, cli_bin, container_path, issue_token};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs the CLI expecting failure; returns its standard error.
fn cli_fails(args: &[&str]) -> String {
    let out = std::process::Command::new(cli_bin()).args(args).output().unwrap();
    assert!(!out.status.success(), "chainkeeper {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_organisation_imports_into_another_data_directory_with_tokens_and_sealed_fields_intact() {
    let (sim, apis, serves, a_dir) = serve_processes(1, Duration::ZERO, &[]).await.unwrap();
    let config = a_dir.path().join("chainkeeper.toml");
    // A second container with a sealed password beside the authorized `eol`.
    let r =
        apis[0].post("/v1/orgs/acme/databases/finance/containers", json!({"alias": "sql", "kind": "password"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = apis[0]
        .put(
            &format!("{}/credentials", container_path("acme", "finance", "sql")),
            json!({"username": "reporting", "password": "pw-sql-PLANTED"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let out = a_dir.path().join("acme.export.json");
    cli(&["org", "export", "--data-dir", s(a_dir.path()), "--config", s(&config), "--org", "acme", "--out", s(&out)])
        .unwrap();
    let file = std::fs::read_to_string(&out).unwrap();
    assert!(!file.contains("PLANTED"), "no secret in the clear");
    assert!(!file.contains("reporting"), "the body is sealed: not even a username shows");
    let header: Value = serde_json::from_str(&file).unwrap();
    assert_eq!(header["format"], "chainkeeper-org-export/1");
    assert_eq!(header["org"], "acme");
    drop(serves); // the source is gone; only the file and the master key travel

    // Another data directory with the source's master key (embedded mode: the organisation's key is wrapped by it).
    let b_dir = tempfile::tempdir().unwrap();
    std::fs::copy(a_dir.path().join("master.key"), b_dir.path().join("master.key")).unwrap();
    let done = cli(&[
        "org",
        "import",
        "--data-dir",
        s(b_dir.path()),
        "--config",
        s(&config),
        "--in",
        s(&out),
        "--org",
        "acme",
    ])
    .unwrap();
    let done: Value = serde_json::from_str(&done).unwrap();
    assert_eq!(done["org"], "acme");
    assert_eq!(done["containers"], 2, "{done}");
    // A second import finds the organisation there and changes nothing.
    let err = cli_fails(&["org", "import", "--data-dir", s(b_dir.path()), "--config", s(&config), "--in", s(&out)]);
    assert!(err.contains("already exists"), "{err}");

    // The imported container hands out a token that the platform accepts, through a `serve` on the new directory.
    let b = Serve::start(b_dir.path(), Some(&config)).await.unwrap();
    let token = issue_token(b_dir.path(), &["--platform"], &["admin"]);
    let api = Api::new(&b.base, &token);
    let r = api.post(&format!("{}/token", container_path("acme", "finance", "eol")), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let me = reqwest::Client::new()
        .get(format!("{}/api/v1/current/Me", sim.base_url))
        .bearer_auth(r.body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "the handed-out token works at the platform");
    let r = api.get(&container_path("acme", "finance", "sql")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["credential"]["password"], "configured", "{}", r.body);
    // The sealed password opens in the new directory to exactly what was stored.
    let app = embedded_system(&DataDir::open(b_dir.path()).unwrap(), Config::load(Some(&config)).unwrap()).unwrap();
    let c = ContainerRef {
        org: OrgId::parse("acme").unwrap(),
        db: DbName::parse("finance").unwrap(),
        alias: Alias::parse("sql").unwrap(),
    };
    let rec: ContainerRecord = decode(&app.store.get(&container_key(&c)).await.unwrap().unwrap()).unwrap();
    let pw = app
        .vault
        .open_string(&ContainerFields::of(&c).context(Field::Password), rec.sealed_password.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(pw.expose_secret(), "pw-sql-PLANTED");
    assert_eq!(rec.username.as_deref(), Some("reporting"));
    drop(b);

    // Refusals, each with a clear error and nothing imported.
    let c_dir = tempfile::tempdir().unwrap();
    std::fs::copy(a_dir.path().join("master.key"), c_dir.path().join("master.key")).unwrap();
    let import_c = |file: &Path, org: &str| {
        cli_fails(&["org", "import", "--data-dir", s(c_dir.path()), "--in", s(file), "--org", org])
    };
    let err = import_c(&out, "other");
    assert!(err.contains("holds organisation 'acme', not 'other'"), "{err}");
    // A corrupted body: one character of the sealed body changed.
    let mut bad: Value = header.clone();
    let body = bad["sealed_body"].as_str().unwrap().to_string();
    let at = body.len() / 2;
    let flipped = if &body[at..at + 1] == "A" { "B" } else { "A" };
    bad["sealed_body"] = Value::String(format!("{}{flipped}{}", &body[..at], &body[at + 1..]));
    let corrupted = c_dir.path().join("corrupted.json");
    std::fs::write(&corrupted, bad.to_string()).unwrap();
    let err = import_c(&corrupted, "acme");
    assert!(err.contains("does not open"), "{err}");
    // A file whose header was changed to name another organisation does not open under that name either.
    let mut renamed = header.clone();
    renamed["org"] = Value::String("globex".into());
    let renamed_file = c_dir.path().join("renamed.json");
    std::fs::write(&renamed_file, renamed.to_string()).unwrap();
    let err = import_c(&renamed_file, "globex");
    assert!(err.contains("does not open"), "{err}");
    let not_export = c_dir.path().join("not.json");
    std::fs::write(&not_export, "{\"hello\": 1}").unwrap();
    let err = import_c(&not_export, "acme");
    assert!(err.contains("not a chainkeeper organisation export"), "{err}");
    // A data directory with another master key does not hold the organisation's key.
    let d_dir = tempfile::tempdir().unwrap();
    let err = cli_fails(&["org", "import", "--data-dir", s(d_dir.path()), "--in", s(&out)]);
    assert!(err.contains("does not open"), "{err}");
    // None of the refused imports left an organisation behind.
    for dir in [c_dir.path(), d_dir.path()] {
        let app = embedded_system(&DataDir::open(dir).unwrap(), Config::load(None).unwrap()).unwrap();
        assert!(app.orgs.get(&OrgId::parse("acme").unwrap()).await.is_err());
        assert!(app.orgs.get(&OrgId::parse("globex").unwrap()).await.is_err());
    }
}
