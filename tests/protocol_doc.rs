//! PROTOCOL.md §4 and the error catalogue (`streamhub::error::Code`) say the same: every
//! code with its HTTP status, no code missing from either, none extra.

use std::collections::BTreeSet;

use streamhub::error::Code;

/// The `(code, HTTP status)` rows of the table of §4 (`None` for `—`).
fn documented() -> Vec<(String, Option<u16>)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).expect("PROTOCOL.md");
    let start = doc.find("\n## 4. Error codes").expect("section 4");
    let end = start + doc[start..].find("\n## 5.").expect("section 5");
    doc[start..end]
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | `code` | status | when |
            let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let status = match *cells.get(2)? {
                "—" => None,
                s => Some(s.parse::<u16>().ok()?),
            };
            Some((code.to_string(), status))
        })
        .collect()
}

#[test]
fn the_error_table_of_the_protocol_is_the_catalogue() {
    let doc = documented();
    let doc_set: BTreeSet<(String, Option<u16>)> = doc.iter().cloned().collect();
    assert_eq!(doc.len(), doc_set.len(), "a row of §4 appears twice");
    let code_set: BTreeSet<(String, Option<u16>)> =
        Code::ALL.iter().map(|c| (c.as_str().to_string(), c.status())).collect();
    let missing: Vec<_> = code_set.difference(&doc_set).collect();
    let extra: Vec<_> = doc_set.difference(&code_set).collect();
    assert!(missing.is_empty(), "codes not documented in PROTOCOL.md §4: {missing:?}");
    assert!(extra.is_empty(), "rows of PROTOCOL.md §4 that are no code of src/error.rs: {extra:?}");
}
