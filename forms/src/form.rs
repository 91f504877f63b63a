//! Forms and their controls, and the entry list a browser would submit.

use crate::tokens::{Token, tokenize};

/// One form control: `<input>`, `<button>`, `<select>` or `<textarea>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Field {
    /// `input`, `button`, `select` or `textarea`.
    pub tag: String,
    /// The `name` attribute ("" when absent: such a control is never submitted).
    pub name: String,
    /// Lower-case type: an input's `type` (default `text`), a button's (default `submit`); `select` or
    /// `textarea` for those.
    pub kind: String,
    /// The `value` attribute; a textarea's text; a select's selected option (or its first option).
    pub value: String,
    /// `checked` (checkboxes and radio buttons) or `selected` on a select's chosen option.
    pub checked: bool,
    pub disabled: bool,
    /// A button's text content, whitespace collapsed.
    pub text: String,
    /// Every attribute as written (names lower case, values entity-decoded).
    pub attrs: Vec<(String, String)>,
}

impl Field {
    /// Value of attribute `name` (lower case).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn id(&self) -> Option<&str> {
        self.attr("id")
    }

    /// True when the `autocomplete` attribute lists `token` (`username`, `current-password`, `one-time-code`, …;
    /// the attribute is a space-separated list such as `section-a username`), ignoring case.
    pub fn has_autocomplete(&self, token: &str) -> bool {
        self.attr("autocomplete").is_some_and(|v| v.split_ascii_whitespace().any(|t| t.eq_ignore_ascii_case(token)))
    }

    /// A control that submits its form when clicked (`<button>` of type submit, `<input type=submit|image>`).
    pub fn is_submit(&self) -> bool {
        matches!((self.tag.as_str(), self.kind.as_str()), ("button", "submit") | ("input", "submit" | "image"))
    }

    pub fn is_hidden(&self) -> bool {
        self.tag == "input" && self.kind == "hidden"
    }
}

/// One `<form>` and the controls inside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form {
    /// The `action` attribute as written (resolve it against the page URL; absent or "" means the page itself).
    pub action: Option<String>,
    /// Lower-case `method`, `get` when absent or unknown (as a browser does).
    pub method: String,
    pub id: Option<String>,
    pub name: Option<String>,
    /// Controls in document order.
    pub fields: Vec<Field>,
    /// Every attribute of the `<form>` tag.
    pub attrs: Vec<(String, String)>,
}

impl Form {
    /// The first control named `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn has_field(&self, name: &str) -> bool {
        self.field(name).is_some()
    }

    /// The first control whose `autocomplete` lists `token`.
    pub fn field_with_autocomplete(&self, token: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.has_autocomplete(token))
    }

    /// The first control of input type `kind` (`password`, `email`, `hidden`, …).
    pub fn field_of_kind(&self, kind: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.tag == "input" && f.kind == kind)
    }

    pub fn hidden_fields(&self) -> impl Iterator<Item = &Field> {
        self.fields.iter().filter(|f| f.is_hidden())
    }

    /// The button a person presses by default: the first submit control.
    pub fn default_submitter(&self) -> Option<&Field> {
        self.fields.iter().find(|f| f.is_submit() && !f.disabled)
    }

    /// The entry list a browser sends when this form is submitted by `submitter` (HTML's "constructing the
    /// entry list"): enabled, named controls; checkboxes and radios only when checked (value `on` by default);
    /// submit buttons only when they are the submitter; no file, reset or plain buttons.
    pub fn entries(&self, submitter: Option<&Field>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for f in &self.fields {
            if f.disabled || f.name.is_empty() {
                continue;
            }
            match (f.tag.as_str(), f.kind.as_str()) {
                _ if f.is_submit() => {
                    if submitter == Some(f) {
                        out.push((f.name.clone(), f.value.clone()));
                    }
                }
                ("button", _) | ("input", "button" | "reset" | "file") => {}
                ("input", "checkbox" | "radio") => {
                    if f.checked {
                        let v = if f.attr("value").is_some() { f.value.clone() } else { "on".to_string() };
                        out.push((f.name.clone(), v));
                    }
                }
                _ => out.push((f.name.clone(), f.value.clone())),
            }
        }
        out
    }
}

/// Sets `name` to `value` in an entry list (the first entry of that name), or appends it.
pub fn set_entry(entries: &mut Vec<(String, String)>, name: &str, value: &str) {
    match entries.iter_mut().find(|(n, _)| n == name) {
        Some(e) => e.1 = value.to_string(),
        None => entries.push((name.to_string(), value.to_string())),
    }
}

fn attr<'v>(attrs: &'v [(String, String)], name: &str) -> Option<&'v str> {
    attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the parser is collecting text for.
enum Open {
    None,
    Button(usize),
    Textarea(usize),
    /// A select, and whether one of its options was seen.
    Select {
        field: usize,
        seen: bool,
    },
    Option {
        select: usize,
        seen: bool,
        value: Option<String>,
        selected: bool,
        text: String,
    },
}

