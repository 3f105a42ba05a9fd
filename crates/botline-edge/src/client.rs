//! Who the client is: the socket peer, or what trusted proxies say it is.
//!
//! The peer is the [`ClientAddr`] request extension if an entry point inserted one (the ingest
//! Lambda, from API Gateway's `requestContext.http.sourceIp`), else axum's
//! `ConnectInfo<SocketAddr>`. When the peer is one of the operator's trusted proxies, the
//! proxy's forwarding header is read right to left: each hop was appended by the hop after it,
//! so addresses are believed only while the hop that reported them is trusted, and the first
//! untrusted address is the client. Anything left of it is the client's own word and is never
//! read. A peer that is not a trusted proxy is the client, whatever headers it sent.

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, header};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// The client's address as the entry point saw it, for entry points without a socket peer.
///
/// The ingest Lambda inserts it from the API Gateway request context before the router runs:
///
/// ```
/// # use botline_edge::ClientAddr;
/// # let mut request = axum::http::Request::new(());
/// # let source_ip = "149.154.167.1";
/// if let Ok(ip) = source_ip.parse() {
///     request.extensions_mut().insert(ClientAddr(ip));
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

/// The forwarding header that the trusted proxies write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (AWS ALB, nginx, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// An address as the rest of the crate compares it: IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is the
/// IPv4 address it carries.
pub fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// The peer: the [`ClientAddr`] extension, else the socket peer; `None` when the server was
/// not started with `into_make_service_with_connect_info::<SocketAddr>()` and no entry point
/// supplied an address.
pub fn peer_addr<B>(request: &Request<B>) -> Option<IpAddr> {
    let extensions = request.extensions();
    extensions
        .get::<ClientAddr>()
        .map(|client| client.0)
        .or_else(|| {
            extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip())
        })
        .map(canonical)
}

/// The client behind `peer`, given the trusted proxies and the header they write.
///
/// When every hop is trusted, the left-most one is the client. An entry that cannot be read
/// (`unknown`, an obfuscated identifier, garbage) ends the walk at the trusted hop that
/// reported it, so a client cannot hide behind an unreadable entry.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet], which: ProxyHeader) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |addr: IpAddr| trusted.iter().any(|net| net.contains(&addr));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for hop in hops_right_to_left(headers, which) {
        let Some(addr) = hop else {
            return client;
        };
        client = addr;
        if !is_trusted(addr) {
            return addr;
        }
    }
    client
}

/// The hops of the forwarding header, right-most first, across all its header lines in order;
/// `None` for an entry that is not an address.
fn hops_right_to_left(headers: &HeaderMap, which: ProxyHeader) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    match which {
        ProxyHeader::XForwardedFor => {
            for value in headers.get_all("x-forwarded-for") {
                match value.to_str() {
                    Ok(text) => hops.extend(text.split(',').map(parse_node)),
                    Err(_) => hops.push(None),
                }
            }
        }
        ProxyHeader::Forwarded => {
            for value in headers.get_all(header::FORWARDED) {
                match value.to_str() {
                    Ok(text) => {
                        hops.extend(split_unquoted(text, ',').into_iter().map(forwarded_for))
                    }
                    Err(_) => hops.push(None),
                }
            }
        }
    }
    hops.reverse();
    hops
}

/// The address of one RFC 7239 `forwarded-element`'s `for` parameter.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    split_unquoted(element, ';').into_iter().find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        parse_node(&unquote(value.trim()))
    })
}

/// An address, with or without a port: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Ok(addr) = node.parse::<IpAddr>() {
        return Some(canonical(addr));
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    let inner = node.strip_prefix('[')?.split_once(']')?.0;
    inner.parse::<IpAddr>().ok().map(canonical)
}

