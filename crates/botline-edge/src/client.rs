//! Who the client is: the socket peer, or what trusted proxies say it is.
//!
//! The peer is the [`ClientAddr`] request extension if an entry point inserted one (the ingest
//! Lambda, from API Gateway's `requestContext.http.sourceIp`), else axum's
//! `ConnectInfo<SocketAddr>`. When the peer is one of the operator's trusted proxies, the
//! proxy's forwarding header is read right to left: each hop was appended by the hop after it,
//! so addresses are believed only while the hop that reported them is trusted, and the first
//! untrusted address is the client. Anything left of it is the client's own word and is never
//! believed. A peer that is not a trusted proxy is the client, whatever headers it sent.
//!
//! From a trusted proxy, the forwarding header must parse, all of it, every line: a header that
//! does not ([`BadForwarding::Malformed`]), or a trusted hop that names no address
//! ([`BadForwarding::Unidentified`]), leaves the client unknown, and the request is refused
//! (400, `reason="bad_forwarding"`) rather than read as a client-chosen address or as the
//! proxy itself. A lenient reading is what lets a client's unterminated quote or stray byte
//! swallow the element the proxy appended. A trusted proxy that sends no forwarding header at
//! all is itself the client.
//!
//! - `Forwarded` (RFC 7239): `1#forwarded-element`, `forwarded-element = [forwarded-pair]
//!   *(";" [forwarded-pair])`, `forwarded-pair = token "=" value`, `value = token /
//!   quoted-string`, with RFC 7230's token, quoted-string and quoted-pair, OWS around commas
//!   only, and no parameter twice in one element. Empty list elements (`, for=192.0.2.1`, as a
//!   proxy that joins `$http_forwarded, for=$remote_addr` writes when the client sent none)
//!   are ignored, as RFC 7230 section 7 requires. Each `for` must be a `node`: IPv4, `"[IPv6]"`,
//!   `unknown` or an obfuscated `_name`, with an optional port; `:` and `[` are not token
//!   characters, so a port or an IPv6 address must be quoted. Bytes outside visible ASCII,
//!   space and tab (obs-text included) are refused.
//! - `X-Forwarded-For`: comma-separated addresses, each an IPv4 or IPv6 address with an
//!   optional port (`192.0.2.1:443`, `[2001:db8::1]:443`, `[2001:db8::1]`), OWS around commas;
//!   an empty entry, anything else in an entry, or a byte outside visible ASCII, space and tab
//!   is refused.

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, Request, header};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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

/// Why a trusted proxy's forwarding header does not tell who the client is; the request is
/// refused with 400 ([`Refusal::BadForwarding`](crate::Refusal::BadForwarding)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadForwarding {
    /// The header does not parse, anywhere in it: a syntax error, an unterminated quoted
    /// string, a byte outside visible ASCII, space and tab, a `for` that is not a node, a
    /// parameter twice in one element, an empty `Forwarded` line, an `X-Forwarded-For` entry
    /// that is empty or not an address.
    #[error("the forwarding header does not parse")]
    Malformed,
    /// A hop that the trusted proxies vouch for names no address: `for=unknown`, an
    /// obfuscated `for=_name`, or a `Forwarded` element without `for`.
    #[error("a trusted hop of the forwarding header names no address")]
    Unidentified,
}

