//! Exact Online's REST API as an OData service: generated rows behind a few entity sets, the query options,
//! server-driven paging, the service document and `$metadata`.
//!
//! Evidence: Exact's knowledge-base articles (support.exactonline.com/community/s/article/<name>), read as
//! public copies held by a code-search index that does not name the copies' repositories; article names as
//! the articles and a public Exact-integration research note cite them:
//! * "OData | Best practices" (`All-All-DNO-Content-dosanddonts`): "By default, the Exact Online REST API response
//!   message is limited to 60 records per request. If the result set contains more than 60 records … the response
//!   message will contain a '__next' property … a link to request the next set of records including the $select,
//!   $filter, or any other option you passed in the initial request with a $skiptoken option", example
//!   `{"d": {"results": [...], "__next": ".../financial/GLAccounts?$select=…&$skiptoken=guid'12345678-…'"}}`.
//!   So `$skiptoken` is the key of the last row of the page: keyset paging in key order.
//! * "API limits" (`All-All-DNO-Simulation-gen-apilimits`): "Most API endpoints support pagination, though only
//!   per 60 records … bulk or sync operations for GET, with which you can request a maximum of 1,000 records per
//!   API call"; the entity index (start.exactonline.nl/docs/HlpRestAPIResources.aspx): "Most of the REST API
//!   have a page size of 60. The bulk and sync endpoints have a pagesize of 1000."
//! * "OData | Query string options" (`All-All-DNO-Simulation-query-string-options`): `$select` (comma-separated
//!   properties), `$filter` (e.g. `AmountFC ge -8500`; no filtering on navigation properties), `$expand`,
//!   "The $skip option is no longer supported for new endpoints that are released after March 1st 2017 …
//!   use the $skiptoken option", `$count` (`…/PurchaseEntries/$count`, a bare integer) and
//!   `$inlinecount=allpages` ("a property called '__count'"), `$orderby` (asc by default, `desc`; "will
//!   significantly decrease the performance").
//! * "Integrate efficiently with OData": `GET …/api/v1/{division}/purchaseentry/$metadata` "will return a
//!   service document in an XML-format". So `$metadata` exists per service (crm, financialtransaction, …), as
//!   an EDMX document, behind the division.
//! * Bulk endpoints need `$select` ("Bulk mode requires selecting one or more fields using $select",
//!   academy.any2info.com, Import Exact Online); the bulk endpoints are newer than March 2017, so no `$skip`.
//! * `Code` of an account is "fixed length numeric string with leading spaces, length 18" and a `$filter` must
//!   carry the spaces (entity docs CRMAccounts, quoted in the same research notes).
//! * Errors: `{"error":{"code":"","message":{"lang":"","value":"…"}}}` (OData v2/v3 verbose JSON; picqer/
//!   exact-php-client `src/Picqer/Financials/Exact/Connection.php` reads `error.message.value`), with messages
//!   in the words of WCF Data Services on which Exact's services run ("each service is offered as a WCF web
//!   service"), e.g. "Operator 'eq' incompatible with operand types 'System.Guid' and 'System.Int32' at
//!   position 3." (quoted from Exact's "Response codes and error handling").
//!
//! Departures: the simulator answers JSON whatever the `Accept` header (Exact answers Atom XML unless
//! `Accept: application/json` is sent — public client notes call that header mandatory); rows are ordered by the
//! GUID's text, not SQL Server's `uniqueidentifier` order; the EDMX lists the few properties generated here,
//! not Exact's full types; `$expand` is refused; the service document is WCF's default (Exact's has not been
//! seen in public material).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::server::{self, Shared};

// ---------------------------------------------------------------- schema

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EdmType {
    Guid,
    String,
    Int32,
    Double,
    Boolean,
    DateTime,
}

impl EdmType {
    fn edm(self) -> &'static str {
        match self {
            EdmType::Guid => "Edm.Guid",
            EdmType::String => "Edm.String",
            EdmType::Int32 => "Edm.Int32",
            EdmType::Double => "Edm.Double",
            EdmType::Boolean => "Edm.Boolean",
            EdmType::DateTime => "Edm.DateTime",
        }
    }
}

pub(crate) struct EntityType {
    pub name: &'static str,
    pub props: &'static [(&'static str, EdmType)],
}

const ACCOUNT: EntityType = EntityType {
    name: "Account",
    props: &[
        ("ID", EdmType::Guid),
        ("Code", EdmType::String),
        ("Name", EdmType::String),
        ("City", EdmType::String),
        ("Country", EdmType::String),
        ("Status", EdmType::String),
        ("IsSupplier", EdmType::Boolean),
        ("Division", EdmType::Int32),
        ("Created", EdmType::DateTime),
        ("Modified", EdmType::DateTime),
    ],
};

const TRANSACTION_LINE: EntityType = EntityType {
    name: "TransactionLine",
    props: &[
        ("ID", EdmType::Guid),
        ("Account", EdmType::Guid),
        ("AmountDC", EdmType::Double),
        ("Date", EdmType::DateTime),
        ("Description", EdmType::String),
        ("Division", EdmType::Int32),
        ("EntryNumber", EdmType::Int32),
        ("FinancialPeriod", EdmType::Int32),
        ("FinancialYear", EdmType::Int32),
        ("GLAccountCode", EdmType::String),
        ("Modified", EdmType::DateTime),
    ],
};

const NAMESPACE: &str = "Exact.Web.Api.Models";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Rows {
    Accounts,
    TransactionLines,
}

/// One entity set at one URL: `/api/v1/{division}/{service}/{name}`.
pub(crate) struct EntitySet {
    pub service: &'static str,
    pub name: &'static str,
    pub rows: Rows,
    pub page_size: usize,
    /// Bulk endpoints: `$select` required, no `$skip`.
    pub bulk: bool,
}

impl EntitySet {
    fn ty(&self) -> &'static EntityType {
        match self.rows {
            Rows::Accounts => &ACCOUNT,
            Rows::TransactionLines => &TRANSACTION_LINE,
        }
    }
}

