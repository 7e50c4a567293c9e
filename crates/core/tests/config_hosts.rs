//! What `rampart check` accepts, `run` can use: an upstream's host goes into an HTTP
//! authority as written, so a host no authority can hold is refused by validation
//! (docs/config.md#upstreams). Found by the `config` fuzz target (docs/fuzzing.md).

use rampart_core::config::parse;

fn config(url: &str) -> String {
    format!("version: 1\ndefault_upstream: stable\nupstreams:\n  stable:\n    url: '{url}'\n")
}

#[test]
fn hosts_no_http_authority_can_hold_are_refused_with_the_url_named() {
    for url in [
        "http://bücher.example:80",
        "http://a b:80",
        "https://exa\"mple:443",
        "http://a{b}:80",
        "http://a%2eb:80",
        "http://a[b:80",
    ] {
        let errors = match parse(&config(url)) {
            Ok(_) => panic!("{url} was accepted"),
            Err(e) => e.render("f.yaml"),
        };
        assert!(
            errors.contains("upstreams.stable.url") && errors.contains("host"),
            "{url}: {errors}"
        );
    }
}

#[test]
fn ascii_names_punycode_and_addresses_are_accepted_and_keep_their_authority() {
    for (url, authority) in [
        (
            "http://xn--bcher-kva.example:80",
            "xn--bcher-kva.example:80",
        ),
        ("http://127.0.0.1:3000", "127.0.0.1:3000"),
        ("https://[::1]:8443", "[::1]:8443"),
        (
            "http://Stable_Backend.svc.cluster.local",
            "stable_backend.svc.cluster.local:80",
        ),
    ] {
        let config = parse(&config(url)).unwrap_or_else(|e| panic!("{url}: {}", e.render("f")));
        assert_eq!(config.upstreams[0].authority, authority, "{url}");
    }
}
