//! Unit tests through the SDK's fake host (its random generator is seeded, so draws repeat).

use sluice_sdk::HeaderOp;
use sluice_sdk::testing;

use super::*;

fn plugin(config: &str) -> CanaryBalancer {
    testing::init(config).expect("valid config")
}

fn split() -> CanaryBalancer {
    plugin(r#"{"weights": {"stable": 90, "canary": 10}}"#)
}

/// The group on_request picks for `req`, and how.
fn decide(plugin: &mut CanaryBalancer, mut req: Request) -> (String, String) {
    assert!(plugin.on_request(&mut req).is_continue());
    (req.context(GROUP_KEY).unwrap().to_string(), req.context(SOURCE_KEY).unwrap().to_string())
}

fn request() -> testing::RequestBuilder {
    testing::request("GET", "/")
}

#[test]
fn the_pin_header_wins_over_the_cookie_and_the_draw() {
    let mut p = split();
    let pinned = request().header("x-canary-group", "canary").header("cookie", "canary_group=stable").build();
    assert_eq!(decide(&mut p, pinned), ("canary".into(), "header".into()));
    let spaced = request().header("X-Canary-Group", " stable ").build();
    assert_eq!(decide(&mut p, spaced), ("stable".into(), "header".into()));
}

#[test]
fn the_pin_cookie_is_found_among_other_cookies() {
    let mut p = split();
    for cookies in [
        vec!["canary_group=canary"],
        vec!["a=1; canary_group=canary; b=2"],
        vec!["a=1", "b=2;canary_group=\"canary\""],
        vec!["canary_group=unknown; canary_group=canary"],
    ] {
        let mut req = request();
        for cookie in &cookies {
            req = req.header("cookie", cookie);
        }
        assert_eq!(decide(&mut p, req.build()), ("canary".into(), "cookie".into()), "{cookies:?}");
    }
}

#[test]
fn unknown_pins_are_ignored_and_the_group_is_drawn() {
    let mut p = split();
    for req in [
        request().header("x-canary-group", "beta").build(),
        request().header("x-canary-group", "").build(),
        request().header("cookie", "canary_group=beta").build(),
        request().header("cookie", "canary_groupX=canary; xcanary_group=canary").build(),
        request().header("x-other", "canary").build(),
    ] {
        assert_eq!(decide(&mut p, req).1, "draw");
    }
}

#[test]
fn draws_follow_the_weights() {
    let mut p = split();
    let mut canary = 0;
    for _ in 0..10_000 {
        let (group, _) = decide(&mut p, request().build());
        match group.as_str() {
            "canary" => canary += 1,
            "stable" => {}
            other => panic!("drew {other}"),
        }
    }
    assert!((800..1200).contains(&canary), "10% of 10 000 draws, got {canary}");

    // A group of weight 0 is never drawn, but can still be pinned.
    let mut p = plugin(r#"{"weights": {"stable": 1, "canary": 0}}"#);
    for _ in 0..100 {
        assert_eq!(decide(&mut p, request().build()).0, "stable");
    }
    assert_eq!(decide(&mut p, request().header("x-canary-group", "canary").build()).0, "canary");
}

#[test]
fn a_drawn_group_is_pinned_by_a_cookie_on_the_response() {
    let mut p = split();
    let mut resp = testing::response(200)
        .header("set-cookie", "session=abc")
        .context(GROUP_KEY, "canary")
        .context(SOURCE_KEY, "draw")
        .build();
    assert!(p.on_response(&mut resp).is_continue());
    assert_eq!(
        resp.headers("set-cookie").collect::<Vec<_>>(),
        ["session=abc", "canary_group=canary; Path=/; HttpOnly; SameSite=Lax"],
        "the backend's cookies are kept"
    );
    assert_eq!(
        resp.changes().headers,
        [HeaderOp::Append("set-cookie".into(), "canary_group=canary; Path=/; HttpOnly; SameSite=Lax".into())]
    );
}

#[test]
fn pinned_or_undecided_requests_get_no_cookie() {
    let mut p = split();
    for (group, source) in [(Some("canary"), Some("header")), (Some("canary"), Some("cookie")), (None, None)] {
        let mut resp = testing::response(200);
        if let (Some(group), Some(source)) = (group, source) {
            resp = resp.context(GROUP_KEY, group).context(SOURCE_KEY, source);
        }
        let mut resp = resp.build();
        assert!(p.on_response(&mut resp).is_continue());
        assert!(resp.changes().headers.is_empty(), "{source:?}");
    }
    // A group the config does not know (set by someone else) is not echoed into a cookie.
    let mut resp = testing::response(200).context(GROUP_KEY, "x; Domain=evil").context(SOURCE_KEY, "draw").build();
    p.on_response(&mut resp);
    assert!(resp.changes().headers.is_empty());
}

#[test]
fn pins_can_be_renamed_or_turned_off() {
    let mut p = plugin(r#"{"weights": {"stable": 1, "canary": 1}, "pin_header": "X-Track", "pin_cookie": "track"}"#);
    assert_eq!(decide(&mut p, request().header("x-track", "canary").build()).1, "header");
    assert_eq!(decide(&mut p, request().header("cookie", "track=canary").build()).1, "cookie");
    assert_eq!(decide(&mut p, request().header("x-canary-group", "canary").build()).1, "draw");

    let mut p = plugin(r#"{"weights": {"stable": 1, "canary": 1}, "pin_header": "", "pin_cookie": ""}"#);
    let req = request().header("x-canary-group", "canary").header("cookie", "canary_group=canary").build();
    assert_eq!(decide(&mut p, req).1, "draw");
    let mut resp = testing::response(200).context(GROUP_KEY, "canary").context(SOURCE_KEY, "draw").build();
    p.on_response(&mut resp);
    assert!(resp.changes().headers.is_empty(), "no cookie without a pin_cookie");
}

fn backends() -> Vec<Backend> {
    [
        ("10.0.0.1:80", 1, "stable"),
        ("10.0.0.2:80", 3, "canary"),
        ("10.0.0.3:80", 1, "stable"),
        ("10.0.0.4:80", 1, "canary"),
    ]
    .map(|(address, weight, zone)| Backend { address: address.into(), weight, zone: zone.into() })
    .to_vec()
}

fn select(p: &mut CanaryBalancer, group: Option<&str>, backends: &[Backend]) -> Selection {
    let mut req = request();
    if let Some(group) = group {
        req = req.context(GROUP_KEY, group);
    }
    p.select_backend(&req.build(), backends)
}

#[test]
fn select_backend_picks_within_the_group_by_weight() {
    let mut p = split();
    let mut counts = [0; 4];
    for _ in 0..4_000 {
        match select(&mut p, Some("canary"), &backends()) {
            Selection::Backend(i) => counts[i] += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((counts[0], counts[2]), (0, 0), "only canary backends: {counts:?}");
    assert!((2_800..3_200).contains(&counts[1]), "weight 3 of 4: {counts:?}");

    let mut stable = [0; 4];
    for _ in 0..1_000 {
        if let Selection::Backend(i) = select(&mut p, Some("stable"), &backends()) {
            stable[i] += 1;
        }
    }
    assert_eq!(stable[0] + stable[2], 1_000);
    assert!(stable[0] > 400 && stable[2] > 400, "{stable:?}");
}

#[test]
fn select_backend_falls_back_when_the_group_has_no_healthy_backend() {
    let mut p = split();
    testing::reset();
    let stable_only: Vec<Backend> = backends().into_iter().filter(|b| b.zone == "stable").collect();
    assert_eq!(select(&mut p, Some("canary"), &stable_only), Selection::Default);
    assert_eq!(
        testing::logs(),
        [(
            host::Level::Warn,
            r#"no healthy backend in canary group "canary"; falling back to any healthy backend"#.into()
        )]
    );
    assert_eq!(select(&mut p, Some("canary"), &[]), Selection::Default);
}

#[test]
fn select_backend_leaves_requests_without_a_group_to_the_upstream() {
    let mut p = split();
    testing::reset();
    assert_eq!(select(&mut p, None, &backends()), Selection::Default);
    assert!(testing::logs().is_empty());
}

#[test]
fn a_single_candidate_needs_no_randomness() {
    assert_eq!(pick_weighted([5].into_iter()), Some(0));
    assert_eq!(pick_weighted([0, 7, 0].into_iter()), Some(1));
    assert_eq!(pick_weighted([0, 0].into_iter()), None);
    assert_eq!(pick_weighted([].into_iter()), None);
    assert_eq!(pick_weighted([u64::MAX, u64::MAX].into_iter()).map(|i| i < 2), Some(true), "no overflow");
}

#[test]
fn invalid_configs_are_refused_with_a_clear_message() {
    let cases = [
        ("{}", "invalid plugin config: missing field `weights` at line 1 column 2"),
        (
            r#"{"weights": {}}"#,
            "canary-balancer: weights is empty; give each group (zone) a weight, e.g. weights = { stable = 90, canary = 10 }",
        ),
        (r#"{"weights": {"a": 0, "b": 0}}"#, "canary-balancer: every weight is 0; at least one group must get traffic"),
        (
            r#"{"weights": {"a b": 1}}"#,
            "canary-balancer: group \"a b\" in weights must be made of letters, digits, '-', '_' and '.'",
        ),
        (
            r#"{"weights": {"a": 1}, "group_by": "header"}"#,
            "canary-balancer: group_by = \"header\" is not supported; the only option is \"zone\"",
        ),
        (
            r#"{"weights": {"a": 1}, "pin_header": "x y"}"#,
            "canary-balancer: pin_header \"x y\" is not a valid header name",
        ),
        (
            r#"{"weights": {"a": 1}, "pin_cookie": "a=b"}"#,
            "canary-balancer: pin_cookie \"a=b\" is not a valid cookie name",
        ),
    ];
    for (config, expected) in cases {
        assert_eq!(testing::init::<CanaryBalancer>(config).err().as_deref(), Some(expected), "{config}");
    }
    for config in [r#"{"weights": {"a": -1}}"#, r#"{"weights": {"a": 1}, "sticky": true}"#, r#"{"weights": [1]}"#] {
        assert!(testing::init::<CanaryBalancer>(config).is_err(), "{config}");
    }
}
