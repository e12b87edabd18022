//! The client's address, once for every route: the TCP peer, unless the peer is a trusted
//! proxy (`proxies.trusted`); then the rightmost address of the forwarding header
//! (`proxies.header`) that is not itself a trusted proxy. Every per-IP limit, every log
//! line (`client`) and every record of a client address uses [`client_addr`].
//!
//! Each proxy appends the address it received the request from, so the header reads
//! `<client>, <proxy 1>, <proxy 2>` and the peer is the last proxy. Walking it from the
//! right, every address a trusted proxy wrote is true; the first untrusted one is the
//! client as the outermost trusted proxy saw it. What lies to its left was written by the
//! client and is never read. A hop that is not an address (`unknown`, an obfuscated
//! identifier, garbage) ends the walk without a client: the peer is used. A header that
//! does not parse is ignored the same way; nothing here can fail or panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::http::header::FORWARDED;
use axum::http::HeaderMap;

use crate::config::{ForwardedHeader, ProxiesConfig};

/// The address of the client a request is from (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The client's address: `peer`, or — when `peer` is a trusted proxy — the rightmost hop
/// of the configured header that is not a trusted proxy (the leftmost hop when all are).
pub fn client_addr(proxies: &ProxiesConfig, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    let trusted = |ip: IpAddr| proxies.trusted.iter().any(|net| net.contains(ip));
    if !trusted(peer) {
        return peer;
    }
    let hops = match proxies.header {
        ForwardedHeader::XForwardedFor => x_forwarded_for(headers),
        ForwardedHeader::Forwarded => forwarded(headers),
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) if trusted(ip) => client = ip,
            Some(ip) => return ip,
            None => return peer,
        }
    }
    client
}

/// The hops of every `X-Forwarded-For` line, left to right: an address, or None for
/// anything else. Empty list elements are skipped (RFC 9110 §5.6.1).
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b','))
        .map(|element| element.trim_ascii())
        .filter(|element| !element.is_empty())
        .map(|element| std::str::from_utf8(element).ok().and_then(xff_node))
        .collect()
}

/// One `X-Forwarded-For` element: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`
/// or `[2001:db8::1]:80`.
fn xff_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if text.starts_with('[') {
        return bracketed(text);
    }
    let (host, port) = text.split_once(':')?;
    is_port(port).then_some(())?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// `[v6]` or `[v6]:port`.
fn bracketed(text: &str) -> Option<IpAddr> {
    let (inside, rest) = text.strip_prefix('[')?.split_once(']')?;
    if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
        return None;
    }
    inside.parse::<Ipv6Addr>().ok().map(|ip| IpAddr::V6(ip).to_canonical())
}

fn is_port(text: &str) -> bool {
    (1..=5).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
}

/// The `for=` hops of every `Forwarded` line, left to right (RFC 7239). A line that does
/// not parse counts as one hop that is not an address, as does an element without `for=`.
fn forwarded(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for line in headers.get_all(FORWARDED) {
        match std::str::from_utf8(line.as_bytes()).ok().and_then(forwarded_line) {
            Some(line_hops) => hops.extend(line_hops),
            None => hops.push(None),
        }
    }
    hops
}

/// One `Forwarded` field line: `1#forwarded-element`, each `forwarded-pair *( ";"
/// forwarded-pair )`, a pair `token "=" ( token / quoted-string )`. None when it does not
/// parse, or an element names a parameter twice.
fn forwarded_line(line: &str) -> Option<Vec<Option<IpAddr>>> {
    let mut hops = Vec::new();
    let mut rest = line;
    loop {
        let (element, after) = forwarded_element(rest)?;
        if let Some(hop) = element {
            hops.push(hop);
        }
        rest = after.trim_start_matches([' ', '\t']);
        match rest.strip_prefix(',') {
            Some(after_comma) => rest = after_comma,
            None if rest.is_empty() => return Some(hops),
            None => return None,
        }
    }
}