/// The client behind `peer`, given the trusted proxies and the header they write.
///
/// A peer that is not trusted is the client, and headers are not looked at. From a trusted
/// peer, the whole header is parsed first, and a header that does not parse is
/// [`BadForwarding::Malformed`]; then its hops are walked right to left, and the first
/// untrusted address is the client. When every hop is trusted, the left-most one is the
/// client; with no forwarding header at all, the peer itself. A hop reached on the walk that
/// names no address (`unknown`, an obfuscated node, an element without `for`) is
/// [`BadForwarding::Unidentified`]: neither the client's word nor the proxy stands in for it.
pub fn resolve(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    which: ProxyHeader,
) -> Result<IpAddr, BadForwarding> {
    let peer = canonical(peer);
    let is_trusted = |addr: IpAddr| trusted.iter().any(|net| net.contains(&addr));
    if !is_trusted(peer) {
        return Ok(peer);
    }
    let mut client = peer;
    for hop in hops(headers, which)?.into_iter().rev() {
        let Hop::Addr(addr) = hop else {
            return Err(BadForwarding::Unidentified);
        };
        client = addr;
        if !is_trusted(addr) {
            return Ok(addr);
        }
    }
    Ok(client)
}

/// One hop of a forwarding header: what it says the hop before it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Addr(IpAddr),
    /// `unknown`, an obfuscated node, or a `Forwarded` element without `for`.
    Unidentified,
}

/// The hops of the forwarding header, left to right, across all its header lines in order;
/// an error if any line does not parse.
fn hops(headers: &HeaderMap, which: ProxyHeader) -> Result<Vec<Hop>, BadForwarding> {
    let mut hops = Vec::new();
    match which {
        ProxyHeader::XForwardedFor => {
            for value in headers.get_all("x-forwarded-for") {
                x_forwarded_for(value, &mut hops)?;
            }
        }
        ProxyHeader::Forwarded => {
            for value in headers.get_all(header::FORWARDED) {
                forwarded(value, &mut hops)?;
            }
        }
    }
    Ok(hops)
}

/// A header line as text: visible ASCII, space and tab only (`HeaderValue::to_str`'s rule), so
/// obs-text and any other byte are refused.
fn field_text(value: &HeaderValue) -> Result<&str, BadForwarding> {
    value.to_str().map_err(|_| BadForwarding::Malformed)
}

/// RFC 7230's optional whitespace.
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// One `X-Forwarded-For` line: addresses separated by commas, with optional whitespace around.
fn x_forwarded_for(value: &HeaderValue, hops: &mut Vec<Hop>) -> Result<(), BadForwarding> {
    for entry in field_text(value)?.split(',') {
        let addr = parse_address(entry.trim_matches(is_ows)).ok_or(BadForwarding::Malformed)?;
        hops.push(Hop::Addr(addr));
    }
    Ok(())
}

