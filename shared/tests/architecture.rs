//! Architecture rules, checked on the source itself (docs/ARCHITECTURE.md describes them):
//! - the modules form layers and every import points inward (wiring → api → app → domain and ports → foundation;
//!   the AWS adapters beside the API, reached only from the wiring), and the import graph has no cycle;
//! - nothing outside `api` imports `api`; only `api` and the wiring use the use cases; only the wiring names an
//!   adapter;
//! - every tracing span skips its arguments (`skip_all`) and names its fields (organisation, container), so no
//!   secret or client ever lands in a span;
//! - every problem code the source constructs is in the registry (`api::problem::PROBLEM_TYPES`), and every code
//!   in the registry is used somewhere.

use std::collections::{BTreeMap, BTreeSet};
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
            chainkeeper::api::problem::problem_type(code).is_some(),
            "{at}: problem code {code:?} is not in PROBLEM_TYPES: add its title, meaning and remedy"
        );
    }
}

#[test]
fn every_registered_problem_code_is_used() {
    let all: String = sources().into_iter().map(|(_, t)| t).collect();
    for t in chainkeeper::api::problem::PROBLEM_TYPES {
        // Once in the registry, and at least once where it is made.
        let uses = all.matches(&format!("\"{}\"", t.code)).count();
        assert!(uses >= 2, "problem code {:?} is registered but never used", t.code);
    }
}

// --- the module graph ---

/// Each top-level module of the crate and its layer: a module may import modules of its own layer or of a lower
/// one. (Layer 3 holds the two outer rings, the HTTP API and the AWS adapters, which never import each other.)
const LAYERS: &[(&str, u8)] = &[
    ("ids", 0),
    ("clock", 0),
    ("metrics", 0),
    ("metrics_names", 0),
    // domain, with its ports (and the embedded adapters that live beside their port)
    ("store", 1),
    ("keys", 1),
    ("secrets", 1),
    ("config", 1),
    ("provider", 1),
    ("records", 1),
    ("totp", 1),
    ("auth", 1),
    ("chain", 1),
    ("handoff", 1),
    // use cases
    ("app", 2),
    // the outer rings
    ("api", 3),
    ("aws", 3),
    // wiring
    ("wiring", 4),
    ("telemetry", 4),
];

/// Paths that name an adapter: only the wiring (and tests) may use them.
const ADAPTERS: &[&str] = &["store::sqlite", "store::memory", "keys::local", "aws", "secrets::LocalSecrets"];

/// The module path of a source file (`chain/engine.rs` → `chain::engine`), or `None` for test-only files.
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src")).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    if parts.last().is_some_and(|p| p == "tests") {
        return None; // `#[cfg(test)] mod tests;` in a file of its own
    }
    Some(parts.join("::"))
}

/// The code of a file without comments, string and char literals, and without its `#[cfg(test)]` modules
/// (`mod tests` and `mod fuzz`, which come last in a file).
fn code_only(text: &str) -> String {
    let test_module = ["#[cfg(test)]\nmod tests", "#[cfg(test)]\nmod fuzz"].iter().filter_map(|m| text.find(m)).min();
    let text = match test_module {
        Some(at) => &text[..at],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = j + close.len();
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal ('x', '\n', '"'), not a lifetime ('a).
            b'\'' if b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\') => {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// Every path a file names through `crate::` (`crate::a::b` → `a::b`; `crate::{a, b::c}` → `a`, `b::c`).
fn crate_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && code[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            for (i, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        paths.push(path_at(&group[start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        paths.push(path_at(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            paths.push(path_at(rest));
        }
    }
    paths.retain(|p| !p.is_empty());
    paths
}

/// `a::b::{c, d}` or `a::b::C` → the `::`-joined identifiers at its start (`a::b`, `a::b::C`).
fn path_at(s: &str) -> String {
    let mut parts = Vec::new();
    let mut rest = s.trim_start();
    loop {
        let id = ident_at(rest);
        if id.is_empty() {
            break;
        }
        parts.push(id);
        match rest[id.len()..].strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    parts.join("::")
}

/// For each module file: its module path, its top-level module, and the crate paths it names.
fn module_imports() -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for (path, text) in sources() {
        let Some(module) = module_of(&path) else { continue };
        if module.is_empty() {
            continue; // lib.rs declares the modules
        }
        let top = module.split("::").next().unwrap().to_string();
        out.push((module, top, crate_paths(&code_only(&text))));
    }
    out
}

fn layer(top: &str) -> u8 {
    LAYERS.iter().find(|(m, _)| *m == top).unwrap_or_else(|| panic!("module {top} is not in LAYERS")).1
}

#[test]
fn the_scanner_reads_imports_and_skips_comments_strings_and_tests() {
    let code = code_only(
        "use crate::{a::{B, C}, d};\n// crate::commented\nlet s = \"crate::quoted\"; fn f<'a>(x: &'a str) { crate::e::f(); }\n\
         #[cfg(test)]\nmod tests { use crate::g; }",
    );
    assert_eq!(crate_paths(&code), ["a", "d", "e::f"]);
}

#[test]
fn imports_point_inward_and_the_module_graph_has_no_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    let imports = module_imports();
    assert!(imports.len() > 40, "the scan finds the modules ({})", imports.len());
    for (module, top, paths) in &imports {
        graph.entry(top.clone()).or_default();
        for p in paths {
            let target = p.split("::").next().unwrap().to_string();
            if &target == top {
                continue;
            }
            if target == "api" {
                problems.push(format!("{module} imports the HTTP layer (crate::{p}): only api/ may"));
            }
            if target == "app" && top != "api" && top != "wiring" {
                problems.push(format!("{module} uses the use cases (crate::{p}): only api/ and the wiring may"));
            }
            if top != "wiring" && ADAPTERS.iter().any(|a| p == a || p.starts_with(&format!("{a}::"))) {
                problems.push(format!("{module} names an adapter (crate::{p}): only the wiring chooses adapters"));
            }
            if layer(&target) > layer(top) || (layer(&target) == 3 && layer(top) == 3) {
                problems.push(format!(
                    "{module} (layer {}) points outward to crate::{p} (layer {})",
                    layer(top),
                    layer(&target)
                ));
            }
            graph.entry(top.clone()).or_default().insert(target);
        }
    }
    // A cycle among the top-level modules: depth-first search, reporting the circle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|n| n == node) {
            cycles.push(format!("{} -> {node}", path[at..].join(" -> ")));
            return;
        }
        if !done.insert(node.to_string()) {
            return;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, cycles);
        }
        path.pop();
    }
    let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    problems.extend(cycles.into_iter().map(|c| format!("import cycle: {c}")));
    assert!(problems.is_empty(), "architecture rules broken:\n  {}", problems.join("\n  "));
}

// --- spans ---

#[test]
fn every_span_skips_its_arguments() {
    let mut spans = 0;
    for (path, text) in sources() {
        for (at, _) in text.match_indices("#[tracing::instrument") {
            spans += 1;
            let attribute = &text[at..at + text[at..].find(")]").unwrap_or(0)];
            assert!(
                attribute.contains("skip_all"),
                "{}:{}: a span must use `skip_all` and name its fields (secrets and clients stay out): {attribute}",
                path.display(),
                text[..at].lines().count() + 1
            );
        }
    }
    assert!(spans >= 25, "the use cases have spans ({spans} found)");
}
