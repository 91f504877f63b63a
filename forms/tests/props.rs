//! No input makes the parser panic: arbitrary strings, and strings built from the characters that steer it.

use chainkeeper_forms::*;
use proptest::prelude::*;

/// Strings made of the pieces the tokenizer branches on, so the generator reaches deep states quickly.
fn htmlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("<".to_string()),
        Just(">".to_string()),
        Just("</".to_string()),
        Just("/>".to_string()),
        Just("<!--".to_string()),
        Just("-->".to_string()),
        Just("<!".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("=".to_string()),
        Just("&".to_string()),
        Just(";".to_string()),
        Just("&#x".to_string()),
        Just("&#".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("\\".to_string()),
        Just("`".to_string()),
        Just(" ".to_string()),
        Just("form".to_string()),
        Just("input".to_string()),
        Just("select".to_string()),
        Just("option".to_string()),
        Just("textarea".to_string()),
        Just("button".to_string()),
        Just("script".to_string()),
        Just("var SETTINGS".to_string()),
        Just("name".to_string()),
        Just("class=error".to_string()),
        Just("é".to_string()),
        Just("\u{1F600}".to_string()),
        "[a-z0-9]{1,3}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

fn exercise(html: &str) {
    let _ = tokenize(html).count();
    for f in forms(html) {
        let _ = f.entries(f.default_submitter());
        let _ = f.field_with_autocomplete("username");
    }
    let _ = controls(html);
    let _ = script_json(html, "SETTINGS");
    let _ = script_object(html, "");
    let _ = visible_text(html);
    let _ = texts_with_class(html, "error");
    let d = decode_entities(html);
    assert_eq!(decode_entities(&escape(html)), html);
    let _ = d.len();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        exercise(&s);
    }

    #[test]
    fn html_like_strings_never_panic(s in htmlish()) {
        exercise(&s);
    }

    #[test]
    fn a_written_form_reads_back(name in "[A-Za-z$_][A-Za-z0-9$_]{0,12}", value in any::<String>()) {
        let html = format!(
            "<form method=post><input type=hidden name=\"{}\" value=\"{}\"></form>",
            escape(&name), escape(&value)
        );
        let f = first_form(&html).unwrap();
        prop_assert_eq!(f.entries(None), vec![(name, value)]);
    }
}