/// One element up to (not including) the next top-level `,`: Some(its `for` hop), or
/// None for an empty list element; with the text after it.
#[allow(clippy::type_complexity)]
fn forwarded_element(text: &str) -> Option<(Option<Option<IpAddr>>, &str)> {
    let mut rest = text.trim_start_matches([' ', '\t']);
    if rest.is_empty() || rest.starts_with(',') {
        return Some((None, rest));
    }
    let mut names: Vec<String> = Vec::new();
    let mut hop = None;
    loop {
        let name_len = rest.find(|c: char| !is_tchar(c)).unwrap_or(rest.len());
        let name = rest[..name_len].to_ascii_lowercase();
        let after_eq = rest[name_len..].strip_prefix('=')?;
        if name.is_empty() || names.contains(&name) {
            return None;
        }
        let (value, after) = value(after_eq)?;
        if name == "for" {
            hop = Some(forwarded_node(&value));
        }
        names.push(name);
        rest = after.trim_start_matches([' ', '\t']);
        match rest.strip_prefix(';') {
            Some(after_semicolon) => rest = after_semicolon.trim_start_matches([' ', '\t']),
            None => return Some((Some(hop.flatten()), rest)),
        }
    }
}

/// A `token` or a `quoted-string` (with `\` escapes), and the text after it.
fn value(text: &str) -> Option<(String, &str)> {
    let Some(quoted) = text.strip_prefix('"') else {
        let len = text.find(|c: char| !is_tchar(c)).unwrap_or(text.len());
        return (len > 0).then(|| (text[..len].to_string(), &text[len..]));
    };
    let mut out = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &quoted[i + 1..])),
            '\\' => out.push(chars.next().filter(|(_, c)| is_qdtext(*c) || *c == '"' || *c == '\\')?.1),
            c if is_qdtext(c) => out.push(c),
            _ => return None,
        }
    }
    None
}

/// RFC 9110 `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Visible ASCII and blanks: what a quoted string may hold (obs-text refused).
fn is_qdtext(c: char) -> bool {
    c == ' ' || c == '\t' || c.is_ascii_graphic()
}

