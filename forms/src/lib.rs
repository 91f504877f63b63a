//! `chainkeeper-forms`: the one HTML form parser of the code base (issue 14). Login drivers, the Exact
//! simulator's test browser and the test peers read pages through it.
//!
//! * [`forms`] / [`first_form`]: each `<form>` with its `action`, `method` and controls ([`Field`]: name, type,
//!   value, `autocomplete`, hidden or not, checked, disabled, every attribute); [`Form::entries`] is the entry
//!   list a browser would submit.
//! * [`script_object`] / [`script_json`]: the `{…}` assigned by `var NAME = {…};` in a script — how Azure AD B2C
//!   pages carry their settings (`var SETTINGS`, `var SA_FIELDS`) instead of a form.
//! * [`visible_text`], [`texts_with_class`]: what the page says (error messages).
//! * [`decode_entities`], [`escape`].
//!
//! It is a tokenizer plus a little bookkeeping, not an HTML5 tree builder: no implied end tags, no `form=`
//! owner attribute, a small table of named character references. That is enough for login pages, whose forms
//! are written out plainly (or, for B2C, built by script from JSON this crate extracts), and it keeps the crate
//! at one dependency (`serde_json`). `html5ever` (through `scraper`) would bring a dozen crates and a
//! tree for pages we only scan once; we would take it if we ever had to read pages that rely on the HTML5
//! error-recovery rules. No input makes any function here panic (`tests/props.rs` checks with arbitrary
//! strings).

mod entities;
mod form;
mod script;
mod tokens;

pub use entities::{decode_entities, escape};
pub use form::{Field, Form, controls, first_form, forms, set_entry};
pub use script::{script_json, script_object, texts_with_class, visible_text};
pub use tokens::{Token, Tokens, tokenize};
