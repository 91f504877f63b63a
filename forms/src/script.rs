//! JSON objects assigned in a page's scripts (`var SETTINGS = {…};`), and the page's text.
//!
//! Azure AD B2C pages carry no HTML form: their script builds one from `var SETTINGS = {…}` and
//! `var SA_FIELDS = {…}`. [`script_object`] finds such an assignment in a `<script>` element's text and returns
//! the object literal by counting braces outside JavaScript strings (so a `}` or `;` inside a string does not end
//! it — a `[^;]+` regex, as some clients use, breaks on `"a;b"`). [`script_json`] parses it.

use crate::entities::decode_entities;
use crate::tokens::{Token, tokenize};

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

/// The balanced `{…}` that starts at `open` (a `{`), honouring `"…"`, `'…'` and `` `…` `` strings with `\`
/// escapes; `None` if it never closes.
fn balanced(s: &str, open: usize) -> Option<&str> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut i = open;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) => {
                if c == b'\\' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                b'"' | b'\'' | b'`' => quote = Some(c),
                b'{' => depth += 1,
                b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return s.get(open..=i);
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    None
}

/// In one script's text: the object assigned to `name` by `var|let|const name =`, `window.name =` or
/// `name =` (the name a whole identifier, not `xname` or `name2`, and not `a.name` other than `window.name`).
fn object_in(script: &str, name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let b = script.as_bytes();
    let mut from = 0;
    while let Some(i) = script.get(from..).and_then(|s| s.find(name)) {
        let at = from + i;
        let end = at + name.len();
        from = end;
        let before_ok = at == 0 || {
            let p = b[at - 1];
            !is_ident(p) && (p != b'.' || script.get(..at).is_some_and(|s| s.ends_with("window.")))
        };
        if !before_ok || b.get(end).is_some_and(|&c| is_ident(c)) {
            continue;
        }
        let mut j = end;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        // `=` but not `==`/`=>`.
        if b.get(j) != Some(&b'=') || matches!(b.get(j + 1), Some(b'=') | Some(b'>')) {
            continue;
        }
        j += 1;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if b.get(j) == Some(&b'{')
            && let Some(obj) = balanced(script, j)
        {
            return Some(obj.to_string());
        }
    }
    None
}

/// The object literal assigned to `name` in the page's first `<script>` that assigns one, as written.
pub fn script_object(html: &str, name: &str) -> Option<String> {
    let mut in_script = false;
    for t in tokenize(html) {
        match t {
            Token::Start { name: tag, .. } => in_script = tag == "script",
            Token::End { .. } => in_script = false,
            Token::Text(text) if in_script => {
                if let Some(o) = object_in(text, name) {
                    return Some(o);
                }
            }
            Token::Text(_) => {}
        }
    }
    None
}

/// [`script_object`] parsed as JSON. When the literal is not JSON as written but is once its HTML character
/// references are decoded (a page that HTML-escaped its inline JSON), the decoded form is used.
pub fn script_json(html: &str, name: &str) -> Option<serde_json::Value> {
    let raw = script_object(html, name)?;
    serde_json::from_str(&raw).ok().or_else(|| serde_json::from_str(&decode_entities(&raw)).ok())
}

const BLOCK: &[&str] = &[
    "p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "form", "label", "button", "title",
    "td", "th", "ul", "ol", "table", "header", "footer", "main", "article", "option",
];

/// The page's visible text: text outside `script`, `style`, `template` and `head` (except its `title`),
/// entity-decoded, whitespace collapsed.
pub fn visible_text(html: &str) -> String {
    let mut out = String::new();
    let mut hidden: Option<String> = None;
    for t in tokenize(html) {
        match t {
            Token::Start { name, .. } => {
                if hidden.is_none() && matches!(name.as_str(), "script" | "style" | "template" | "noscript") {
                    hidden = Some(name.clone());
                }
                if BLOCK.contains(&name.as_str()) {
                    out.push(' ');
                }
            }
            Token::End { name } => {
                if hidden.as_deref() == Some(name.as_str()) {
                    hidden = None;
                }
                if BLOCK.contains(&name.as_str()) {
                    out.push(' ');
                }
            }
            Token::Text(t) if hidden.is_none() => out.push_str(&decode_entities(t)),
            Token::Text(_) => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

const VOID: &[&str] =
    &["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"];

/// Text of each element whose `class` list contains `class` (entity-decoded, whitespace collapsed), in
/// document order; e.g. the `error` messages of a login page.
pub fn texts_with_class(html: &str, class: &str) -> Vec<String> {
    let mut out = Vec::new();
    // (tag name, nesting depth of that tag, collected text)
    let mut current: Option<(String, usize, String)> = None;
    for t in tokenize(html) {
        match t {
            Token::Start { name, attrs, self_closing } => {
                if let Some((tag, depth, text)) = &mut current {
                    if *tag == name && !self_closing {
                        *depth += 1;
                    }
                    if BLOCK.contains(&name.as_str()) {
                        text.push(' ');
                    }
                    continue;
                }
                let has = attrs.iter().any(|(n, v)| n == "class" && v.split_ascii_whitespace().any(|c| c == class));
                if has && !self_closing && !VOID.contains(&name.as_str()) {
                    current = Some((name, 1, String::new()));
                }
            }
            Token::Text(t) => {
                if let Some((_, _, text)) = &mut current {
                    text.push_str(&decode_entities(t));
                }
            }
            Token::End { name } => {
                if let Some((tag, depth, text)) = &mut current
                    && *tag == name
                {
                    text.push(' ');
                    *depth -= 1;
                    if *depth == 0 {
                        out.push(text.split_whitespace().collect::<Vec<_>>().join(" "));
                        current = None;
                    }
                }
            }
        }
    }
    if let Some((_, _, text)) = current {
        out.push(text.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    out
}
