//! Routing through the real binary: bucketing (docs/routing.md#bucketing), overrides, missing identity,
//! route order, default upstream, path-prefix segments and salts. Which upstream answered is
//! read from the `x-upstream` response header each test upstream sets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{bucket, config, find_identities, find_identity, Rampart, Upstream};

/// Concurrent requests in flight when sending many identities.
const CONCURRENCY: usize = 32;

async fn upstreams() -> (Upstream, Upstream) {
    (
        Upstream::start("stable").await,
        Upstream::start("canary").await,
    )
}

/// A single `checkout` route on `/checkout` with identity `header:x-user-id`, a canary split
/// of `percent`, and `extra` (route keys, indented by 4 spaces) appended to the route.
fn checkout_config(stable: &Upstream, canary: &Upstream, percent: &str, extra: &str) -> String {
    let routes = format!(
        "routes:\n  - name: checkout\n    match: {{path_prefix: /checkout}}\n    identity: [header:x-user-id]\n    split:\n      - {{backend: canary, percent: {percent}}}\n{extra}"
    );
    config("stable", &[stable, canary], &routes)
}

/// Sends `GET /checkout` once per identity (header `x-user-id`), `CONCURRENCY` at a time;
/// returns the answering upstream per identity.
async fn backends_for(rampart: &Rampart, ids: &[String]) -> HashMap<String, String> {
    let ids = Arc::new(ids.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let url = rampart.url("/checkout");
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (ids, next, url) = (ids.clone(), next.clone(), url.clone());
        let client = rampart.client().clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                let resp = common::get(&client, &url, &[("x-user-id", id)]).await;
                assert_eq!(resp.status, 200, "identity {id}: {}", resp.text());
                out.push((id.clone(), resp.upstream()));
            }
            out
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), ids.len());
    all
}