/// `text` split at `separator`s outside quoted strings.
fn split_unquoted(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A token as is; a quoted string without its quotes and escapes.
fn unquote(value: &str) -> String {
    let Some(inner) = value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const XFF: ProxyHeader = ProxyHeader::XForwardedFor;

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_says() {
        let h = headers("x-forwarded-for", &["149.154.167.1"]);
        assert_eq!(
            resolve(ip("6.6.6.6"), &h, &nets(&["10.0.0.0/8"]), XFF),
            ip("6.6.6.6")
        );
        assert_eq!(resolve(ip("6.6.6.6"), &h, &[], XFF), ip("6.6.6.6"));
    }

    #[test]
    fn walks_right_to_left_past_trusted_hops() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        let h = headers("x-forwarded-for", &["1.1.1.1, 149.154.167.1, 10.0.0.2"]);
        assert_eq!(
            resolve(ip("127.0.0.1"), &h, &trusted, XFF),
            ip("149.154.167.1")
        );
        // The client appended a hop itself: the right-most untrusted one is what the proxy saw.
        let h = headers("x-forwarded-for", &["149.154.167.1, 6.6.6.6"]);
        assert_eq!(resolve(ip("127.0.0.1"), &h, &trusted, XFF), ip("6.6.6.6"));
        // Several header lines are one list, in order.
        let h = headers("x-forwarded-for", &["6.6.6.6", "149.154.167.1"]);
        assert_eq!(
            resolve(ip("127.0.0.1"), &h, &trusted, XFF),
            ip("149.154.167.1")
        );
    }

    #[test]
    fn all_trusted_or_absent_means_the_left_most_trusted_hop() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        assert_eq!(
            resolve(ip("127.0.0.1"), &HeaderMap::new(), &trusted, XFF),
            ip("127.0.0.1")
        );
        let h = headers("x-forwarded-for", &["10.0.0.9, 10.0.0.2"]);
        assert_eq!(resolve(ip("127.0.0.1"), &h, &trusted, XFF), ip("10.0.0.9"));
    }

    #[test]
    fn unreadable_hop_stops_at_the_hop_that_reported_it() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        let h = headers("x-forwarded-for", &["149.154.167.1, garbage, 10.0.0.2"]);
        assert_eq!(resolve(ip("127.0.0.1"), &h, &trusted, XFF), ip("10.0.0.2"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        let trusted = nets(&["127.0.0.1/32"]);
        for (value, expected) in [
            ("149.154.167.1:443", "149.154.167.1"),
            ("[2001:db8::1]:1234", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("::ffff:149.154.167.1", "149.154.167.1"),
        ] {
            let h = headers("x-forwarded-for", &[value]);
            assert_eq!(
                resolve(ip("127.0.0.1"), &h, &trusted, XFF),
                ip(expected),
                "{value}"
            );
        }
        // A mapped peer is its IPv4 address, so an IPv4 trusted block matches it.
        let h = headers("x-forwarded-for", &["149.154.167.1"]);
        assert_eq!(
            resolve(ip("::ffff:127.0.0.1"), &h, &trusted, XFF),
            ip("149.154.167.1")
        );
    }

    #[test]
    fn forwarded_header() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let fwd = ProxyHeader::Forwarded;
        for (value, expected) in [
            (r#"for="[2001:db8::1]:1234""#, "2001:db8::1"),
            ("for=149.154.167.1;proto=https", "149.154.167.1"),
            (r#"For="149.154.167.1:80";by=10.0.0.1"#, "149.154.167.1"),
            (
                r#"for=6.6.6.6, for="149.154.167.1", for=10.0.0.3"#,
                "149.154.167.1",
            ),
            (r#"for="_hidden", for=10.0.0.3"#, "10.0.0.3"),
            (
                r#"for="6.6.6.6;x=\",\"", for=149.154.167.2"#,
                "149.154.167.2",
            ),
        ] {
            let h = headers("forwarded", &[value]);
            assert_eq!(
                resolve(ip("127.0.0.1"), &h, &trusted, fwd),
                ip(expected),
                "{value}"
            );
        }
        // X-Forwarded-For is not read when the proxies write Forwarded, and vice versa.
        let h = headers("x-forwarded-for", &["149.154.167.1"]);
        assert_eq!(resolve(ip("127.0.0.1"), &h, &trusted, fwd), ip("127.0.0.1"));
        let h = headers("forwarded", &["for=149.154.167.1"]);
        assert_eq!(resolve(ip("127.0.0.1"), &h, &trusted, XFF), ip("127.0.0.1"));
    }
}