pub(crate) const ENTITY_SETS: &[EntitySet] = &[
    EntitySet { service: "crm", name: "Accounts", rows: Rows::Accounts, page_size: 60, bulk: false },
    EntitySet { service: "bulk/CRM", name: "Accounts", rows: Rows::Accounts, page_size: 1000, bulk: true },
    EntitySet {
        service: "financialtransaction",
        name: "TransactionLines",
        rows: Rows::TransactionLines,
        page_size: 60,
        bulk: false,
    },
    EntitySet {
        service: "bulk/Financial",
        name: "TransactionLines",
        rows: Rows::TransactionLines,
        page_size: 1000,
        bulk: true,
    },
];

/// The services (URL prefixes after the division) that have entity sets.
pub(crate) fn services() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = ENTITY_SETS.iter().map(|e| e.service).collect();
    v.dedup();
    v
}

pub(crate) fn entity_set(service: &str, name: &str) -> Option<&'static EntitySet> {
    ENTITY_SETS.iter().find(|e| e.service.eq_ignore_ascii_case(service) && e.name.eq_ignore_ascii_case(name))
}

// ---------------------------------------------------------------- values and generated rows

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val {
    Null,
    Str(String),
    Int(i64),
    Dbl(f64),
    Bool(bool),
    Guid(String),
    /// Unix milliseconds.
    DateTime(i64),
}

impl Val {
    fn json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Str(s) | Val::Guid(s) => Value::String(s.clone()),
            Val::Int(i) => json!(i),
            Val::Dbl(d) => json!(d),
            Val::Bool(b) => json!(b),
            Val::DateTime(ms) => Value::String(format!("/Date({ms})/")),
        }
    }
    /// The v4 JSON form (ISO dates instead of `/Date(ms)/`).
    fn json_v4(&self) -> Value {
        match self {
            Val::DateTime(ms) => Value::String(iso(*ms)),
            other => other.json(),
        }
    }
    /// The URL literal form, for `$skiptoken`.
    fn literal(&self) -> String {
        match self {
            Val::Null => "null".into(),
            Val::Str(s) => format!("'{}'", s.replace('\'', "''")),
            Val::Int(i) => i.to_string(),
            Val::Dbl(d) => format!("{d}d"),
            Val::Bool(b) => b.to_string(),
            Val::Guid(g) => format!("guid'{g}'"),
            Val::DateTime(ms) => format!("datetime'{}'", iso(*ms).trim_end_matches('Z')),
        }
    }
    fn clr(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Str(_) => "System.String",
            Val::Int(_) => "System.Int32",
            Val::Dbl(_) => "System.Double",
            Val::Bool(_) => "System.Boolean",
            Val::Guid(_) => "System.Guid",
            Val::DateTime(_) => "System.DateTime",
        }
    }
}

