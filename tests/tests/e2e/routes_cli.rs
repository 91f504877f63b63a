//! `chainkeeper routes`: every row of the route table, as the SAM template check (infra/validate.sh) reads it.

use chainkeeper::api::console::GATEWAY_ROUTES;
use chainkeeper::api::routes::ROUTES;
use serde_json::Value;

#[test]
fn routes_prints_every_row_of_the_table_in_json_and_text() {
    let json: Value = serde_json::from_str(&chainkeeper_e2e::cli(&["routes", "--json"]).unwrap()).unwrap();
    let rows = json.as_array().expect("a JSON array");
    assert_eq!(rows.len(), ROUTES.len() + GATEWAY_ROUTES.len());
    for (row, (method, path)) in rows[ROUTES.len()..].iter().zip(GATEWAY_ROUTES) {
        assert_eq!((row["method"].as_str(), row["path"].as_str()), (Some(*method), Some(*path)));
        assert_eq!((row["function"].as_str(), row["public"].as_bool()), (Some("manage"), Some(true)));
    }
    for (row, r) in rows.iter().zip(ROUTES) {
        assert_eq!(row["method"], r.method);
        assert_eq!(row["path"], r.path);
        assert_eq!(row["function"], r.function);
        assert_eq!(row["public"], r.public);
        assert_eq!(row["resource"], r.resource);
    }
    let text = chainkeeper_e2e::cli(&["routes"]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), ROUTES.len() + GATEWAY_ROUTES.len());
    assert!(lines.contains(&"POST\t/console/{*proxy}\tmanage\tpublic\tconsole"), "{text}");
    assert!(lines.contains(&"GET\t/v1/callback\tcallback\tpublic\tcallback"), "{text}");
    assert!(lines.iter().all(|l| l.split('\t').count() == 5), "{text}");
}
