//! The edge proxy's config (`deploy/compose/nginx.conf`), read as text: no
//! nginx runs here. Its access log must never hold a query string (tokens
//! may ride in one), and its own error pages must answer in the API's
//! error shape.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use serde_json::Value;
use std::path::PathBuf;

fn nginx_conf() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/compose/nginx.conf");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The config's directives, one per `;`, comments dropped, whitespace
/// folded. Blocks' `{` and `}` end a directive too.
fn directives(conf: &str) -> Vec<String> {
    let uncommented: String = conf
        .lines()
        .map(|line| match line.find('#') {
            // A `#` inside a quoted string is not a comment.
            Some(at) if line[..at].matches('\'').count() % 2 == 0 => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join(" ");
    uncommented
        .split([';', '{', '}'])
        .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|d| !d.is_empty())
        .collect()
}

/// The variables that hold the request line, its query string or the
/// Referer (which holds the previous page's query string).
const LEAKY: [&str; 7] = [
    "$request ",
    "$request\"",
    "$request_uri",
    "$args",
    "$query_string",
    "$arg_",
    "$http_referer",
];

#[test]
fn the_access_log_never_holds_a_query_string() {
    let conf = nginx_conf();
    let directives = directives(&conf);
    let logs: Vec<&String> = directives
        .iter()
        .filter(|d| d.starts_with("access_log ") && d.as_str() != "access_log off")
        .collect();
    assert!(!logs.is_empty(), "nginx logs requests somewhere");
    for log in logs {
        // Without a format name nginx uses `combined`: "$request" and the
        // Referer, query strings and all.
        let parts: Vec<&str> = log.split(' ').collect();
        let format = parts
            .get(2)
            .unwrap_or_else(|| panic!("`{log}` uses the default format, query strings included"));
        let definition = directives
            .iter()
            .find(|d| d.starts_with(&format!("log_format {format} ")))
            .unwrap_or_else(|| panic!("no log_format {format}"));
        for variable in LEAKY {
            assert!(
                !definition.contains(variable),
                "log_format {format} writes {variable}: {definition}"
            );
        }
        assert!(definition.contains("$uri"), "the path is still logged");
    }
}

#[test]
fn the_check_finds_a_leaky_log_format() {
    let leaky =
        "log_format main '$remote_addr \"$request\" $status';\naccess_log /dev/stdout main;";
    let definition = directives(leaky)
        .into_iter()
        .find(|d| d.starts_with("log_format"))
        .unwrap();
    assert!(LEAKY.iter().any(|v| definition.contains(v)), "{definition}");
}

/// The body and status the named location `@name` returns.
fn named_location_return(conf: &str, name: &str) -> (u16, Value) {
    let start = conf
        .find(&format!("location @{name} {{"))
        .unwrap_or_else(|| panic!("no location @{name}"));
    // The block up to its `return` directive's end (its JSON has braces).
    let block = &conf[start..start + conf[start..].find("';").expect("a quoted return") + 2];
    assert!(
        block.contains("default_type application/json;"),
        "@{name} answers JSON"
    );
    let at = block.find("return ").expect("the location returns") + "return ".len();
    let (status, rest) = block[at..].split_once(' ').unwrap();
    let body = rest.trim().trim_end_matches(';');
    let body = body.strip_prefix('\'').unwrap().strip_suffix('\'').unwrap();
    (status.parse().unwrap(), serde_json::from_str(body).unwrap())
}

#[test]
fn nginx_errors_answer_in_the_api_error_shape() {
    let conf = nginx_conf();
    let directives = directives(&conf);
    for (status, code) in [
        (413, "payload_too_large"),
        (502, "unavailable"),
        (504, "unavailable"),
    ] {
        let page = directives
            .iter()
            .find(|d| {
                d.starts_with("error_page ") && d.split(' ').any(|part| part == status.to_string())
            })
            .unwrap_or_else(|| panic!("no error_page for {status}"));
        let name = page
            .rsplit(' ')
            .next()
            .and_then(|target| target.strip_prefix('@'))
            .unwrap_or_else(|| panic!("{page} names a location"));
        let (returned, body) = named_location_return(&conf, name);
        assert_eq!(returned, status, "@{name}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    }
}
