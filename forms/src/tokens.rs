//! A small HTML tokenizer: start tags with attributes, end tags and text, in document order.
//!
//! It follows the parts of the WHATWG tokenizer that decide where a form field begins and ends:
//! attribute values may be quoted with `"` or `'` (and then contain `>`), or unquoted; attribute names are
//! case-insensitive and the first of two equal names wins; comments (`<!-- … -->`), doctypes and processing
//! instructions are skipped; the content of `script`, `style`, `textarea`, `title` (and the other raw-text
//! elements) is one text token, so `"<form"` inside a script is not a form. A `<` that starts no tag is text.
//! There is no tree construction (no implied end tags): callers track what they need.
//!
//! Every index it slices at is the position of an ASCII byte or the end of the input, so no input can make it
//! panic; `tests/props.rs` feeds it arbitrary strings to hold it to that.

use crate::entities::decode_entities;

/// One token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token<'a> {
    /// `<name attr=value …>`; `name` and attribute names in lower case, values entity-decoded.
    Start { name: String, attrs: Vec<(String, String)>, self_closing: bool },
    /// `</name>`; `name` in lower case.
    End { name: String },
    /// Text between tags, as written (not entity-decoded; see [`decode_entities`]).
    Text(&'a str),
}

/// Elements whose content is text up to their end tag (the tokenizer's RAWTEXT / RCDATA / script states).
const RAW_TEXT: &[&str] =
    &["script", "style", "textarea", "title", "xmp", "noembed", "noframes", "iframe", "plaintext"];

/// Tokens of `html`, in document order.
pub fn tokenize(html: &str) -> Tokens<'_> {
    Tokens { html, lower: html.to_ascii_lowercase(), pos: 0, raw_until: None }
}

/// The iterator returned by [`tokenize`].
pub struct Tokens<'a> {
    html: &'a str,
    /// `html` with ASCII letters lowered: same byte length, so indices agree.
    lower: String,
    pos: usize,
    /// Inside a raw-text element: the name of its end tag.
    raw_until: Option<String>,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

impl<'a> Tokens<'a> {
    fn bytes(&self) -> &[u8] {
        self.html.as_bytes()
    }

