//! Property test of broker URL lists (`amqp_gateway::broker::parse_list`,
//! which `--amqp-url` and `AMQP_URL` go through): whatever the input looks
//! like, no password of any URL in it reaches a `Display`, a `Debug` or an
//! error message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use amqp_gateway::broker::{Broker, parse_list};
use proptest::{collection, prelude::*};

/// Passwords are upper-case, and nothing else generated here is, so a
/// password found in the output can only have come from a password.
fn password() -> impl Strategy<Value = String> {
    "PW[A-Z]{10}"
}

/// Text that may sit anywhere: separators, URL punctuation, stray schemes.
fn noise() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(&["", ",", ", ", ",,", ";", " ", "@", "/", "?", "#", ":", "%", "://"][..])
            .prop_map(String::from),
        "[a-z0-9,;@/?#:% .-]{0,6}",
    ]
}

/// One entry: a URL with a password, perhaps broken by noise.
fn entry() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(&["amqp", "amqps", "AMQP", "http", "amqp:", ""][..]);
    let host = prop_oneof![
        prop::sample::select(&["node1", "127.0.0.1", "[::1]", ""][..]).prop_map(String::from),
        "[a-z]{1,5}"
    ];
    let port = prop_oneof![Just(String::new()), Just(":5672".to_owned()), Just(":x".to_owned()), ":[0-9]{1,6}"];
    let vhost =
        prop_oneof![Just("/%2f".to_owned()), Just("/".to_owned()), Just(String::new()), "/[a-z0-9,;@?#%/.:-]{0,8}"];
    (scheme, "[a-z]{0,4}", password(), noise(), host, port, vhost, noise()).prop_map(
        |(scheme, user, password, inner, host, port, vhost, tail)| {
            format!("{scheme}://{user}:{password}{inner}@{host}{port}{vhost}{tail}")
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_password_is_ever_shown(entries in collection::vec((noise(), entry()), 1..4), end in noise()) {
        let list: String = entries.iter().map(|(sep, entry)| format!("{sep}{entry}")).collect::<String>() + &end;
        let shown = match parse_list(&list) {
            Ok(nodes) => {
                let broker = Broker::cluster(nodes.clone()).unwrap();
                let each: Vec<String> = nodes.iter().map(|n| format!("{n} {n:?} {}", n.node())).collect();
                format!("{broker} {broker:?} {}", each.join(" "))
            }
            Err(error) => format!("{error} {error:?}"),
        };
        for (_, entry) in &entries {
            let password = &entry[entry.find("PW").unwrap()..][..12];
            prop_assert!(!shown.contains(password), "{list:?} showed {password}: {shown}");
        }
    }

    #[test]
    fn well_formed_lists_parse_in_order(hosts in collection::vec("[a-z]{1,8}", 1..5), password in password()) {
        let list = hosts.iter().map(|h| format!("amqp://u:{password}@{h}:5672/%2f")).collect::<Vec<_>>().join(",");
        let nodes = parse_list(&list).unwrap();
        let got: Vec<&str> = nodes.iter().map(|n| n.node()).collect();
        let want: Vec<String> = hosts.iter().map(|h| format!("{h}:5672")).collect();
        prop_assert_eq!(got, want);
    }
}