#[test]
fn bucket_oracle_matches_the_documented_golden_vectors() {
    assert_eq!(
        murmur3::murmur3_32(&mut &b"hello"[..], 0).unwrap(),
        613_153_351
    );
    assert_eq!(bucket("checkout", "alice"), 3009);
    assert_eq!(bucket("checkout", "bob"), 6439);
    assert_eq!(bucket("cart", "alice"), 8814);
    assert_eq!(bucket("checkout", ""), 2472);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_split_sends_about_ten_percent_of_20000_identities_each_exactly_where_its_bucket_says(
) {
    let (stable, canary) = upstreams().await;
    let rampart = Rampart::start(&checkout_config(&stable, &canary, "10", "")).await;
    let ids: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();

    let got = backends_for(&rampart, &ids).await;

    let canaries = got.values().filter(|b| *b == "canary").count();
    let share = canaries as f64 / ids.len() as f64;
    assert!(
        (0.09..=0.11).contains(&share),
        "canary share {share} ({canaries} of {})",
        ids.len()
    );
    let misplaced: Vec<String> = ids
        .iter()
        .filter_map(|id| {
            let b = bucket("checkout", id);
            let want = if b < 1000 { "canary" } else { "stable" };
            (got[id] != want).then(|| format!("{id} (bucket {b}) -> {}", got[id]))
        })
        .collect();
    assert!(
        misplaced.is_empty(),
        "{} identities not where documented bucketing (docs/routing.md#bucketing) puts them, e.g. {:?}",
        misplaced.len(),
        &misplaced[..misplaced.len().min(10)]
    );
    assert_eq!(stable.hits() + canary.hits(), ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_identity_repeated_50_times_always_gets_the_same_backend() {
    let (stable, canary) = upstreams().await;
    let rampart = Rampart::start(&checkout_config(&stable, &canary, "10", "")).await;
    let in_canary = find_identities("checkout", "sticky-c", 3, |b| b < 1000);
    let in_stable = find_identities("checkout", "sticky-s", 3, |b| b >= 1000);

    for (ids, want) in [(&in_canary, "canary"), (&in_stable, "stable")] {
        for id in ids {
            for n in 0..50 {
                let got = rampart
                    .get("/checkout", &[("x-user-id", id)])
                    .await
                    .upstream();
                assert_eq!(got, want, "identity {id}, request {n}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_percent_only_adds_users_to_canary() {
    let (stable, canary) = upstreams().await;
    let ids: Vec<String> = (0..4_000).map(|i| format!("grow-{i}")).collect();

    let at_10 = {
        let rampart = Rampart::start(&checkout_config(&stable, &canary, "10", "")).await;
        backends_for(&rampart, &ids).await
    };
    let at_20 = {
        let rampart = Rampart::start(&checkout_config(&stable, &canary, "20", "")).await;
        backends_for(&rampart, &ids).await
    };

    let left: Vec<&String> = ids
        .iter()
        .filter(|id| at_10[*id] == "canary" && at_20[*id] != "canary")
        .collect();
    assert!(
        left.is_empty(),
        "identities that left canary when raising 10 -> 20 %: {left:?}"
    );
    let c10 = at_10.values().filter(|b| *b == "canary").count();
    let c20 = at_20.values().filter(|b| *b == "canary").count();
    assert!(
        c10 > 0 && c20 > c10,
        "canary counts: {c10} at 10 %, {c20} at 20 %"
    );
    for id in &ids {
        let want = if bucket("checkout", id) < 2000 {
            "canary"
        } else {
            "stable"
        };
        assert_eq!(at_20[id], want, "identity {id} at 20 %");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_header_naming_a_backend_sends_the_request_to_that_backend() {
    let (stable, canary) = upstreams().await;
    let extra = "    overrides:\n      force_header: x-rampart-force\n";
    let rampart = Rampart::start(&checkout_config(&stable, &canary, "10", extra)).await;
    let stable_user = find_identity("checkout", "force-s", |b| b >= 1000);
    let canary_user = find_identity("checkout", "force-c", |b| b < 1000);

    let forced_canary = rampart
        .get(
            "/checkout",
            &[("x-user-id", &stable_user), ("x-rampart-force", "canary")],
        )
        .await;
    assert_eq!(forced_canary.upstream(), "canary");
    let forced_stable = rampart
        .get(
            "/checkout",
            &[("x-user-id", &canary_user), ("x-rampart-force", "stable")],
        )
        .await;
    assert_eq!(forced_stable.upstream(), "stable");
    // Without the header, the split decides.
    let unforced = rampart
        .get("/checkout", &[("x-user-id", &stable_user)])
        .await;
    assert_eq!(unforced.upstream(), "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_allowlist_sends_listed_identities_to_their_backend_whatever_their_bucket() {
    let (stable, canary) = upstreams().await;
    // alice is bucket 3009 (stable at 10 %); pinned_stable is in the canary range.
    let pinned_stable = find_identity("checkout", "pin", |b| b < 1000);
    let extra = format!(
        "    overrides:\n      identities: {{canary: [alice], stable: [{pinned_stable}]}}\n"
    );
    let rampart = Rampart::start(&checkout_config(&stable, &canary, "10", &extra)).await;

    let alice = rampart.get("/checkout", &[("x-user-id", "alice")]).await;
    assert_eq!(
        alice.upstream(),
        "canary",
        "alice is allowlisted for canary"
    );
    let bob = rampart.get("/checkout", &[("x-user-id", "bob")]).await;
    assert_eq!(bob.upstream(), "stable", "bob (bucket 6439) is not listed");
    let pinned = rampart
        .get("/checkout", &[("x-user-id", &pinned_stable)])
        .await;
    assert_eq!(
        pinned.upstream(),
        "stable",
        "{pinned_stable} is allowlisted for stable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_override_sends_requests_with_the_matching_header_value_to_its_backend() {
    let (stable, canary) = upstreams().await;
    let extra =
        "    overrides:\n      headers: [{name: x-employee, value: \"true\", backend: canary}]\n";
    let rampart = Rampart::start(&checkout_config(&stable, &canary, "10", extra)).await;
    let user = find_identity("checkout", "emp", |b| b >= 1000);

    let employee = rampart
        .get("/checkout", &[("x-user-id", &user), ("x-employee", "true")])
        .await;
    assert_eq!(employee.upstream(), "canary");
    let other_value = rampart
        .get(
            "/checkout",
            &[("x-user-id", &user), ("x-employee", "false")],
        )
        .await;
    assert_eq!(other_value.upstream(), "stable");
    let no_header = rampart.get("/checkout", &[("x-user-id", &user)]).await;
    assert_eq!(no_header.upstream(), "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_apply_in_order_force_header_then_allowlist_then_header_override() {
    let (stable, canary) = upstreams().await;
    let extra = "    overrides:\n      force_header: x-rampart-force\n      identities: {canary: [alice], stable: [bob]}\n      headers: [{name: x-employee, value: \"true\", backend: canary}]\n";
    let rampart = Rampart::start(&checkout_config(&stable, &canary, "10", extra)).await;

    // The force header beats the allowlist.
    let alice_forced = rampart
        .get(
            "/checkout",
            &[("x-user-id", "alice"), ("x-rampart-force", "stable")],
        )
        .await;
    assert_eq!(alice_forced.upstream(), "stable");
    // The allowlist beats a header override.
    let bob_employee = rampart
        .get("/checkout", &[("x-user-id", "bob"), ("x-employee", "true")])
        .await;
    assert_eq!(bob_employee.upstream(), "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_identity_goes_to_stable_by_default() {
    let (stable, canary) = upstreams().await;
    // Everyone with an identity goes to canary, so stable can only come from missing_identity.
    let rampart = Rampart::start(&checkout_config(&stable, &canary, "100", "")).await;

    let with_id = rampart.get("/checkout", &[("x-user-id", "alice")]).await;
    assert_eq!(with_id.upstream(), "canary");
    let without = rampart.get("/checkout", &[]).await;
    assert_eq!(without.upstream(), "stable", "no x-user-id header");
    let blank = rampart.get("/checkout", &[("x-user-id", "   ")]).await;
    assert_eq!(
        blank.upstream(),
        "stable",
        "a blank header value is an absent identity"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_missing_identity_stable_sends_anonymous_requests_to_stable() {
    let (stable, canary) = upstreams().await;
    let extra = "    missing_identity: stable\n";
    let rampart = Rampart::start(&checkout_config(&stable, &canary, "100", extra)).await;

    for _ in 0..20 {
        assert_eq!(rampart.get("/checkout", &[]).await.upstream(), "stable");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_route_in_file_order_wins_when_two_prefixes_match() {
    let (stable, canary) = upstreams().await;
    let cfg = config(
        "stable",
        &[&stable, &canary],
        "
        routes:
          - name: broad
            match: {path_prefix: /shop}
            identity: [header:x-user-id]
            split:
              - {backend: canary, percent: 100}
          - name: narrow
            match: {path_prefix: /shop/cart}
            identity: [header:x-user-id]
            split:
              - {backend: canary, percent: 0}
        ",
    );
    let rampart = Rampart::start(&cfg).await;

    let resp = rampart
        .get("/shop/cart/items", &[("x-user-id", "alice")])
        .await;
    assert_eq!(resp.upstream(), "canary");
    assert_eq!(resp.echo().header("x-rampart-route"), Some("broad"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_path_goes_to_the_default_upstream() {
    let (stable, canary) = upstreams().await;
    // default_upstream is canary here so that "default" and "stable" differ; the route names
    // its stable explicitly (the docs do not say what it defaults to).
    let cfg = config(
        "canary",
        &[&stable, &canary],
        "
        routes:
          - name: checkout
            match: {path_prefix: /checkout}
            identity: [header:x-user-id]
            stable: stable
            split:
              - {backend: canary, percent: 0}
        ",
    );
    let rampart = Rampart::start(&cfg).await;

    let matched = rampart.get("/checkout", &[("x-user-id", "alice")]).await;
    assert_eq!(matched.upstream(), "stable");
    let unmatched = rampart.get("/elsewhere", &[("x-user-id", "alice")]).await;
    assert_eq!(unmatched.upstream(), "canary");
    assert_eq!(unmatched.echo().uri, "/elsewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefix_matches_whole_segments_only() {
    let (stable, canary) = upstreams().await;
    let rampart = Rampart::start(&checkout_config(&stable, &canary, "100", "")).await;

    for (path, want) in [
        ("/checkout", "canary"),
        ("/checkout/", "canary"),
        ("/checkout/x", "canary"),
        ("/checkout?step=2", "canary"),
        ("/checkoutx", "stable"),
        ("/checkout-v2", "stable"),
        ("/other/checkout", "stable"),
    ] {
        let resp = rampart.get(path, &[("x-user-id", "alice")]).await;
        assert_eq!(resp.upstream(), want, "path {path}");
        assert_eq!(
            resp.echo().uri,
            path,
            "the path reaches the upstream unchanged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salt_replaces_the_route_name_in_the_bucket_key() {
    let (stable, canary) = upstreams().await;
    let extra = "    salt: other\n";
    let rampart = Rampart::start(&checkout_config(&stable, &canary, "10", extra)).await;
    // Identities on which the salt and the route name disagree, both ways.
    let canary_by_salt = find_identities("other", "salted-c", 10, |b| b < 1000)
        .into_iter()
        .filter(|id| bucket("checkout", id) >= 1000)
        .collect::<Vec<_>>();
    let stable_by_salt = find_identities("checkout", "salted-s", 10, |b| b < 1000)
        .into_iter()
        .filter(|id| bucket("other", id) >= 1000)
        .collect::<Vec<_>>();
    assert!(!canary_by_salt.is_empty() && !stable_by_salt.is_empty());

    for id in &canary_by_salt {
        let got = rampart
            .get("/checkout", &[("x-user-id", id)])
            .await
            .upstream();
        assert_eq!(got, "canary", "{id}: bucket(other:{id}) < 1000");
    }
    for id in &stable_by_salt {
        let got = rampart
            .get("/checkout", &[("x-user-id", id)])
            .await
            .upstream();
        assert_eq!(got, "stable", "{id}: bucket(other:{id}) >= 1000");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_of_0_29_percent_covers_exactly_buckets_0_to_28() {
    let (stable, canary) = upstreams().await;
    let rampart = Rampart::start(&checkout_config(&stable, &canary, "0.29", "")).await;

    for (b, want) in [
        (0, "canary"),
        (28, "canary"),
        (29, "stable"),
        (30, "stable"),
    ] {
        let id = find_identity("checkout", "edge", |x| x == b);
        let got = rampart
            .get("/checkout", &[("x-user-id", &id)])
            .await
            .upstream();
        assert_eq!(got, want, "identity {id} has bucket {b}");
    }
}
