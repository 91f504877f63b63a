//! The command line is a contract: operators and tests script it.

use chainkeeper_e2e::{cli, issue_token};

#[test]
fn help_names_every_flag() {
    let top = cli(&["--help"]).unwrap();
    for word in ["serve", "token", "sweep"] {
        assert!(top.contains(word), "--help mentions {word}: {top}");
    }
    let serve = cli(&["serve", "--help"]).unwrap();
    for flag in
        ["--listen", "--data-dir", "--config", "CHAINKEEPER_LISTEN", "CHAINKEEPER_DATA_DIR", "CHAINKEEPER_CONFIG"]
    {
        assert!(serve.contains(flag), "serve --help explains {flag}: {serve}");
    }
    let issue = cli(&["token", "issue", "--help"]).unwrap();
    for flag in ["--data-dir", "--signing-key-stdin", "--platform", "--org", "--scope", "--expires-in", "--subject"] {
        assert!(issue.contains(flag), "token issue --help explains {flag}: {issue}");
    }
}

#[test]
fn token_issue_prints_one_token_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&["token", "issue", "--data-dir", dir.path().to_str().unwrap(), "--org", "Acme", "--scope", "admin"])
        .unwrap();
    assert_eq!(out.lines().count(), 1, "exactly one line: {out:?}");
    let token = out.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    // The payload names the organisation (lower case: names are case-insensitive) and the scope.
    use base64::Engine;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(claims["org"], "acme");
    assert_eq!(claims["scopes"][0], "admin");
    // The signing key was created private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("signing.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Same key next time: a second token from the same directory verifies against the same key.
    let second = issue_token(dir.path(), &["--platform"], &["admin"]);
    assert_ne!(second, token);
}

#[test]
fn token_issue_needs_an_owner_and_a_scope() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(cli(&["token", "issue", "--data-dir", d, "--scope", "admin"]).is_err(), "needs --platform or --org");
    assert!(cli(&["token", "issue", "--data-dir", d, "--platform"]).is_err(), "needs --scope");
    assert!(cli(&["token", "issue", "--data-dir", d, "--org", "not a name", "--scope", "admin"]).is_err());
}

#[test]
fn token_issue_signs_with_a_key_read_from_standard_input() {
    use std::io::Write;
    let key = "k".repeat(48);
    let run = |input: &str| {
        let mut child = std::process::Command::new(chainkeeper_e2e::cli_bin())
            .args(["token", "issue", "--signing-key-stdin", "--org", "acme", "--scope", "admin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&format!("{key}\n"));
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = chainkeeper::auth::verify(
        key.as_bytes(),
        token.trim(),
        chainkeeper::clock::Clock::now_ms(&chainkeeper::clock::SystemClock),
    )
    .expect("signed with the key's text, without the newline");
    assert_eq!(claims.org.as_deref(), Some("acme"));
    let short = run("too-short\n");
    assert!(!short.status.success(), "a short key is refused");
    let err = String::from_utf8(short.stderr).unwrap();
    assert!(
        err.contains("at least 32 characters") && !err.contains("too-short"),
        "says why, never echoes the key: {err}"
    );
}