/// An address, with or without a port: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`; nothing else.
fn parse_address(entry: &str) -> Option<IpAddr> {
    if let Ok(addr) = entry.parse::<IpAddr>() {
        return Some(canonical(addr));
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    let addr = inner.parse::<Ipv6Addr>().ok()?;
    Some(canonical(IpAddr::V6(addr)))
}

/// One `Forwarded` line (RFC 7239 section 4): `1#forwarded-element`, each element's hop taken
/// from its `for`. Empty list elements are skipped (RFC 7230 section 7), but a line must hold
/// at least one element.
fn forwarded(value: &HeaderValue, hops: &mut Vec<Hop>) -> Result<(), BadForwarding> {
    let mut parser = Parser {
        text: field_text(value)?,
        at: 0,
    };
    let mut elements = 0_usize;
    loop {
        parser.skip_ows();
        match parser.peek() {
            None => break,
            Some(b',') => {
                parser.at += 1;
                continue;
            }
            Some(_) => {}
        }
        hops.push(parser.element()?);
        elements += 1;
        parser.skip_ows();
        match parser.bump() {
            None => break,
            Some(b',') => {}
            Some(_) => return Err(BadForwarding::Malformed),
        }
    }
    if elements == 0 {
        return Err(BadForwarding::Malformed);
    }
    Ok(())
}

/// A strict reader of one `Forwarded` line, already known to be visible ASCII, space and tab.
struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// `forwarded-element = [forwarded-pair] *(";" [forwarded-pair])`, where no parameter
    /// occurs twice (RFC 7239 section 4, names compared case-insensitively). Its hop is its
    /// `for` node, or [`Hop::Unidentified`] without one.
    fn element(&mut self) -> Result<Hop, BadForwarding> {
        let mut names: Vec<&'a str> = Vec::new();
        let mut hop = Hop::Unidentified;
        loop {
            if self.peek().is_some_and(is_tchar) {
                let name = self.token()?;
                if names.iter().any(|seen| seen.eq_ignore_ascii_case(name)) {
                    return Err(BadForwarding::Malformed);
                }
                names.push(name);
                if self.bump() != Some(b'=') {
                    return Err(BadForwarding::Malformed);
                }
                let value = self.value()?;
                if name.eq_ignore_ascii_case("for") {
                    hop = forwarded_node(&value)?;
                }
            }
            if self.peek() == Some(b';') {
                self.at += 1;
            } else {
                return Ok(hop);
            }
        }
    }

    /// `token = 1*tchar`.
    fn token(&mut self) -> Result<&'a str, BadForwarding> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        if self.at == start {
            return Err(BadForwarding::Malformed);
        }
        // The line is ASCII, so any index is a character boundary.
        Ok(&self.text[start..self.at])
    }

    /// `value = token / quoted-string`, a quoted string without its quotes and escapes.
    fn value(&mut self) -> Result<String, BadForwarding> {
        if self.peek() != Some(b'"') {
            return self.token().map(str::to_owned);
        }
        self.at += 1;
        let mut out = String::new();
        loop {
            match self.bump() {
                // Unterminated: the quote never closes before the line ends.
                None => return Err(BadForwarding::Malformed),
                Some(b'"') => return Ok(out),
                // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ); obs-text is refused above.
                Some(b'\\') => match self.bump() {
                    Some(escaped) => out.push(char::from(escaped)),
                    None => return Err(BadForwarding::Malformed),
                },
                // qdtext: every other byte the line may hold.
                Some(byte) => out.push(char::from(byte)),
            }
        }
    }
}

/// RFC 7230's `tchar`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// An RFC 7239 section 6 `node`: `nodename [":" node-port]`, where `nodename = IPv4address /
/// "[" IPv6address "]" / "unknown" / obfnode` and `node-port = 1*5DIGIT / obfport`.
fn forwarded_node(node: &str) -> Result<Hop, BadForwarding> {
    let bad = BadForwarding::Malformed;
    let (hop, port) = if let Some(rest) = node.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(bad)?;
        let addr = v6.parse::<Ipv6Addr>().map_err(|_| bad)?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(bad)?),
        };
        (Hop::Addr(canonical(IpAddr::V6(addr))), port)
    } else {
        let (name, port) = match node.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (node, None),
        };
        let hop = if name.eq_ignore_ascii_case("unknown") || is_obfuscated(name) {
            Hop::Unidentified
        } else {
            let addr = name.parse::<Ipv4Addr>().map_err(|_| bad)?;
            Hop::Addr(IpAddr::V4(addr))
        };
        (hop, port)
    };
    if let Some(port) = port {
        let digits = (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit());
        if !digits && !is_obfuscated(port) {
            return Err(bad);
        }
    }
    Ok(hop)
}

