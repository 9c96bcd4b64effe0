//! The claims registry (`docs/claims.toml`): every registered number in README.md and docs/ is
//! checked against the committed result it comes from. For each claim, the sentence (`text`)
//! must appear verbatim in its document, the number as printed (`shown`) in the sentence, and
//! the value at `path` in the JSON `file` must round to it: within half a unit of its last
//! printed digit (thousands separators ignored; `1.6e-2` style allowed).

use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The value at `path` (`a.b[2].c`) in `json`.
fn at<'a>(json: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    let mut v = json;
    for part in path.split('.') {
        let (key, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            v = v.get(key)?;
        }
        for index in indices.split('[').filter(|s| !s.is_empty()) {
            v = v.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(v)
}

/// The number printed as `shown` and half a unit of its last digit.
fn printed(shown: &str) -> (f64, f64) {
    let plain = shown.replace(',', "");
    let (mantissa, exponent) = match plain.split_once('e') {
        Some((m, e)) => (m.to_string(), e.parse::<i32>().expect("exponent")),
        None => (plain.clone(), 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
    (plain.parse().expect("a number"), 0.5 * 10f64.powi(exponent - decimals))
}

#[test]
fn registered_claims_match_their_results() {
    let registry: toml::Table =
        std::fs::read_to_string(repo().join("docs/claims.toml")).unwrap().parse().expect("docs/claims.toml");
    let claims = registry["claim"].as_array().expect("[[claim]] entries");
    assert!(claims.len() >= 30, "{} claims", claims.len());
    let mut failures = Vec::new();
    for c in claims {
        let field = |k: &str| c.get(k).and_then(toml::Value::as_str).unwrap_or_else(|| panic!("{c}: no {k}"));
        let (id, doc, text, shown, file, path) =
            (field("id"), field("doc"), field("text"), field("shown"), field("file"), field("path"));
        let doc_text = std::fs::read_to_string(repo().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
        if !doc_text.contains(text) {
            failures.push(format!("{id}: {doc} no longer says {text:?}"));
            continue;
        }
        assert!(text.contains(shown), "{id}: {shown:?} is not in {text:?}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("{file}: {e}")))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        let Some(value) = at(&json, path).and_then(serde_json::Value::as_f64) else {
            failures.push(format!("{id}: no number at {path} in {file}"));
            continue;
        };
        let (number, half_unit) = printed(shown);
        if (value - number).abs() > half_unit * (1.0 + 1e-9) {
            failures.push(format!("{id}: {doc} shows {shown}, {file} {path} holds {value}"));
        }
    }
    assert!(failures.is_empty(), "claims that no longer hold:\n{}", failures.join("\n"));
}

#[test]
fn the_checker_rejects_what_it_should() {
    assert_eq!(printed("17,434"), (17434.0, 0.5));
    assert_eq!(printed("0.63"), (0.63, 0.005));
    let (v, h) = printed("9.6e-2");
    assert!((v - 0.096).abs() < 1e-15 && (h - 0.0005).abs() < 1e-15);
    let json: serde_json::Value = serde_json::json!({"a": {"b": [1.0, {"c": [2.5, 3.5]}]}});
    assert_eq!(at(&json, "a.b[1].c[1]").and_then(serde_json::Value::as_f64), Some(3.5));
    assert_eq!(at(&json, "a.b[2]"), None);
    assert_eq!(at(&json, "a.x"), None);
}
