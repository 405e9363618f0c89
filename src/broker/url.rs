//! Broker URLs, kept out of logs: [`AmqpUrl`] (one node) and
//! [`parse_list`] (the comma-separated nodes of one cluster).
//!
//! Whatever the input looks like, no password reaches a `Display`, a `Debug`
//! or an error message: a URL is shown only after it parsed into its parts
//! and its password was masked, and input that cannot be taken apart that way
//! (unparseable, several URLs run together, an `@` after the host) is refused
//! showing none of it.

use std::fmt;

use url::Url;

/// An AMQP URL whose `Debug` and `Display` hide the password, so it can be
/// logged and carried in errors without leaking the credential.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    url: String,
    redacted: String,
    node: String,
}

/// An AMQP URL was refused. Its text never contains a password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid AMQP URL {url}: {reason}")]
pub struct InvalidUrl {
    url: String,
    reason: String,
}

impl InvalidUrl {
    fn hidden(shown: &str, reason: impl Into<String>) -> Self {
        Self { url: shown.into(), reason: reason.into() }
    }

    /// An empty list.
    pub(super) fn empty() -> Self {
        Self::hidden("<empty>", "no broker URL given")
    }

    /// Names the entry of a list the error is about.
    fn in_list(mut self, position: usize, count: usize) -> Self {
        self.url = format!("{} (entry {position} of {count} in the list)", self.url);
        self
    }
}

impl AmqpUrl {
    /// Parses and checks one `amqp://` or `amqps://` URL.
    pub fn parse(url: &str) -> Result<Self, InvalidUrl> {
        // `amqp://u:p@node1/%2f;amqp://u:p2@node2/%2f` would parse as one URL
        // whose vhost holds the second one, password and all, which the
        // masking below would not hide.
        if url.split_once("://").is_some_and(|(_, rest)| rest.contains("://")) {
            return Err(InvalidUrl::hidden("<several URLs>", "separate the URLs of several broker nodes with commas"));
        }
        let parsed = Url::parse(url).map_err(|e| {
            // An unparseable URL cannot be masked field by field: show none of it.
            InvalidUrl::hidden("<unparseable>", e.to_string())
        })?;
        let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
            // `amqp:user:pass@host` parses as a path, with nothing masked.
            return Err(InvalidUrl::hidden("<without a host>", "write it as amqp://user:password@host:port/vhost"));
        };
        // An `@` past the host means the user information was not where the
        // parser looked for it (an unencoded `@` in a vhost or a query):
        // whatever it holds would be shown unmasked.
        let past_host = [Some(parsed.path()), parsed.query(), parsed.fragment()];
        if past_host.into_iter().flatten().any(|part| part.contains('@')) {
            return Err(InvalidUrl::hidden("<not shown>", "an '@' after the host: percent-encode it (%40)"));
        }
        let mut shown = parsed.clone();
        if shown.password().is_some() {
            // Cannot fail: a URL with a host can have a password.
            let _ = shown.set_password(Some("****"));
        }
        let redacted = shown.to_string();
        let default_port = match parsed.scheme() {
            "amqp" => 5672,
            "amqps" => 5671,
            _ => return Err(InvalidUrl::hidden(&redacted, "the scheme must be amqp or amqps")),
        };
        let node = format!("{host}:{}", parsed.port().unwrap_or(default_port));
        Ok(Self { url: url.to_owned(), redacted, node })
    }

    /// The URL with its password, for connecting only.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// `host:port`, naming the node in logs and metrics (no user, no vhost).
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// Parses a comma-separated list of AMQP URLs, the nodes of one cluster,
/// e.g. `amqp://u:p@node1/%2f,amqp://u:p@node2/%2f`. A single URL is a list
/// of one. A comma splits the list only where the next URL starts
/// (`,amqp://` or `,amqps://`, spaces allowed around it), so a password or a
/// vhost may hold commas.
pub fn parse_list(list: &str) -> Result<Vec<AmqpUrl>, InvalidUrl> {
    let entries = split_list(list);
    let count = entries.len();
    let mut urls = Vec::with_capacity(count);
    for (position, entry) in (1..).zip(entries) {
        let url = if entry.is_empty() {
            Err(InvalidUrl::hidden("<empty>", "an empty entry: remove the extra comma"))
        } else {
            AmqpUrl::parse(entry)
        };
        urls.push(url.map_err(|e| if count > 1 { e.in_list(position, count) } else { e })?);
    }
    Ok(urls)
}

