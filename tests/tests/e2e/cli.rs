//! The command line is a contract: operators and tests script it.

use chainkeeper_e2e::{cli, issue_token};

#[test]
fn help_names_every_flag() {
    let top = cli(&["--help"]).unwrap();
    for word in ["serve", "token", "sweep"] {
        assert!(top.contains(word), "--help mentions {word}: {top}");
    }
    let serve = cli(&["serve", "--help"]).unwrap();
    for flag in ["--listen", "--data-dir", "--config", "CHAINKEEPER_LISTEN", "CHAINKEEPER_DATA_DIR", "CHAINKEEPER_CONFIG"] {
        assert!(serve.contains(flag), "serve --help explains {flag}: {serve}");
    }
    let issue = cli(&["token", "issue", "--help"]).unwrap();
    for flag in ["--data-dir", "--platform", "--org", "--scope", "--expires-in", "--subject"] {
        assert!(issue.contains(flag), "token issue --help explains {flag}: {issue}");
    }
}

#[test]
fn token_issue_prints_one_token_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&["token", "issue", "--data-dir", dir.path().to_str().unwrap(), "--org", "Acme", "--scope", "admin"]).unwrap();
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