/// A `for=` node (RFC 7239 §6): `1.2.3.4`, `1.2.3.4:80`, `[v6]`, `[v6]:80` — Some; `unknown`,
/// `_obfuscated` and anything else — None.
fn forwarded_node(node: &str) -> Option<IpAddr> {
    if node.starts_with('[') {
        return bracketed(node);
    }
    let host = match node.split_once(':') {
        Some((host, port)) if is_port(port) || is_obfuscated(port) => host,
        Some(_) => return None,
        None => node,
    };
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_obfuscated(text: &str) -> bool {
    text.strip_prefix('_')
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyNet;
    use axum::http::HeaderValue;

    fn proxies(header: ForwardedHeader, trusted: &[&str]) -> ProxiesConfig {
        let trusted = trusted.iter().map(|t| ProxyNet::try_from(t.to_string()).expect("net")).collect();
        ProxiesConfig { trusted, header }
    }

    fn headers(name: &str, lines: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_bytes(line).expect("value"),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    /// The client of a request from `peer` carrying `lines` of `name`, with the proxies
    /// 10.0.0.0/8 and fd00::/8 trusted and `name` the configured header.
    fn resolve(name: &str, peer: &str, lines: &[&[u8]]) -> IpAddr {
        let header = if name == "forwarded" { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
        client_addr(&proxies(header, &["10.0.0.0/8", "fd00::/8"]), ip(peer), &headers(name, lines))
    }

    const XFF: &str = "x-forwarded-for";
    const FWD: &str = "forwarded";

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        assert_eq!(resolve(XFF, "192.0.2.1", &[b"198.51.100.7"]), ip("192.0.2.1"));
        assert_eq!(resolve(FWD, "192.0.2.1", &[b"for=198.51.100.7"]), ip("192.0.2.1"));
        // Nothing is trusted by default.
        let none = proxies(ForwardedHeader::XForwardedFor, &[]);
        assert_eq!(client_addr(&none, ip("10.0.0.1"), &headers(XFF, &[b"198.51.100.7"])), ip("10.0.0.1"));
    }

    #[test]
    fn x_forwarded_for_takes_the_rightmost_untrusted_hop() {
        assert_eq!(resolve(XFF, "10.0.0.1", &[b"198.51.100.7"]), ip("198.51.100.7"));
        // What the client wrote on the left (a spoof) is never read.
        assert_eq!(resolve(XFF, "10.0.0.1", &[b"1.1.1.1, 198.51.100.7, 10.0.0.9"]), ip("198.51.100.7"));
        // Several lines are one list, in order.
        assert_eq!(resolve(XFF, "10.0.0.1", &[b"1.1.1.1", b"198.51.100.7, 10.0.0.9", b"10.0.0.5"]), ip("198.51.100.7"));
        // Blanks, tabs and empty elements.
        assert_eq!(resolve(XFF, "10.0.0.1", &[b" 198.51.100.7 ,, \t10.0.0.9 ,"]), ip("198.51.100.7"));
        // No header, or only empty elements: the peer.
        assert_eq!(resolve(XFF, "10.0.0.1", &[]), ip("10.0.0.1"));
        assert_eq!(resolve(XFF, "10.0.0.1", &[b" , "]), ip("10.0.0.1"));
        // Every hop trusted: the leftmost (a trusted proxy wrote it).
        assert_eq!(resolve(XFF, "10.0.0.1", &[b"10.1.1.1, 10.0.0.9"]), ip("10.1.1.1"));
    }

    #[test]
    fn x_forwarded_for_ports_and_ipv6() {
        assert_eq!(resolve(XFF, "10.0.0.1", &[b"198.51.100.7:4711"]), ip("198.51.100.7"));
        assert_eq!(resolve(XFF, "10.0.0.1", &[b"2001:db8::17"]), ip("2001:db8::17"));
        assert_eq!(resolve(XFF, "10.0.0.1", &[b"[2001:db8::17]"]), ip("2001:db8::17"));
        assert_eq!(resolve(XFF, "10.0.0.1", &[b"[2001:db8::17]:4711, fd00::3"]), ip("2001:db8::17"));
        // An IPv4-mapped address is the IPv4 address (limits key it once).
        assert_eq!(resolve(XFF, "10.0.0.1", &[b"::ffff:198.51.100.7"]), ip("198.51.100.7"));
        // And a mapped peer is checked as IPv4.
        assert_eq!(resolve(XFF, "::ffff:10.0.0.1", &[b"198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(resolve(XFF, "fd00::1", &[b"198.51.100.7"]), ip("198.51.100.7"));
    }

    #[test]
    fn x_forwarded_for_garbage_ends_the_walk_at_the_peer() {
        for bad in [
            &b"unknown"[..],
            b"_hidden",
            b"198.51.100.7:99999999",
            b"198.51.100.7:",
            b"[2001:db8::17",
            b"[2001:db8::17]x",
            b"[198.51.100.7]",
            b"2001:db8::17::1",
            b"fe80::1%eth0",
            b"example.com",
            b"198.51.100.7 198.51.100.8",
            b"\xff\xfe",
            b"1.2.3.4.5",
        ] {
            let client = resolve(XFF, "10.0.0.1", &[b"203.0.113.5", bad, b"10.0.0.9"]);
            assert_eq!(client, ip("10.0.0.1"), "{:?}", String::from_utf8_lossy(bad));
        }
        // Garbage on the left of the client is never read.
        assert_eq!(resolve(XFF, "10.0.0.1", &[b"\xff garbage, unknown, 198.51.100.7"]), ip("198.51.100.7"));
    }

    #[test]
    fn forwarded_takes_the_rightmost_untrusted_for() {
        assert_eq!(resolve(FWD, "10.0.0.1", &[b"for=198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(
            resolve(FWD, "10.0.0.1", &[b"for=1.1.1.1, for=198.51.100.7;proto=https;by=10.0.0.1, for=10.0.0.9"]),
            ip("198.51.100.7")
        );
        // Parameter names in any case, blanks around separators, several lines.
        assert_eq!(resolve(FWD, "10.0.0.1", &[b"For=198.51.100.7 ; Proto=http", b"for=10.0.0.9"]), ip("198.51.100.7"));
        // IPv6: quoted and bracketed, with or without a port; ports quoted for IPv4.
        assert_eq!(resolve(FWD, "10.0.0.1", &[b"for=\"[2001:db8:cafe::17]:4711\""]), ip("2001:db8:cafe::17"));
        assert_eq!(resolve(FWD, "10.0.0.1", &[b"for=\"[2001:db8:cafe::17]\""]), ip("2001:db8:cafe::17"));
        assert_eq!(resolve(FWD, "10.0.0.1", &[b"for=\"198.51.100.7:80\""]), ip("198.51.100.7"));
        assert_eq!(resolve(FWD, "10.0.0.1", &[b"for=\"198.51.100.7:_port\""]), ip("198.51.100.7"));
        assert_eq!(resolve(FWD, "10.0.0.1", &[b"for=\"198.51.100.7\""]), ip("198.51.100.7"));
        // A quoted string may hold separators and escapes without splitting the list.
        assert_eq!(
            resolve(FWD, "10.0.0.1", &[b"for=198.51.100.7;ext=\"a,b;\\\"c\", for=10.0.0.9"]),
            ip("198.51.100.7")
        );
        // Every hop trusted: the leftmost.
        assert_eq!(resolve(FWD, "10.0.0.1", &[b"for=10.2.2.2, for=10.0.0.9"]), ip("10.2.2.2"));
        // Empty list elements are skipped.
        assert_eq!(resolve(FWD, "10.0.0.1", &[b", for=198.51.100.7 ,"]), ip("198.51.100.7"));
    }

    #[test]
    fn forwarded_unknown_obfuscated_and_garbage_end_the_walk_at_the_peer() {
        for bad in [
            &b"for=unknown"[..],
            b"for=UNKNOWN",
            b"for=_hidden",
            b"for=\"_hidden:_port\"",
            b"proto=https",
            b"for=2001:db8::17",
            b"for=[2001:db8::17]",
            b"for=\"2001:db8::17\"",
            b"for=\"[2001:db8::17]:99999999\"",
            b"for=198.51.100.7:80",
            b"for=\"198.51.100.7:\"",
            b"for=\"unterminated",
            b"for=198.51.100.7;for=198.51.100.8",
            b"for=",
            b"=198.51.100.7",
            b"for 198.51.100.7",
            b"for=198.51.100.7 garbage",
            b"for=\"\xff\"",
            b"for=example.com",
        ] {
            let client = resolve(FWD, "10.0.0.1", &[b"for=203.0.113.5", bad, b"for=10.0.0.9"]);
            assert_eq!(client, ip("10.0.0.1"), "{:?}", String::from_utf8_lossy(bad));
        }
        // An unterminated quote swallows what follows on its line: the line is ignored.
        assert_eq!(resolve(FWD, "10.0.0.1", &[b"for=\"x, for=198.51.100.7"]), ip("10.0.0.1"));
        // A broken line on the left of the client is never reached.
        assert_eq!(resolve(FWD, "10.0.0.1", &[b"for=\"x", b"for=198.51.100.7"]), ip("198.51.100.7"));
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let mut both = headers(XFF, &[b"198.51.100.7"]);
        both.append(FORWARDED, HeaderValue::from_static("for=203.0.113.9"));
        let xff = proxies(ForwardedHeader::XForwardedFor, &["10.0.0.1"]);
        let fwd = proxies(ForwardedHeader::Forwarded, &["10.0.0.1"]);
        assert_eq!(client_addr(&xff, ip("10.0.0.1"), &both), ip("198.51.100.7"));
        assert_eq!(client_addr(&fwd, ip("10.0.0.1"), &both), ip("203.0.113.9"));
    }

    proptest::proptest! {
        /// Whatever the header lines hold, nothing panics, and an address other than the
        /// peer comes only from a line that holds one.
        #[test]
        fn any_header_bytes_resolve_without_panicking(
            lines in proptest::collection::vec(
                proptest::collection::vec(proptest::prop_oneof![
                    proptest::sample::select(b"0123456789abcdef.:[],;=\"_ fortunkwn".to_vec()),
                    0x20u8..0x7f,
                ], 0..40),
                0..4,
            ),
            forwarded in proptest::bool::ANY,
        ) {
            let name = if forwarded { FWD } else { XFF };
            let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
            let client = resolve(name, "10.0.0.1", &lines);
            let digits = lines.iter().any(|l| l.iter().any(u8::is_ascii_hexdigit));
            proptest::prop_assert!(client == ip("10.0.0.1") || digits, "{client} from {lines:?}");
        }
    }

    #[test]
    fn trusted_networks_parse_strictly() {
        for good in ["10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8", " 192.168.0.0/16 ", "0.0.0.0/0"] {
            assert!(ProxyNet::try_from(good.to_string()).is_ok(), "{good}");
        }
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "localhost", "", "10.0.0.0/", "fd00::1/8", "1.2.3.4:80"] {
            let error = ProxyNet::try_from(bad.to_string()).expect_err(bad);
            assert!(error.starts_with("proxies.trusted: "), "{error}");
        }
        assert!(ProxyNet::try_from("::ffff:10.0.0.1".to_string()).expect("mapped").contains(ip("10.0.0.1")));
    }
}