/// Total order used by `$orderby` and `$skiptoken` (nulls first, as SQL Server sorts them).
fn cmp_vals(a: &Val, b: &Val) -> Ordering {
    match (a, b) {
        (Val::Null, Val::Null) => Ordering::Equal,
        (Val::Null, _) => Ordering::Less,
        (_, Val::Null) => Ordering::Greater,
        (Val::Int(x), Val::Int(y)) => x.cmp(y),
        (Val::Int(x), Val::Dbl(y)) => (*x as f64).total_cmp(y),
        (Val::Dbl(x), Val::Int(y)) => x.total_cmp(&(*y as f64)),
        (Val::Dbl(x), Val::Dbl(y)) => x.total_cmp(y),
        (Val::Str(x), Val::Str(y)) => x.cmp(y),
        (Val::Guid(x), Val::Guid(y)) => x.cmp(y),
        (Val::Bool(x), Val::Bool(y)) => x.cmp(y),
        (Val::DateTime(x), Val::DateTime(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

fn comparable(a: &Val, b: &Val) -> bool {
    matches!(
        (a, b),
        (Val::Null, _)
            | (_, Val::Null)
            | (Val::Int(_) | Val::Dbl(_), Val::Int(_) | Val::Dbl(_))
            | (Val::Str(_), Val::Str(_))
            | (Val::Guid(_), Val::Guid(_))
            | (Val::Bool(_), Val::Bool(_))
            | (Val::DateTime(_), Val::DateTime(_))
    )
}

pub(crate) type Row = Vec<Val>;

struct Rng(u64);
impl Rng {
    fn new(seed: u64, division: i64, what: &str, i: u64) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for b in what.as_bytes().iter().chain(division.to_le_bytes().iter()).chain(i.to_le_bytes().iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Rng(h)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// A stable GUID for row `i` of `what` in `division`.
fn guid(seed: u64, division: i64, what: &str, i: u64) -> String {
    let mut r = Rng::new(seed, division, what, i);
    let a = r.next();
    let b = r.next();
    let hex = format!("{a:016x}{b:016x}");
    // Version 4, variant 10xx, as .NET's Guid.NewGuid().
    let v = format!("4{}", &hex[13..16]);
    let var = ["8", "9", "a", "b"][(b & 3) as usize];
    format!("{}-{}-{}-{}{}-{}", &hex[0..8], &hex[8..12], v, var, &hex[17..20], &hex[20..32])
}

/// 2024-01-01T00:00:00Z.
const DATA_EPOCH_MS: i64 = 1_704_067_200_000;

fn generate(rows: Rows, seed: u64, division: i64, n: usize) -> Vec<Row> {
    let mut out: Vec<Row> = (0..n as u64)
        .map(|i| match rows {
            Rows::Accounts => {
                let mut r = Rng::new(seed, division, "Account", i);
                let name = format!(
                    "{} {} {}",
                    r.pick(&[
                        "Bakkerij",
                        "Garage",
                        "Installatiebedrijf",
                        "Café",
                        "Drukkerij",
                        "Adviesbureau",
                        "Transport",
                        "Bouwbedrijf",
                        "Kapsalon",
                        "Tuincentrum"
                    ]),
                    r.pick(&[
                        "De Vries",
                        "Jansen",
                        "Bakker",
                        "Visser",
                        "Smit",
                        "Meijer",
                        "De Boer",
                        "Mulder",
                        "'t Hoekje",
                        "Van Dijk",
                        "Peeters",
                        "Maes"
                    ]),
                    r.pick(&["B.V.", "V.O.F.", "& Zn.", "BV"]),
                );
                let (city, country) = [
                    ("Amsterdam", "NL"),
                    ("Rotterdam", "NL"),
                    ("Utrecht", "NL"),
                    ("Delft", "NL"),
                    ("Zwolle", "NL"),
                    ("Groningen", "NL"),
                    ("Eindhoven", "NL"),
                    ("Antwerpen", "BE"),
                    ("Gent", "BE"),
                ][r.below(9) as usize];
                let created = DATA_EPOCH_MS + (i as i64) * 3_600_000;
                vec![
                    Val::Guid(guid(seed, division, "Account", i)),
                    Val::Str(format!("{:>18}", i + 1)),
                    Val::Str(name),
                    Val::Str(city.into()),
                    Val::Str(country.into()),
                    Val::Str(r.pick(&["C", "C", "C", "P", "S", "A"]).into()),
                    Val::Bool(r.below(5) == 0),
                    Val::Int(division),
                    Val::DateTime(created),
                    Val::DateTime(created + r.below(86_400_000 * 30) as i64),
                ]
            }
            Rows::TransactionLines => {
                let mut r = Rng::new(seed, division, "TransactionLine", i);
                let entry = 24_000_001 + (i / 4) as i64;
                let day = (i / 4) as i64 % 730;
                let date = DATA_EPOCH_MS + day * 86_400_000;
                let year = 2024 + day / 365;
                let period = 1 + (day % 365) / 31;
                let cents = r.below(1_000_000) as i64 - 500_000;
                let account =
                    if r.below(4) == 0 { Val::Null } else { Val::Guid(guid(seed, division, "Account", r.below(200))) };
                vec![
                    Val::Guid(guid(seed, division, "TransactionLine", i)),
                    account,
                    Val::Dbl(cents as f64 / 100.0),
                    Val::DateTime(date),
                    Val::Str(format!(
                        "{} {}",
                        r.pick(&["Verkoopfactuur", "Inkoopfactuur", "Bankafschrift", "Memoriaal"]),
                        entry
                    )),
                    Val::Int(division),
                    Val::Int(entry),
                    Val::Int(period.min(12)),
                    Val::Int(year),
                    Val::Str(r.pick(&["1300", "1600", "8000", "4000", "2200", "1100"]).into()),
                    Val::DateTime(date + r.below(86_400_000) as i64),
                ]
            }
        })
        .collect();
    out.sort_by(|a, b| cmp_vals(&a[0], &b[0]));
    out
}

/// Generated rows per (division, kind), built on first use.
#[derive(Default)]
pub(crate) struct Data {
    pub config: crate::SimDataset,
    cache: HashMap<(i64, Rows), Arc<Vec<Row>>>,
}

impl Data {
    pub(crate) fn new(config: crate::SimDataset) -> Data {
        Data { config, cache: HashMap::new() }
    }
    pub(crate) fn rows(&mut self, division: i64, rows: Rows) -> Arc<Vec<Row>> {
        let (seed, n) = match rows {
            Rows::Accounts => (self.config.seed, self.config.accounts),
            Rows::TransactionLines => (self.config.seed, self.config.transaction_lines),
        };
        self.cache.entry((division, rows)).or_insert_with(|| Arc::new(generate(rows, seed, division, n))).clone()
    }
    pub(crate) fn ids(&mut self, division: i64, path: &str) -> Vec<String> {
        let Some((service, name)) = path.rsplit_once('/') else { return Vec::new() };
        let Some(set) = entity_set(service, name) else { return Vec::new() };
        self.rows(division, set.rows)
            .iter()
            .map(|r| match &r[0] {
                Val::Guid(g) => g.clone(),
                _ => String::new(),
            })
            .collect()
    }
}

// ---------------------------------------------------------------- errors

pub(crate) fn odata_error(status: StatusCode, msg: &str) -> Response {
    let body = json!({"error": {"code": "", "message": {"lang": "", "value": msg}}}).to_string();
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

type QResult<T> = Result<T, String>;

// ---------------------------------------------------------------- $filter

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Lit(Val),
    Open,
    Close,
    Comma,
}

fn tokenize(s: &str) -> QResult<Vec<(usize, Tok)>> {
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let quoted = |start: usize| -> QResult<(String, usize)> {
        // b[start] == '\''
        let mut j = start + 1;
        let mut v = String::new();
        loop {
            match b.get(j) {
                None => return Err(format!("There is an unterminated string literal at position {start} in '{s}'.")),
                Some('\'') if b.get(j + 1) == Some(&'\'') => {
                    v.push('\'');
                    j += 2;
                }
                Some('\'') => return Ok((v, j + 1)),
                Some(c) => {
                    v.push(*c);
                    j += 1;
                }
            }
        }
    };
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            out.push((start, Tok::Open));
            i += 1;
        } else if c == ')' {
            out.push((start, Tok::Close));
            i += 1;
        } else if c == ',' {
            out.push((start, Tok::Comma));
            i += 1;
        } else if c == '\'' {
            let (v, j) = quoted(i)?;
            out.push((start, Tok::Lit(Val::Str(v))));
            i = j;
        } else if c.is_ascii_digit() || (c == '-' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            let mut j = i + 1;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == '.') {
                j += 1;
            }
            let text: String = b[i..j].iter().collect();
            let suffix = b.get(j).copied();
            let val = if matches!(suffix, Some('d' | 'D' | 'm' | 'M' | 'f' | 'F')) || text.contains('.') {
                if matches!(suffix, Some('d' | 'D' | 'm' | 'M' | 'f' | 'F')) {
                    j += 1;
                }
                Val::Dbl(text.parse().map_err(|_| format!("Syntax error at position {start} in '{s}'."))?)
            } else {
                if matches!(suffix, Some('L' | 'l')) {
                    j += 1;
                }
                Val::Int(text.parse().map_err(|_| format!("Syntax error at position {start} in '{s}'."))?)
            };
            out.push((start, Tok::Lit(val)));
            i = j;
        } else if c.is_alphabetic() || c == '_' || c == '$' {
            let mut j = i + 1;
            while j < b.len() && (b[j].is_alphanumeric() || b[j] == '_' || b[j] == '/' || b[j] == '.') {
                j += 1;
            }
            let word: String = b[i..j].iter().collect();
            if b.get(j) == Some(&'\'') && matches!(word.to_ascii_lowercase().as_str(), "guid" | "datetime") {
                let (v, k) = quoted(j)?;
                let lit = if word.eq_ignore_ascii_case("guid") {
                    parse_guid(&v).map(Val::Guid)
                } else {
                    parse_datetime(&v).map(Val::DateTime)
                };
                out.push((
                    start,
                    Tok::Lit(lit.ok_or_else(|| {
                        format!("Unrecognized '{word}' literal '{word}'{v}'' at '{start}' in '{s}'.")
                    })?),
                ));
                i = k;
                continue;
            }
            let tok = match word.as_str() {
                "true" => Tok::Lit(Val::Bool(true)),
                "false" => Tok::Lit(Val::Bool(false)),
                "null" => Tok::Lit(Val::Null),
                _ => Tok::Ident(word),
            };
            out.push((start, tok));
            i = j;
        } else {
            return Err(format!("Syntax error: character '{c}' is not valid at position {start} in '{s}'."));
        }
    }
    Ok(out)
}

fn parse_guid(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    let ok = s.len() == 36
        && s.char_indices().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() });
    ok.then_some(s)
}

/// `yyyy-mm-ddThh:mm[:ss[.fffffff]]` (UTC) → unix ms.
fn parse_datetime(s: &str) -> Option<i64> {
    let s = s.trim().trim_end_matches('Z');
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, dd) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let hh: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next().map(|x| x.parse().ok()).unwrap_or(Some(0.0))?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&dd) || hh > 23 || mi > 59 || !(0.0..60.0).contains(&sec) {
        return None;
    }
    Some(days_from_civil(y, m, dd) * 86_400_000 + hh * 3_600_000 + mi * 60_000 + (sec * 1000.0) as i64)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn iso(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60)
}

