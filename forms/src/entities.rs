//! HTML character references: `&amp;`, `&#39;`, `&#x2F;` and the named ones login pages use.
//!
//! Numeric references follow the WHATWG rules that matter here: 0, surrogates and values past U+10FFFF become
//! U+FFFD. Named references need their `;` (the legacy forms without it, such as `&amp` in running text, are
//! left as written), and only a small table is known: an unknown name is left as written, never guessed.

use std::borrow::Cow;

const NAMED: &[(&str, char)] = &[
    ("amp", '&'),
    ("lt", '<'),
    ("gt", '>'),
    ("quot", '"'),
    ("apos", '\''),
    ("nbsp", '\u{a0}'),
    ("copy", '©'),
    ("reg", '®'),
    ("euro", '€'),
    ("hellip", '…'),
    ("ndash", '–'),
    ("mdash", '—'),
    ("lsquo", '‘'),
    ("rsquo", '’'),
    ("ldquo", '“'),
    ("rdquo", '”'),
    ("laquo", '«'),
    ("raquo", '»'),
    ("middot", '·'),
    ("bull", '•'),
    ("times", '×'),
    ("eacute", 'é'),
    ("egrave", 'è'),
    ("euml", 'ë'),
    ("iuml", 'ï'),
    ("ouml", 'ö'),
    ("uuml", 'ü'),
    ("auml", 'ä'),
    ("aacute", 'á'),
    ("oacute", 'ó'),
    ("ccedil", 'ç'),
    ("szlig", 'ß'),
    ("sol", '/'),
    ("colon", ':'),
    ("equals", '='),
    ("num", '#'),
    ("lpar", '('),
    ("rpar", ')'),
];

/// Longest reference body looked at (between `&` and `;`).
const MAX_REF: usize = 12;

fn reference(body: &str) -> Option<char> {
    if let Some(num) = body.strip_prefix('#') {
        let (digits, radix) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16),
            None => (num, 10),
        };
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        let v = u32::from_str_radix(digits, radix).unwrap_or(u32::MAX);
        return Some(if v == 0 { '\u{fffd}' } else { char::from_u32(v).unwrap_or('\u{fffd}') });
    }
    NAMED.iter().find(|(n, _)| *n == body).map(|(_, c)| *c)
}

/// Decodes the character references in `s` (borrowed when there are none).
pub fn decode_entities(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        // `&` is one byte; `;` is ASCII: both positions are char boundaries.
        let decoded =
            rest[1..].find(';').filter(|&e| e <= MAX_REF).and_then(|e| reference(&rest[1..1 + e]).map(|c| (c, e)));
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &rest[e + 2..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The inverse for text and attribute values: `& < > " '` escaped.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_numeric_and_unknown() {
        assert_eq!(decode_entities("a&amp;b&#x2F;c&#39;&bogus;&amp"), "a&b/c'&bogus;&amp");
        assert_eq!(decode_entities("&#0;&#xD800;&#99999999999;&#x;&#;"), "\u{fffd}\u{fffd}\u{fffd}&#x;&#;");
        assert_eq!(decode_entities("&ééééééééé;x&"), "&ééééééééé;x&");
        assert_eq!(decode_entities("caf&eacute; &euro;5"), "café €5");
        assert!(matches!(decode_entities("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn escape_round_trips() {
        let s = r#"<a href="x">'&'</a>"#;
        assert_eq!(decode_entities(&escape(s)), s);
    }
}