/// Cuts `list` at every comma that a URL, another comma or the end follows;
/// entries are trimmed. A doubled or trailing comma leaves an empty entry,
/// which [`parse_list`] refuses.
fn split_list(list: &str) -> Vec<&str> {
    let starts_url = |rest: &str| {
        let rest = rest.trim_start().as_bytes();
        [&b"amqp://"[..], b"amqps://"].iter().any(|s| rest.len() >= s.len() && rest[..s.len()].eq_ignore_ascii_case(s))
    };
    let mut entries = Vec::new();
    let mut start = 0;
    for (at, _) in list.match_indices(',') {
        let rest = &list[at + 1..];
        if starts_url(rest) || rest.trim().is_empty() || rest.trim_start().starts_with(',') {
            entries.push(list[start..at].trim());
            start = at + 1;
        }
    }
    entries.push(list[start..].trim());
    entries
}

impl std::str::FromStr for AmqpUrl {
    type Err = InvalidUrl;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({})", self.redacted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_shown() {
        let url = AmqpUrl::parse("amqp://user:s3cret@broker:5672/%2f").unwrap();
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("user:****@broker"), "{shown}");
        assert_eq!(url.expose(), "amqp://user:s3cret@broker:5672/%2f");
        assert_eq!(url.node(), "broker:5672");
        assert_eq!(AmqpUrl::parse("amqps://b.example/v").unwrap().node(), "b.example:5671");
        assert_eq!(AmqpUrl::parse("amqp://[::1]:5999/v").unwrap().node(), "[::1]:5999");
    }

    #[test]
    fn a_list_is_split_where_the_next_url_starts() {
        let urls = parse_list("amqp://u:a,b@node1/%2f, AMQPS://u:c@node2:5999/x,y ,amqp://node3").unwrap();
        let nodes: Vec<&str> = urls.iter().map(AmqpUrl::node).collect();
        assert_eq!(nodes, ["node1:5672", "node2:5999", "node3:5672"]);
        assert_eq!(urls[0].expose(), "amqp://u:a,b@node1/%2f", "a comma in a password stays in it");
        assert_eq!(urls[1].expose(), "AMQPS://u:c@node2:5999/x,y");
        assert_eq!(parse_list("amqp://one/%2f").unwrap().len(), 1);
    }

    #[test]
    fn lists_that_do_not_split_cleanly_are_refused_without_showing_any_password() {
        for (list, says) in [
            ("amqp://user:s3cret@node1/%2f;amqp://user:an0ther@node2/%2f", "separate the URLs"),
            ("amqp://user:s3cret@node1/%2f amqp://user:an0ther@node2/%2f", "separate the URLs"),
            ("amqp://user:s3cret@node1/%2f,,amqp://user:an0ther@node2/%2f", "entry 2 of 3"),
            ("amqp://user:s3cret@node1/%2f,amqp://user:an0ther@node2/%2f,", "entry 3 of 3"),
            ("amqp://user:s3cret@node1/%2f,http://user:an0ther@node2/", "separate the URLs"),
            ("amqp://node1/%2f?x=user:s3cret@x", "'@' after the host"),
            ("amqp:user:s3cret@node1", "without a host"),
            ("amqp:///user:s3cret@node1/", "without a host"),
            ("amqp://node1/user:s3cret@x", "'@' after the host"),
            ("amqp://user:s3cret@[bad", "<unparseable>"),
            ("", "<empty>"),
        ] {
            let err = parse_list(list).map(|_| ()).unwrap_err().to_string();
            assert!(!err.contains("s3cret") && !err.contains("an0ther"), "{list}: {err}");
            assert!(err.contains(says), "{list}: {err}");
        }
        // The scheme error shows the entry, masked.
        let err = parse_list("http://user:s3cret@host/").unwrap_err().to_string();
        assert!(err.contains("user:****@host") && err.contains("scheme"), "{err}");
    }
}