#[derive(Clone, Debug)]
enum Expr {
    Lit(Val),
    Prop(usize), // property index
    Not(Box<Expr>),
    Bin(usize, String, Box<Expr>, Box<Expr>),
    Call(usize, String, Vec<Expr>),
}

struct Parser<'a> {
    toks: Vec<(usize, Tok)>,
    i: usize,
    ty: &'a EntityType,
    src: &'a str,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|(_, t)| t)
    }
    fn pos(&self) -> usize {
        self.toks.get(self.i).map(|(p, _)| *p).unwrap_or(self.src.len())
    }
    fn keyword(&self, words: &[&str]) -> Option<String> {
        match self.peek() {
            Some(Tok::Ident(w)) if words.contains(&w.as_str()) => Some(w.clone()),
            _ => None,
        }
    }
    fn or(&mut self) -> QResult<Expr> {
        let mut l = self.and()?;
        while let Some(op) = self.keyword(&["or"]) {
            let p = self.pos();
            self.i += 1;
            let r = self.and()?;
            l = Expr::Bin(p, op, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn and(&mut self) -> QResult<Expr> {
        let mut l = self.not()?;
        while let Some(op) = self.keyword(&["and"]) {
            let p = self.pos();
            self.i += 1;
            let r = self.not()?;
            l = Expr::Bin(p, op, Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn not(&mut self) -> QResult<Expr> {
        if self.keyword(&["not"]).is_some() {
            self.i += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }
    fn cmp(&mut self) -> QResult<Expr> {
        let l = self.primary()?;
        if let Some(op) = self.keyword(&["eq", "ne", "gt", "ge", "lt", "le"]) {
            let p = self.pos();
            self.i += 1;
            let r = self.primary()?;
            return Ok(Expr::Bin(p, op, Box::new(l), Box::new(r)));
        }
        Ok(l)
    }
    fn primary(&mut self) -> QResult<Expr> {
        let p = self.pos();
        let syntax = |p: usize, src: &str| format!("Syntax error at position {p} in '{src}'.");
        match self.toks.get(self.i).cloned() {
            Some((_, Tok::Open)) => {
                self.i += 1;
                let e = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err(format!("')' or operator expected at position {} in '{}'.", self.pos(), self.src));
                }
                self.i += 1;
                Ok(e)
            }
            Some((_, Tok::Lit(v))) => {
                self.i += 1;
                Ok(Expr::Lit(v))
            }
            Some((_, Tok::Ident(w))) => {
                self.i += 1;
                if self.peek() == Some(&Tok::Open) {
                    let f = w.to_ascii_lowercase();
                    if !["substringof", "startswith", "endswith", "tolower", "toupper", "length"].contains(&f.as_str())
                    {
                        return Err(format!("Unknown function '{w}' at position {p}."));
                    }
                    self.i += 1;
                    let mut args = vec![self.or()?];
                    while self.peek() == Some(&Tok::Comma) {
                        self.i += 1;
                        args.push(self.or()?);
                    }
                    if self.peek() != Some(&Tok::Close) {
                        return Err(format!("')' or ',' expected at position {} in '{}'.", self.pos(), self.src));
                    }
                    self.i += 1;
                    return Ok(Expr::Call(p, f, args));
                }
                if w.contains('/') {
                    return Err(format!("Filtering on a navigation property is not supported: '{w}' at position {p}."));
                }
                match self.ty.props.iter().position(|(n, _)| *n == w) {
                    Some(ix) => Ok(Expr::Prop(ix)),
                    None => {
                        Err(format!("No property '{w}' exists in type '{NAMESPACE}.{}' at position {p}.", self.ty.name))
                    }
                }
            }
            _ => Err(syntax(p, self.src)),
        }
    }
}

fn parse_filter(src: &str, ty: &EntityType) -> QResult<Expr> {
    let mut p = Parser { toks: tokenize(src)?, i: 0, ty, src };
    let e = p.or()?;
    if p.i != p.toks.len() {
        return Err(format!("Syntax error at position {} in '{src}'.", p.pos()));
    }
    // Type-check once on a row of nulls-by-type, so that a bad filter fails even on an empty set.
    let sample: Row = ty
        .props
        .iter()
        .map(|(_, t)| match t {
            EdmType::Guid => Val::Guid(String::new()),
            EdmType::String => Val::Str(String::new()),
            EdmType::Int32 => Val::Int(0),
            EdmType::Double => Val::Dbl(0.0),
            EdmType::Boolean => Val::Bool(false),
            EdmType::DateTime => Val::DateTime(0),
        })
        .collect();
    match eval(&e, &sample)? {
        Val::Bool(_) => Ok(e),
        _ => Err(format!("Expression of type '{}' expected at position 0 in '{src}'.", "System.Boolean")),
    }
}

fn eval(e: &Expr, row: &Row) -> QResult<Val> {
    Ok(match e {
        Expr::Lit(v) => v.clone(),
        Expr::Prop(ix) => row[*ix].clone(),
        Expr::Not(x) => match eval(x, row)? {
            Val::Bool(b) => Val::Bool(!b),
            Val::Null => Val::Null,
            other => return Err(format!("Operator 'not' incompatible with operand type '{}'.", other.clr())),
        },
        Expr::Bin(p, op, l, r) => {
            let (a, b) = (eval(l, row)?, eval(r, row)?);
            match op.as_str() {
                "and" | "or" => match (&a, &b) {
                    (Val::Bool(x), Val::Bool(y)) => Val::Bool(if op == "and" { *x && *y } else { *x || *y }),
                    _ => {
                        return Err(format!(
                            "Operator '{op}' incompatible with operand types '{}' and '{}' at position {p}.",
                            a.clr(),
                            b.clr()
                        ));
                    }
                },
                _ => {
                    if !comparable(&a, &b) {
                        return Err(format!(
                            "Operator '{op}' incompatible with operand types '{}' and '{}' at position {p}.",
                            a.clr(),
                            b.clr()
                        ));
                    }
                    if matches!(a, Val::Null) || matches!(b, Val::Null) {
                        let same = matches!(a, Val::Null) == matches!(b, Val::Null);
                        return Ok(Val::Bool(match op.as_str() {
                            "eq" => same,
                            "ne" => !same,
                            _ => false,
                        }));
                    }
                    let o = cmp_vals(&a, &b);
                    Val::Bool(match op.as_str() {
                        "eq" => o == Ordering::Equal,
                        "ne" => o != Ordering::Equal,
                        "gt" => o == Ordering::Greater,
                        "ge" => o != Ordering::Less,
                        "lt" => o == Ordering::Less,
                        _ => o != Ordering::Greater,
                    })
                }
            }
        }
        Expr::Call(p, f, args) => {
            let vals = args.iter().map(|a| eval(a, row)).collect::<QResult<Vec<_>>>()?;
            let s = |v: &Val| match v {
                Val::Str(s) => Ok(Some(s.clone())),
                Val::Null => Ok(None),
                other => Err(format!(
                    "Function '{f}' does not accept an argument of type '{}' at position {p}.",
                    other.clr()
                )),
            };
            let arity = |n: usize| {
                if vals.len() == n {
                    Ok(())
                } else {
                    Err(format!("Function '{f}' takes {n} argument(s) at position {p}."))
                }
            };
            match f.as_str() {
                "tolower" | "toupper" => {
                    arity(1)?;
                    match s(&vals[0])? {
                        Some(x) => Val::Str(if f == "tolower" { x.to_lowercase() } else { x.to_uppercase() }),
                        None => Val::Null,
                    }
                }
                "length" => {
                    arity(1)?;
                    s(&vals[0])?.map(|x| Val::Int(x.chars().count() as i64)).unwrap_or(Val::Null)
                }
                _ => {
                    arity(2)?;
                    let (a, b) = (s(&vals[0])?, s(&vals[1])?);
                    let (Some(a), Some(b)) = (a, b) else { return Ok(Val::Bool(false)) };
                    Val::Bool(match f.as_str() {
                        "substringof" => b.contains(&a),
                        "startswith" => a.starts_with(&b),
                        _ => a.ends_with(&b),
                    })
                }
            }
        }
    })
}

// ---------------------------------------------------------------- query options

struct Query {
    select: Option<Vec<usize>>,
    filter: Option<Expr>,
    orderby: Vec<(usize, bool)>,
    top: Option<usize>,
    skip: usize,
    skiptoken: Option<Vec<Val>>,
    inlinecount: bool,
    /// The options as given, in order, for the next link (without `$skip`, `$skiptoken`, `$top`).
    carry: Vec<(String, String)>,
}

fn prop_index(ty: &EntityType, name: &str, pos: usize) -> QResult<usize> {
    ty.props
        .iter()
        .position(|(n, _)| *n == name)
        .ok_or_else(|| format!("No property '{name}' exists in type '{NAMESPACE}.{}' at position {pos}.", ty.name))
}

fn parse_query(raw: &str, set: &EntitySet, v4: bool) -> QResult<Query> {
    let ty = set.ty();
    let mut q = Query {
        select: None,
        filter: None,
        orderby: Vec::new(),
        top: None,
        skip: 0,
        skiptoken: None,
        inlinecount: false,
        carry: Vec::new(),
    };
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        let (k, v) = (k.into_owned(), v.into_owned());
        if !k.starts_with('$') {
            continue;
        }
        match k.as_str() {
            "$select" => {
                let mut ix = Vec::new();
                let mut pos = 0;
                for part in v.split(',') {
                    let name = part.trim();
                    if name == "*" {
                        ix.extend(0..ty.props.len());
                    } else if name.contains('/') {
                        return Err(format!("Only properties specified in $expand can be traversed in $select query options. Selected item: '{name}'."));
                    } else {
                        ix.push(prop_index(ty, name, pos)?);
                    }
                    pos += part.len() + 1;
                }
                ix.dedup();
                q.select = Some(ix);
            }
            "$filter" => q.filter = Some(parse_filter(&v, ty)?),
            "$orderby" => {
                let mut pos = 0;
                for part in v.split(',') {
                    let mut words = part.split_whitespace();
                    let name = words.next().unwrap_or("");
                    let desc = match words.next() {
                        None | Some("asc") => false,
                        Some("desc") => true,
                        Some(w) => return Err(format!("Syntax error at position {pos}: '{w}' is not 'asc' or 'desc'.")),
                    };
                    q.orderby.push((prop_index(ty, name, pos)?, desc));
                    pos += part.len() + 1;
                }
            }
            "$top" => {
                q.top = Some(v.trim().parse().map_err(|_| format!("Invalid value '{v}' for $top query option found. The $top query option requires a non-negative integer value."))?)
            }
            "$skip" if set.bulk => {
                return Err("The $skip option is not supported on this endpoint. Use the $skiptoken in the __next link to page.".into());
            }
            "$skip" => {
                q.skip = v.trim().parse().map_err(|_| format!("Invalid value '{v}' for $skip query option found. The $skip query option requires a non-negative integer value."))?
            }
            "$skiptoken" => q.skiptoken = Some(parse_skiptoken(&v)?),
            "$inlinecount" if !v4 => match v.as_str() {
                "allpages" => q.inlinecount = true,
                "none" => {}
                _ => return Err(format!("Invalid value '{v}' for $inlinecount query option found. Valid values are 'allpages' and 'none'.")),
            },
            "$count" if v4 => q.inlinecount = v.eq_ignore_ascii_case("true"),
            "$format" => {
                if !v.eq_ignore_ascii_case("json") {
                    return Err(format!("Unsupported $format '{v}': the simulator answers JSON only."));
                }
            }
            "$expand" => return Err("$expand is not supported by this simulator's entity sets.".into()),
            other => {
                return Err(format!(
                    "The query parameter '{other}' begins with a system-reserved '$' character but is not recognized."
                ));
            }
        }
        if !matches!(k.as_str(), "$skip" | "$skiptoken" | "$top") {
            q.carry.push((k, v));
        }
    }
    if set.bulk && q.select.is_none() {
        return Err(
            "$select is mandatory on bulk endpoints: name the properties you need, e.g. $select=ID,Name.".into()
        );
    }
    if let Some(tok) = &q.skiptoken
        && tok.len() != q.orderby.len() + 1
    {
        return Err("The $skiptoken does not match the $orderby of the request: use the __next link as given.".into());
    }
    Ok(q)
}

/// A `$skiptoken`: comma-separated literals (the `$orderby` values of the last row, then its key).
fn parse_skiptoken(s: &str) -> QResult<Vec<Val>> {
    let bad = || format!("Invalid $skiptoken '{s}': use the __next link as given.");
    let toks = tokenize(s).map_err(|_| bad())?;
    let mut out = Vec::new();
    let mut expect_value = true;
    for (_, t) in toks {
        match (t, expect_value) {
            (Tok::Lit(v), true) => {
                out.push(v);
                expect_value = false;
            }
            (Tok::Comma, false) => expect_value = true,
            _ => return Err(bad()),
        }
    }
    if expect_value || !matches!(out.last(), Some(Val::Guid(_))) {
        return Err(bad());
    }
    Ok(out)
}

/// Applies the query to the rows; returns (page, total after filter, next-link query or None).
fn run(q: &Query, rows: &[Row], set: &EntitySet) -> QResult<(Vec<Row>, usize, Option<String>)> {
    let mut matched: Vec<&Row> = Vec::with_capacity(rows.len());
    for r in rows {
        let keep = match &q.filter {
            Some(f) => eval(f, r)? == Val::Bool(true),
            None => true,
        };
        if keep {
            matched.push(r);
        }
    }
    let total = matched.len();
    let key = |r: &Row| -> Vec<Val> {
        let mut k: Vec<Val> = q.orderby.iter().map(|(ix, _)| r[*ix].clone()).collect();
        k.push(r[0].clone());
        k
    };
    let cmp_keys = |a: &[Val], b: &[Val]| -> Ordering {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let desc = q.orderby.get(i).is_some_and(|(_, d)| *d);
            let o = cmp_vals(x, y);
            let o = if desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    };
    if !q.orderby.is_empty() {
        matched.sort_by(|a, b| cmp_keys(&key(a), &key(b)));
    }
    let mut start = 0;
    if let Some(tok) = &q.skiptoken {
        start = matched.partition_point(|r| cmp_keys(&key(r), tok) != Ordering::Greater);
    }
    start = (start + q.skip).min(matched.len());
    let end_by_top = q.top.map(|t| start.saturating_add(t)).unwrap_or(usize::MAX).min(matched.len());
    let end = (start + set.page_size).min(end_by_top);
    let page: Vec<Row> = matched[start..end].iter().map(|r| (*r).clone()).collect();
    let next = if end < end_by_top {
        let last = key(matched[end - 1]);
        let token = last.iter().map(Val::literal).collect::<Vec<_>>().join(",");
        let mut parts: Vec<String> = q.carry.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
        if let Some(t) = q.top {
            parts.push(format!("$top={}", t - (end - start)));
        }
        parts.push(format!("$skiptoken={}", enc(&token)));
        Some(parts.join("&"))
    } else {
        None
    };
    Ok((page, total, next))
}

/// Percent-encodes what must be encoded in a query value, keeping OData's readable characters (`'`, `,`, `$`,
/// `(`, `)`, `:`) as Exact's own links show them.
fn enc(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b'\''
            | b','
            | b'$'
            | b'('
            | b')'
            | b':'
            | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

// ---------------------------------------------------------------- handlers

fn set_rows_stats(s: &Shared, rows: usize) {
    let mut g = s.lock();
    g.stats.api_pages_served += 1;
    g.stats.api_rows_served += rows as u64;
}

fn with(mut r: Response, hs: Vec<(&'static str, String)>) -> Response {
    for (k, v) in hs {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

fn json_ok(body: Value) -> Response {
    let mut r = (StatusCode::OK, body.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r.headers_mut().insert("DataServiceVersion", HeaderValue::from_static("2.0;"));
    r
}

/// `GET /api/v1/{division}/{service}/{EntitySet}` (v2, Exact's shape).
pub(crate) async fn get_entity_set(
    s: Arc<Shared>,
    set: &'static EntitySet,
    division: String,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (hs, division) = match server::data_call(&s, &headers, &division) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ty = set.ty();
    let raw = uri.query().unwrap_or("");
    let q = match parse_query(raw, set, false) {
        Ok(q) => q,
        Err(e) => return with(odata_error(StatusCode::BAD_REQUEST, &e), hs),
    };
    let rows = s.lock().data.rows(division, set.rows);
    let (page, total, next) = match run(&q, &rows, set) {
        Ok(v) => v,
        Err(e) => return with(odata_error(StatusCode::BAD_REQUEST, &e), hs),
    };
    let base = format!("{}/api/v1/{division}/{}", s.base_url, set.service);
    let results: Vec<Value> = page
        .iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert(
                "__metadata".into(),
                json!({"uri": format!("{base}/{}({})", set.name, r[0].literal()), "type": format!("{NAMESPACE}.{}", ty.name)}),
            );
            for (ix, (name, _)) in ty.props.iter().enumerate() {
                if q.select.as_ref().is_none_or(|sel| sel.contains(&ix)) {
                    o.insert((*name).into(), r[ix].json());
                }
            }
            Value::Object(o)
        })
        .collect();
    set_rows_stats(&s, results.len());
    let mut d = Map::new();
    if q.inlinecount {
        d.insert("__count".into(), Value::String(total.to_string()));
    }
    d.insert("results".into(), Value::Array(results));
    if let Some(n) = next {
        d.insert("__next".into(), Value::String(format!("{base}/{}?{n}", set.name)));
    }
    with(json_ok(json!({ "d": d })), hs)
}

/// `GET /api/v1/{division}/{service}/{EntitySet}/$count`: the number of rows matching `$filter`, as text.
pub(crate) async fn get_count(
    s: Arc<Shared>,
    set: &'static EntitySet,
    division: String,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (hs, division) = match server::data_call(&s, &headers, &division) {
        Ok(v) => v,
        Err(r) => return r,
    };
    // $count ignores paging; $select is not needed even on bulk endpoints.
    let mut only_filter = String::new();
    for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if k == "$filter" {
            only_filter = format!("$filter={}", enc(&v));
        }
    }
    let probe = EntitySet { service: set.service, name: set.name, rows: set.rows, page_size: usize::MAX, bulk: false };
    let q = match parse_query(&only_filter, &probe, false) {
        Ok(q) => q,
        Err(e) => return with(odata_error(StatusCode::BAD_REQUEST, &e), hs),
    };
    let rows = s.lock().data.rows(division, set.rows);
    match run(&q, &rows, &probe) {
        Ok((_, total, _)) => {
            let mut r = (StatusCode::OK, total.to_string()).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain;charset=utf-8"));
            with(r, hs)
        }
        Err(e) => with(odata_error(StatusCode::BAD_REQUEST, &e), hs),
    }
}

fn xml(body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml;charset=utf-8"));
    r.headers_mut().insert("DataServiceVersion", HeaderValue::from_static("1.0;"));
    r
}

/// The container name of a service, as WCF names it after the service class (`crm` → `CRMService`…).
fn container_name(service: &str) -> String {
    let mut out = String::new();
    for part in service.split('/') {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            out.push(f.to_ascii_uppercase());
            out.push_str(c.as_str());
        }
    }
    format!("{out}Service")
}

/// The EDMX of one service (OData v2 CSDL, as WCF Data Services writes it).
pub(crate) fn metadata_document(service: &str) -> String {
    let sets: Vec<&EntitySet> = ENTITY_SETS.iter().filter(|e| e.service == service).collect();
    let mut types: Vec<&EntityType> = Vec::new();
    for s in &sets {
        if !types.iter().any(|t| t.name == s.ty().name) {
            types.push(s.ty());
        }
    }
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\" standalone=\"yes\"?>\n\
         <edmx:Edmx Version=\"1.0\" xmlns:edmx=\"http://schemas.microsoft.com/ado/2007/06/edmx\">\n\
         <edmx:DataServices xmlns:m=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\" m:DataServiceVersion=\"2.0\">\n",
    );
    x.push_str(&format!(
        "<Schema Namespace=\"{NAMESPACE}\" xmlns:d=\"http://schemas.microsoft.com/ado/2007/08/dataservices\" xmlns:m=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\" xmlns=\"http://schemas.microsoft.com/ado/2008/09/edm\">\n"
    ));
    for t in &types {
        x.push_str(&format!("<EntityType Name=\"{}\">\n<Key><PropertyRef Name=\"ID\" /></Key>\n", t.name));
        for (name, ty) in t.props {
            let nullable = if *name == "ID" { "false" } else { "true" };
            x.push_str(&format!("<Property Name=\"{name}\" Type=\"{}\" Nullable=\"{nullable}\" />\n", ty.edm()));
        }
        x.push_str("</EntityType>\n");
    }
    x.push_str(&format!(
        "<EntityContainer Name=\"{}\" m:IsDefaultEntityContainer=\"true\">\n",
        container_name(service)
    ));
    for s in &sets {
        x.push_str(&format!("<EntitySet Name=\"{}\" EntityType=\"{NAMESPACE}.{}\" />\n", s.name, s.ty().name));
    }
    x.push_str("</EntityContainer>\n</Schema>\n</edmx:DataServices>\n</edmx:Edmx>\n");
    x
}

/// `GET /api/v1/{division}/{service}/$metadata`.
pub(crate) async fn get_metadata(
    s: Arc<Shared>,
    service: &'static str,
    division: String,
    headers: HeaderMap,
) -> Response {
    let (hs, _) = match server::data_call(&s, &headers, &division) {
        Ok(v) => v,
        Err(r) => return r,
    };
    with(xml(metadata_document(service)), hs)
}

/// `GET /api/v1/{division}/{service}/`: the service document (AtomPub XML, or verbose JSON when asked).
pub(crate) async fn get_service_document(
    s: Arc<Shared>,
    service: &'static str,
    division: String,
    headers: HeaderMap,
) -> Response {
    let (hs, division) = match server::data_call(&s, &headers, &division) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let names: Vec<&str> = ENTITY_SETS.iter().filter(|e| e.service == service).map(|e| e.name).collect();
    let wants_json = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("json"));
    let r = if wants_json {
        json_ok(json!({"d": {"EntitySets": names}}))
    } else {
        let mut x = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\" standalone=\"yes\"?>\n<service xml:base=\"{}/api/v1/{division}/{service}/\" xmlns=\"http://www.w3.org/2007/app\" xmlns:atom=\"http://www.w3.org/2005/Atom\">\n<workspace>\n<atom:title>Default</atom:title>\n",
            s.base_url
        );
        for n in names {
            x.push_str(&format!("<collection href=\"{n}\"><atom:title>{n}</atom:title></collection>\n"));
        }
        x.push_str("</workspace>\n</service>\n");
        let mut r = xml(x);
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/atomsvc+xml;charset=utf-8"));
        r
    };
    with(r, hs)
}

/// `GET /api/v1/{division}/{service}/{EntitySet}(guid'…')`: one row, `{"d": {…}}`.
pub(crate) async fn get_entity(
    s: Arc<Shared>,
    service: &'static str,
    division: String,
    segment: String,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (hs, division) = match server::data_call(&s, &headers, &division) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let parsed = segment.strip_suffix(')').and_then(|x| x.split_once('('));
    let Some((name, key)) = parsed else {
        return with(
            odata_error(StatusCode::NOT_FOUND, &format!("Resource not found for the segment '{segment}'.")),
            hs,
        );
    };
    let Some(set) = entity_set(service, name) else {
        return with(odata_error(StatusCode::NOT_FOUND, &format!("Resource not found for the segment '{name}'.")), hs);
    };
    let key = match parse_skiptoken(key) {
        Ok(mut k) if k.len() == 1 => k.remove(0),
        _ => {
            return with(
                odata_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Bad Request - Error in query syntax: key '{key}' is not a guid literal."),
                ),
                hs,
            );
        }
    };
    let mut probe = match parse_query(uri.query().unwrap_or(""), &EntitySet { bulk: false, ..*set }, false) {
        Ok(q) => q,
        Err(e) => return with(odata_error(StatusCode::BAD_REQUEST, &e), hs),
    };
    probe.filter = None;
    let rows = s.lock().data.rows(division, set.rows);
    let Ok(ix) = rows.binary_search_by(|r| cmp_vals(&r[0], &key)) else {
        return with(
            odata_error(StatusCode::NOT_FOUND, &format!("Resource not found for the segment '{segment}'.")),
            hs,
        );
    };
    let ty = set.ty();
    let mut o = Map::new();
    let base = format!("{}/api/v1/{division}/{}", s.base_url, set.service);
    o.insert(
        "__metadata".into(),
        json!({"uri": format!("{base}/{}({})", set.name, key.literal()), "type": format!("{NAMESPACE}.{}", ty.name)}),
    );
    for (i, (n, _)) in ty.props.iter().enumerate() {
        if probe.select.as_ref().is_none_or(|sel| sel.contains(&i)) {
            o.insert((*n).into(), rows[ix][i].json());
        }
    }
    set_rows_stats(&s, 1);
    with(json_ok(json!({ "d": o })), hs)
}

/// NOT EXACT: an OData v4-style view of the same rows for providers that speak v4 (`value`,
/// `@odata.nextLink`, `@odata.count`, ISO dates), under `/odata4/{division}/{service}/{EntitySet}`. It shares
/// the authentication and rate limits of the Exact API so that one simulator serves both kinds of paging.
pub(crate) async fn get_entity_set_v4(
    s: Arc<Shared>,
    set: &'static EntitySet,
    division: String,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (hs, division) = match server::data_call(&s, &headers, &division) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ty = set.ty();
    let q = match parse_query(uri.query().unwrap_or(""), set, true) {
        Ok(q) => q,
        Err(e) => return with(odata_error(StatusCode::BAD_REQUEST, &e), hs),
    };
    let rows = s.lock().data.rows(division, set.rows);
    let (page, total, next) = match run(&q, &rows, set) {
        Ok(v) => v,
        Err(e) => return with(odata_error(StatusCode::BAD_REQUEST, &e), hs),
    };
    let base = format!("{}/odata4/{division}/{}", s.base_url, set.service);
    let value: Vec<Value> = page
        .iter()
        .map(|r| {
            let mut o = Map::new();
            for (ix, (name, _)) in ty.props.iter().enumerate() {
                if q.select.as_ref().is_none_or(|sel| sel.contains(&ix)) {
                    o.insert((*name).into(), r[ix].json_v4());
                }
            }
            Value::Object(o)
        })
        .collect();
    set_rows_stats(&s, value.len());
    let mut body = Map::new();
    body.insert("@odata.context".into(), Value::String(format!("{base}/$metadata#{}", set.name)));
    if q.inlinecount {
        body.insert("@odata.count".into(), json!(total));
    }
    body.insert("value".into(), Value::Array(value));
    if let Some(n) = next {
        body.insert("@odata.nextLink".into(), Value::String(format!("{base}/{}?{n}", set.name)));
    }
    let mut r = json_ok(Value::Object(body));
    r.headers_mut().remove("DataServiceVersion");
    r.headers_mut().insert("OData-Version", HeaderValue::from_static("4.0"));
    with(r, hs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(iso(DATA_EPOCH_MS), "2024-01-01T00:00:00Z");
        assert_eq!(parse_datetime("2024-01-01T00:00"), Some(DATA_EPOCH_MS));
        assert_eq!(
            parse_datetime("2024-02-29T12:30:15"),
            Some(DATA_EPOCH_MS + (59 * 24 + 12) * 3_600_000 + 30 * 60_000 + 15_000)
        );
        assert_eq!(parse_datetime("2024-13-01T00:00"), None);
    }

    #[test]
    fn guids_are_stable_and_well_formed() {
        let g = guid(1, 123456, "Account", 7);
        assert_eq!(g, guid(1, 123456, "Account", 7));
        assert_ne!(g, guid(1, 123456, "Account", 8));
        assert_ne!(g, guid(1, 654321, "Account", 7));
        assert!(parse_guid(&g).is_some(), "{g}");
        assert_eq!(&g[14..15], "4");
    }

    #[test]
    fn filters_parse_and_type_check() {
        let ty = &ACCOUNT;
        assert!(parse_filter("Name eq 'x' and (City eq 'Delft' or IsSupplier eq true)", ty).is_ok());
        assert!(parse_filter("Created gt datetime'2024-01-02T00:00'", ty).is_ok());
        assert!(parse_filter("substringof('Bak', Name) eq true", ty).is_ok());
        assert!(parse_filter("startswith(Name, 'Bak')", ty).is_ok());
        let e = parse_filter("ID eq 3", ty).unwrap_err();
        assert_eq!(e, "Operator 'eq' incompatible with operand types 'System.Guid' and 'System.Int32' at position 3.");
        assert!(parse_filter("Nope eq 1", ty).unwrap_err().contains("No property 'Nope'"));
        assert!(parse_filter("Name", ty).is_err(), "not a boolean");
        assert!(parse_filter("Name eq 'unterminated", ty).is_err());
    }

    #[test]
    fn skiptokens() {
        let t = parse_skiptoken("'O''Brien',guid'12345678-aaaa-bbbb-cccc-ddddeeeeffff'").unwrap();
        assert_eq!(t, vec![Val::Str("O'Brien".into()), Val::Guid("12345678-aaaa-bbbb-cccc-ddddeeeeffff".into())]);
        assert!(parse_skiptoken("guid'nope'").is_err());
        assert!(parse_skiptoken("1").is_err(), "the key comes last");
    }
}
