//! Architecture rules, checked on the source itself (docs/ARCHITECTURE.md describes them):
//! - every problem code the source constructs is in the registry (`problem::PROBLEM_TYPES`), and every code
//!   in the registry is used somewhere.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `shared/src`, with its text.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

/// The string literal that starts `text` (after whitespace), if any.
fn literal_at(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('"')?;
    rest.split('"').next()
}

/// The codes passed as literals to `Problem`'s constructors, with where they are.
fn constructed_codes() -> Vec<(String, String)> {
    const CONSTRUCTORS: &[&str] = &[
        "Problem::new(",
        "Problem::bad_request(",
        "Problem::not_found(",
        "Problem::conflict(",
        "Problem::unavailable(",
    ];
    let mut found = Vec::new();
    for (path, text) in sources() {
        for ctor in CONSTRUCTORS {
            for (at, _) in text.match_indices(ctor) {
                let mut args = &text[at + ctor.len()..];
                if *ctor == "Problem::new(" {
                    // The status comes first: `StatusCode::X,`.
                    let Some(comma) = args.find(',') else { continue };
                    args = &args[comma + 1..];
                }
                if let Some(code) = literal_at(args) {
                    found.push((code.to_string(), format!("{}:{}", path.display(), text[..at].lines().count())));
                }
            }
        }
    }
    found
}

#[test]
fn every_problem_code_in_the_source_is_registered() {
    let found = constructed_codes();
    assert!(found.len() > 50, "the scan finds the constructions ({} found)", found.len());
    for (code, at) in &found {
        assert!(
            chainkeeper::problem::problem_type(code).is_some(),
            "{at}: problem code {code:?} is not in PROBLEM_TYPES: add its title, meaning and remedy"
        );
    }
}

#[test]
fn every_registered_problem_code_is_used() {
    let all: String = sources().into_iter().map(|(_, t)| t).collect();
    for t in chainkeeper::problem::PROBLEM_TYPES {
        // Once in the registry, and at least once where it is made.
        let uses = all.matches(&format!("\"{}\"", t.code)).count();
        assert!(uses >= 2, "problem code {:?} is registered but never used", t.code);
    }
}