    /// `html[from..to]`, or "" if that is not a slice of it (never happens for the ASCII positions used here).
    fn slice(&self, from: usize, to: usize) -> &'a str {
        self.html.get(from..to).unwrap_or("")
    }

    /// Position of the next `>` at or after `from`, or the end.
    fn next_gt(&self, from: usize) -> usize {
        self.bytes().get(from..).and_then(|b| b.iter().position(|&c| c == b'>')).map_or(self.html.len(), |i| from + i)
    }

    /// Raw text up to `</name` (followed by whitespace, `/`, `>` or the end).
    fn raw_text(&mut self, name: &str) -> Option<Token<'a>> {
        let pat = format!("</{name}");
        let mut from = self.pos;
        let end = loop {
            let Some(i) = self.lower.get(from..).and_then(|s| s.find(&pat)) else { break self.html.len() };
            let at = from + i;
            match self.bytes().get(at + pat.len()) {
                None => break at,
                Some(&b) if is_ws(b) || b == b'/' || b == b'>' => break at,
                Some(_) => from = at + pat.len(),
            }
        };
        let text = self.slice(self.pos, end);
        self.pos = end;
        (!text.is_empty()).then_some(Token::Text(text))
    }

    /// A tag name starting at `from` (ASCII letter there); returns (lower-case name, position after it).
    fn tag_name(&self, from: usize) -> (String, usize) {
        let b = self.bytes();
        let mut i = from;
        while i < b.len() && !is_ws(b[i]) && b[i] != b'/' && b[i] != b'>' {
            i += 1;
        }
        // Stops at an ASCII byte or the end, so `i` is a char boundary.
        (self.lower.get(from..i).unwrap_or("").to_string(), i)
    }

    /// Attributes from `from` up to and including the tag's `>`; returns (attrs, self-closing, position after `>`).
    fn attributes(&self, from: usize) -> (Vec<(String, String)>, bool, usize) {
        let b = self.bytes();
        let mut attrs: Vec<(String, String)> = Vec::new();
        let mut i = from;
        let mut self_closing = false;
        loop {
            while i < b.len() && (is_ws(b[i]) || b[i] == b'/') {
                self_closing = b[i] == b'/';
                i += 1;
            }
            if i >= b.len() {
                return (attrs, false, b.len());
            }
            if b[i] == b'>' {
                return (attrs, self_closing, i + 1);
            }
            self_closing = false;
            // Name: up to whitespace, `/`, `>` or `=` (a leading `=` belongs to the name, as in the spec).
            let start = i;
            i += 1;
            while i < b.len() && !is_ws(b[i]) && b[i] != b'/' && b[i] != b'>' && b[i] != b'=' {
                i += 1;
            }
            let name = self.lower.get(start..i).unwrap_or("").to_string();
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            let mut value = String::new();
            if i < b.len() && b[i] == b'=' {
                i += 1;
                while i < b.len() && is_ws(b[i]) {
                    i += 1;
                }
                if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                    let q = b[i];
                    let vs = i + 1;
                    let ve = b.get(vs..).and_then(|r| r.iter().position(|&c| c == q)).map_or(b.len(), |k| vs + k);
                    value = decode_entities(self.slice(vs, ve)).into_owned();
                    i = (ve + 1).min(b.len());
                } else {
                    let vs = i;
                    while i < b.len() && !is_ws(b[i]) && b[i] != b'>' {
                        i += 1;
                    }
                    value = decode_entities(self.slice(vs, i)).into_owned();
                }
            }
            if !name.is_empty() && !attrs.iter().any(|(n, _)| *n == name) {
                attrs.push((name, value));
            }
        }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            if self.pos >= self.html.len() {
                return None;
            }
            if let Some(name) = self.raw_until.take() {
                if let Some(t) = self.raw_text(&name) {
                    return Some(t);
                }
                continue;
            }
            let b = self.bytes();
            let Some(lt) = b.get(self.pos..).and_then(|r| r.iter().position(|&c| c == b'<')).map(|i| self.pos + i)
            else {
                let text = self.slice(self.pos, self.html.len());
                self.pos = self.html.len();
                return Some(Token::Text(text));
            };
            if lt > self.pos {
                let text = self.slice(self.pos, lt);
                self.pos = lt;
                return Some(Token::Text(text));
            }
            let next = b.get(lt + 1).copied();
            match next {
                Some(b'!') if self.lower.get(lt..).is_some_and(|s| s.starts_with("<!--")) => {
                    let from = lt + 4;
                    self.pos =
                        self.lower.get(from..).and_then(|s| s.find("-->")).map_or(self.html.len(), |i| from + i + 3);
                }
                Some(b'!') | Some(b'?') => self.pos = (self.next_gt(lt) + 1).min(self.html.len()),
                Some(b'/') if b.get(lt + 2).is_some_and(u8::is_ascii_alphabetic) => {
                    let (name, after) = self.tag_name(lt + 2);
                    self.pos = (self.next_gt(after) + 1).min(self.html.len());
                    return Some(Token::End { name });
                }
                Some(c) if c.is_ascii_alphabetic() => {
                    let (name, after) = self.tag_name(lt + 1);
                    let (attrs, self_closing, end) = self.attributes(after);
                    self.pos = end;
                    if RAW_TEXT.contains(&name.as_str()) && !self_closing {
                        self.raw_until = Some(name.clone());
                    }
                    return Some(Token::Start { name, attrs, self_closing });
                }
                _ => {
                    self.pos = lt + 1;
                    return Some(Token::Text("<"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(html: &str) -> Vec<String> {
        tokenize(html)
            .map(|t| match t {
                Token::Start { name, .. } => format!("<{name}>"),
                Token::End { name } => format!("</{name}>"),
                Token::Text(t) => t.to_string(),
            })
            .collect()
    }

    #[test]
    fn tags_text_comments_and_raw_text() {
        assert_eq!(
            names("a<B x=1>b</b ><!-- <form> --><!DOCTYPE html>c<script>if (a<b) '<form>'</script ><p>"),
            vec!["a", "<b>", "b", "</b>", "c", "<script>", "if (a<b) '<form>'", "</script>", "<p>"]
        );
        assert_eq!(names("1 < 2 <3"), vec!["1 ", "<", " 2 ", "<", "3"]);
        assert_eq!(names("<script>x</scripty></script>"), vec!["<script>", "x</scripty>", "</script>"]);
    }

    #[test]
    fn attributes_quoted_unquoted_duplicates_and_entities() {
        let t: Vec<_> =
            tokenize(r#"<input Type=Hidden name='a>b' value="x &amp; &quot;y&quot;" name=dup checked/>"#).collect();
        let Token::Start { name, attrs, self_closing } = &t[0] else { panic!("{t:?}") };
        assert_eq!(name, "input");
        assert!(*self_closing);
        assert_eq!(
            attrs,
            &vec![
                ("type".to_string(), "Hidden".to_string()),
                ("name".to_string(), "a>b".to_string()),
                ("value".to_string(), "x & \"y\"".to_string()),
                ("checked".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn unterminated_input_ends_cleanly() {
        assert_eq!(tokenize("<input name=\"x").count(), 1);
        assert_eq!(tokenize("<!-- never closed").count(), 0);
        assert_eq!(names("<textarea>never closed"), vec!["<textarea>", "never closed"]);
    }
}