/// `obfnode` and `obfport`: `"_" 1*(ALPHA / DIGIT / "." / "_" / "-")`.
fn is_obfuscated(text: &str) -> bool {
    text.strip_prefix('_').is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    const FWD: ProxyHeader = ProxyHeader::Forwarded;
    const MALFORMED: Result<IpAddr, BadForwarding> = Err(BadForwarding::Malformed);
    const UNIDENTIFIED: Result<IpAddr, BadForwarding> = Err(BadForwarding::Unidentified);

    /// What a trusted proxy at 127.0.0.1, behind 10.0.0.0/8 proxies, makes of `values`.
    fn via_proxy(which: ProxyHeader, values: &[&str]) -> Result<IpAddr, BadForwarding> {
        let name = match which {
            ProxyHeader::XForwardedFor => "x-forwarded-for",
            ProxyHeader::Forwarded => "forwarded",
        };
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        resolve(ip("127.0.0.1"), &headers(name, values), &trusted, which)
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_says() {
        let h = headers("x-forwarded-for", &["149.154.167.1"]);
        assert_eq!(
            resolve(ip("6.6.6.6"), &h, &nets(&["10.0.0.0/8"]), XFF),
            Ok(ip("6.6.6.6"))
        );
        assert_eq!(resolve(ip("6.6.6.6"), &h, &[], XFF), Ok(ip("6.6.6.6")));
        // Not even a header that does not parse is looked at.
        let h = headers("forwarded", &[r#"for=149.154.167.1;x=", for=_x"#]);
        assert_eq!(
            resolve(ip("6.6.6.6"), &h, &nets(&["10.0.0.0/8"]), FWD),
            Ok(ip("6.6.6.6"))
        );
        let mut h = headers("x-forwarded-for", &["garbage,,"]);
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"149.154.167.1\xff").unwrap(),
        );
        assert_eq!(
            resolve(ip("6.6.6.6"), &h, &nets(&["10.0.0.0/8"]), XFF),
            Ok(ip("6.6.6.6"))
        );
    }

    #[test]
    fn walks_right_to_left_past_trusted_hops() {
        assert_eq!(
            via_proxy(XFF, &["1.1.1.1, 149.154.167.1, 10.0.0.2"]),
            Ok(ip("149.154.167.1"))
        );
        // The client appended a hop itself: the right-most untrusted one is what the proxy saw.
        assert_eq!(
            via_proxy(XFF, &["149.154.167.1, 6.6.6.6"]),
            Ok(ip("6.6.6.6"))
        );
        // Several header lines are one list, in order.
        assert_eq!(
            via_proxy(XFF, &["6.6.6.6", "149.154.167.1"]),
            Ok(ip("149.154.167.1"))
        );
        // Tabs and spaces around commas.
        assert_eq!(
            via_proxy(XFF, &["6.6.6.6 ,\t149.154.167.1 "]),
            Ok(ip("149.154.167.1"))
        );
    }

    #[test]
    fn all_trusted_or_absent_means_the_left_most_trusted_hop() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        for which in [XFF, FWD] {
            assert_eq!(
                resolve(ip("127.0.0.1"), &HeaderMap::new(), &trusted, which),
                Ok(ip("127.0.0.1"))
            );
        }
        assert_eq!(via_proxy(XFF, &["10.0.0.9, 10.0.0.2"]), Ok(ip("10.0.0.9")));
        assert_eq!(
            via_proxy(FWD, &["for=10.0.0.9, for=10.0.0.2"]),
            Ok(ip("10.0.0.9"))
        );
    }

    #[test]
    fn an_unreadable_x_forwarded_for_is_refused_not_read_as_the_proxy() {
        for value in [
            "149.154.167.1, garbage, 10.0.0.2",
            // Left of the client too: the header must parse, all of it.
            "garbage, 6.6.6.6",
            "unknown, 10.0.0.2",
            "149.154.167.1 10.0.0.2",
            "149.154.167.1,,10.0.0.2",
            ", 10.0.0.2",
            "10.0.0.2,",
            "",
            " ",
            "[2001:db8::1]x",
            "[149.154.167.1]",
            "149.154.167.1:",
            "149.154.167.1:99999",
            "for=149.154.167.1",
        ] {
            assert_eq!(via_proxy(XFF, &[value]), MALFORMED, "{value:?}");
        }
        // One bad line spoils the list.
        assert_eq!(via_proxy(XFF, &["149.154.167.1", "garbage"]), MALFORMED);
        assert_eq!(via_proxy(XFF, &["garbage", "149.154.167.1"]), MALFORMED);
        // Bytes outside visible ASCII: obs-text, and not UTF-8 either.
        for bytes in [&b"149.154.167.1\xff"[..], b"149.154.167.1, 10.0.0.\xc3\xa9"] {
            let mut h = HeaderMap::new();
            h.append("x-forwarded-for", HeaderValue::from_bytes(bytes).unwrap());
            let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
            assert_eq!(resolve(ip("127.0.0.1"), &h, &trusted, XFF), MALFORMED);
        }
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        for (value, expected) in [
            ("149.154.167.1:443", "149.154.167.1"),
            ("[2001:db8::1]:1234", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("::ffff:149.154.167.1", "149.154.167.1"),
        ] {
            assert_eq!(via_proxy(XFF, &[value]), Ok(ip(expected)), "{value}");
        }
        // A mapped peer is its IPv4 address, so an IPv4 trusted block matches it.
        let h = headers("x-forwarded-for", &["149.154.167.1"]);
        assert_eq!(
            resolve(ip("::ffff:127.0.0.1"), &h, &nets(&["127.0.0.1/32"]), XFF),
            Ok(ip("149.154.167.1"))
        );
    }

    #[test]
    fn forwarded_header() {
        for (value, expected) in [
            (r#"for="[2001:db8::1]:1234""#, "2001:db8::1"),
            ("for=149.154.167.1;proto=https", "149.154.167.1"),
            (r#"For="149.154.167.1:80";by=10.0.0.1"#, "149.154.167.1"),
            (
                r#"for=6.6.6.6, for="149.154.167.1", for=10.0.0.3"#,
                "149.154.167.1",
            ),
            // A quoted comma or semicolon splits nothing.
            (
                r#"for=6.6.6.6;x="a,b;c", for=149.154.167.2"#,
                "149.154.167.2",
            ),
            (r#"for="[::ffff:149.154.167.1]""#, "149.154.167.1"),
            // Empty pairs and empty list elements are allowed.
            ("for=149.154.167.1;;proto=https;", "149.154.167.1"),
            (", for=149.154.167.1", "149.154.167.1"),
            ("for=149.154.167.1 ,\t, for=10.0.0.3,", "149.154.167.1"),
        ] {
            assert_eq!(via_proxy(FWD, &[value]), Ok(ip(expected)), "{value}");
        }
        // X-Forwarded-For is not read when the proxies write Forwarded, and vice versa.
        let trusted = nets(&["127.0.0.1/32"]);
        let h = headers("x-forwarded-for", &["149.154.167.1"]);
        assert_eq!(
            resolve(ip("127.0.0.1"), &h, &trusted, FWD),
            Ok(ip("127.0.0.1"))
        );
        let h = headers("forwarded", &["for=149.154.167.1"]);
        assert_eq!(
            resolve(ip("127.0.0.1"), &h, &trusted, XFF),
            Ok(ip("127.0.0.1"))
        );
        // And a header the proxies do not write may be anything.
        let h = headers("x-forwarded-for", &["garbage"]);
        assert_eq!(
            resolve(ip("127.0.0.1"), &h, &trusted, FWD),
            Ok(ip("127.0.0.1"))
        );
    }

    #[test]
    fn an_unterminated_quote_cannot_swallow_the_proxys_element() {
        // The client sent `Forwarded: for=149.154.167.1;x="`; the proxy joined its own element.
        assert_eq!(
            via_proxy(FWD, &[r#"for=149.154.167.1;x=", for=6.6.6.6"#]),
            MALFORMED
        );
        // The same on header lines of their own.
        assert_eq!(
            via_proxy(FWD, &[r#"for=149.154.167.1;x=""#, "for=6.6.6.6"]),
            MALFORMED
        );
    }

    #[test]
    fn unterminated_quoted_strings_are_refused() {
        for value in [
            r#"for="149.154.167.1"#,
            r#"for=149.154.167.1;host=""#,
            // The escape takes the closing quote.
            r#"for="149.154.167.1\""#,
            r#"for=149.154.167.1;x="\"#,
            r#"for=149.154.167.1;x="a\", for=10.0.0.3"#,
        ] {
            assert_eq!(via_proxy(FWD, &[value]), MALFORMED, "{value}");
        }
    }

    #[test]
    fn escaped_quotes_inside_quoted_strings_are_fine() {
        for value in [
            r#"for=149.154.167.1;x="a\"b""#,
            r#"for=149.154.167.1;x="\\""#,
            r#"for=149.154.167.1;x="\"\\\"", for=10.0.0.3"#,
            r#"for=149.154.167.1;host="ex\"am,ple;", for=10.0.0.3"#,
            // An escaped quote inside the node itself unquotes to the node.
            r#"for="149.154.167.\1""#,
            "for=149.154.167.1;x=\"a\tb \\\tc\"",
        ] {
            assert_eq!(via_proxy(FWD, &[value]), Ok(ip("149.154.167.1")), "{value}");
        }
        // An escaped quote cannot end the string: the comma after it is inside it.
        assert_eq!(
            via_proxy(FWD, &[r#"for=6.6.6.6;x="\", for=149.154.167.1""#]),
            Ok(ip("6.6.6.6"))
        );
    }

    #[test]
    fn several_forwarded_lines_are_one_list() {
        assert_eq!(
            via_proxy(FWD, &["for=6.6.6.6", "for=149.154.167.1, for=10.0.0.3"]),
            Ok(ip("149.154.167.1"))
        );
        assert_eq!(
            via_proxy(FWD, &["for=149.154.167.1", "for=6.6.6.6"]),
            Ok(ip("6.6.6.6"))
        );
        // A bad line anywhere spoils the list.
        assert_eq!(
            via_proxy(FWD, &["for=149.154.167.1", "for=garbage"]),
            MALFORMED
        );
        assert_eq!(
            via_proxy(FWD, &["for=garbage", "for=149.154.167.1"]),
            MALFORMED
        );
        // A line must hold an element.
        assert_eq!(via_proxy(FWD, &["", "for=149.154.167.1"]), MALFORMED);
        assert_eq!(via_proxy(FWD, &[" , ", "for=149.154.167.1"]), MALFORMED);
    }

    #[test]
    fn forwarded_ipv6_with_a_port() {
        for (value, expected) in [
            (
                r#"for="[2001:db8:cafe::17]:4711""#,
                Ok(ip("2001:db8:cafe::17")),
            ),
            (r#"for="[2001:db8:cafe::17]""#, Ok(ip("2001:db8:cafe::17"))),
            (
                r#"for="[2001:db8:cafe::17]:_port-1""#,
                Ok(ip("2001:db8:cafe::17")),
            ),
            (r#"for="149.154.167.1:_p""#, Ok(ip("149.154.167.1"))),
            // `[`, `]` and `:` are not token characters: such a node must be quoted.
            ("for=[2001:db8:cafe::17]:4711", MALFORMED),
            ("for=[2001:db8:cafe::17]", MALFORMED),
            ("for=149.154.167.1:80", MALFORMED),
            // An IPv6 address must be bracketed.
            (r#"for="2001:db8:cafe::17""#, MALFORMED),
            (r#"for="[2001:db8:cafe::17]4711""#, MALFORMED),
            (r#"for="[2001:db8:cafe::17]:""#, MALFORMED),
            (r#"for="[2001:db8:cafe::17]:123456""#, MALFORMED),
            (r#"for="[2001:db8:cafe::17]:4711:1""#, MALFORMED),
            (r#"for="[2001:db8:cafe::17%eth0]:4711""#, MALFORMED),
            (r#"for="[149.154.167.1]""#, MALFORMED),
            (r#"for="[2001:db8:cafe::17]:_""#, MALFORMED),
        ] {
            assert_eq!(via_proxy(FWD, &[value]), expected, "{value}");
        }
    }

    #[test]
    fn an_unknown_or_obfuscated_trusted_hop_leaves_the_client_unknown() {
        for value in [
            r#"for="_hidden", for=10.0.0.3"#,
            "for=_hidden",
            "for=unknown",
            "for=UNKNOWN;proto=https",
            r#"for="unknown:4711""#,
            r#"for="_SEVKISEK:_port""#,
            "for=149.154.167.1, for=_a.b-c_d",
            // An element without `for` names no hop either.
            "proto=https",
            "for=149.154.167.1, by=10.0.0.3",
            "for=149.154.167.1, ;",
        ] {
            assert_eq!(via_proxy(FWD, &[value]), UNIDENTIFIED, "{value}");
        }
        // Left of the client they are the client's business, and harmless.
        for value in [
            "for=unknown, for=6.6.6.6",
            "for=_hidden;proto=https, for=6.6.6.6",
            "proto=https, for=6.6.6.6",
        ] {
            assert_eq!(via_proxy(FWD, &[value]), Ok(ip("6.6.6.6")), "{value}");
        }
        // But they must still be nodes.
        for value in [
            "for=_, for=6.6.6.6",
            r#"for="_a b", for=6.6.6.6"#,
            r#"for="_a/b", for=6.6.6.6"#,
            "for=unknow, for=6.6.6.6",
            "for=example.com, for=6.6.6.6",
        ] {
            assert_eq!(via_proxy(FWD, &[value]), MALFORMED, "{value}");
        }
    }

    #[test]
    fn forwarded_parameter_names_are_case_insensitive_and_never_repeated() {
        for value in [
            "FOR=149.154.167.1",
            "For=149.154.167.1;PROTO=https;By=10.0.0.3;hOsT=example.com",
        ] {
            assert_eq!(via_proxy(FWD, &[value]), Ok(ip("149.154.167.1")), "{value}");
        }
        for value in [
            "for=6.6.6.6;for=149.154.167.1",
            "for=6.6.6.6;FOR=149.154.167.1",
            "for=149.154.167.1;proto=http;Proto=https",
        ] {
            assert_eq!(via_proxy(FWD, &[value]), MALFORMED, "{value}");
        }
        // The same name in two elements is two hops, and fine.
        assert_eq!(
            via_proxy(FWD, &["for=6.6.6.6, FOR=149.154.167.1"]),
            Ok(ip("149.154.167.1"))
        );
    }

    #[test]
    fn forwarded_syntax_errors_are_refused() {
        for value in [
            "for=149.154.167.1 junk",
            "for =149.154.167.1",
            "for= 149.154.167.1",
            "for=149.154.167.1; proto=https",
            "for=149.154.167.1 ;proto=https",
            "for",
            "for=",
            r#"for="""#,
            "=149.154.167.1",
            "for==149.154.167.1",
            r#"for="149.154.167.1"x"#,
            r#"for=149.154.167.1;x=a"b""#,
            r#""for"=149.154.167.1"#,
            "for=149.154.167.1;x=@",
            "for=garbage",
            "for=149.154.167.01.1",
            "for=149.154.167.256",
            ",",
            "",
        ] {
            assert_eq!(via_proxy(FWD, &[value]), MALFORMED, "{value:?}");
        }
        // Bytes outside visible ASCII, inside a quoted string too (obs-text is refused).
        for bytes in [
            &b"for=149.154.167.1;x=\"\xff\""[..],
            b"for=149.154.167.1;x=\"\xc3\xa9\"",
        ] {
            let mut h = HeaderMap::new();
            h.append("forwarded", HeaderValue::from_bytes(bytes).unwrap());
            let trusted = nets(&["127.0.0.1/32"]);
            assert_eq!(
                resolve(ip("127.0.0.1"), &h, &trusted, FWD),
                MALFORMED,
                "{bytes:?}"
            );
        }
    }
}