/// Parses every form of the page, and (as form `None`) the controls outside any form.
fn parse(html: &str) -> (Vec<Form>, Vec<Field>) {
    let mut forms: Vec<Form> = Vec::new();
    let mut loose: Vec<Field> = Vec::new();
    let mut in_form = false;
    let mut open = Open::None;
    for token in tokenize(html) {
        let fields: &mut Vec<Field> = match (in_form, forms.last_mut()) {
            (true, Some(f)) => &mut f.fields,
            _ => &mut loose,
        };
        match token {
            Token::Start { name, attrs, .. } => match name.as_str() {
                // A `<form>` inside an open form is ignored, as browsers do.
                "form" if !in_form => {
                    let method = attr(&attrs, "method").unwrap_or("get").to_ascii_lowercase();
                    forms.push(Form {
                        action: attr(&attrs, "action").map(str::to_string),
                        method: if matches!(method.as_str(), "post" | "dialog") { method } else { "get".into() },
                        id: attr(&attrs, "id").map(str::to_string),
                        name: attr(&attrs, "name").map(str::to_string),
                        fields: Vec::new(),
                        attrs,
                    });
                    in_form = true;
                    open = Open::None;
                }
                "input" | "button" | "select" | "textarea" => {
                    let kind = match name.as_str() {
                        "input" => attr(&attrs, "type").unwrap_or("text").to_ascii_lowercase(),
                        "button" => match attr(&attrs, "type").map(str::to_ascii_lowercase).as_deref() {
                            Some("button") => "button".to_string(),
                            Some("reset") => "reset".to_string(),
                            _ => "submit".to_string(),
                        },
                        other => other.to_string(),
                    };
                    let field = Field {
                        name: attr(&attrs, "name").unwrap_or("").to_string(),
                        value: attr(&attrs, "value").unwrap_or("").to_string(),
                        checked: attr(&attrs, "checked").is_some(),
                        disabled: attr(&attrs, "disabled").is_some(),
                        tag: name.clone(),
                        kind,
                        text: String::new(),
                        attrs,
                    };
                    fields.push(field);
                    let i = fields.len() - 1;
                    open = match name.as_str() {
                        "button" => Open::Button(i),
                        "textarea" => Open::Textarea(i),
                        "select" => Open::Select { field: i, seen: false },
                        _ => open,
                    };
                }
                "option" => {
                    close_option(fields, &mut open);
                    if let Open::Select { field, seen } = open {
                        open = Open::Option {
                            select: field,
                            seen,
                            value: attr(&attrs, "value").map(str::to_string),
                            selected: attr(&attrs, "selected").is_some(),
                            text: String::new(),
                        };
                    }
                }
                _ => {}
            },
            Token::Text(t) => match &mut open {
                Open::Button(i) => {
                    if let Some(f) = fields.get_mut(*i) {
                        f.text.push_str(&crate::decode_entities(t));
                    }
                }
                Open::Textarea(i) => {
                    if let Some(f) = fields.get_mut(*i) {
                        f.value.push_str(&crate::decode_entities(t));
                    }
                }
                Open::Option { text, .. } => text.push_str(&crate::decode_entities(t)),
                _ => {}
            },
            Token::End { name } => match name.as_str() {
                "form" => {
                    close_option(fields, &mut open);
                    in_form = false;
                    open = Open::None;
                }
                "button" | "textarea" => open = Open::None,
                "option" => close_option(fields, &mut open),
                "select" => {
                    close_option(fields, &mut open);
                    open = Open::None;
                }
                _ => {}
            },
        }
    }
    for f in forms.iter_mut().flat_map(|f| f.fields.iter_mut()).chain(loose.iter_mut()) {
        f.text = collapse(&f.text);
    }
    (forms, loose)
}

/// Ends an open `<option>`: a select takes its first option's value, and the first `selected` one's.
fn close_option(fields: &mut [Field], open: &mut Open) {
    if !matches!(open, Open::Option { .. }) {
        return;
    }
    if let Open::Option { select, seen, value, selected, text } = std::mem::replace(open, Open::None) {
        let value = value.unwrap_or_else(|| collapse(&text));
        if let Some(f) = fields.get_mut(select)
            && (!seen || (selected && !f.checked))
        {
            f.value = value;
            f.checked = selected;
        }
        *open = Open::Select { field: select, seen: true };
    }
}

/// Every `<form>` of the page, in document order.
pub fn forms(html: &str) -> Vec<Form> {
    parse(html).0
}

/// The first `<form>` of the page.
pub fn first_form(html: &str) -> Option<Form> {
    forms(html).into_iter().next()
}

/// Every control of the page: those of the forms (form by form, in document order), then those outside any
/// form (in document order).
pub fn controls(html: &str) -> Vec<Field> {
    let (forms, loose) = parse(html);
    forms.into_iter().flat_map(|f| f.fields).chain(loose).collect()
}
