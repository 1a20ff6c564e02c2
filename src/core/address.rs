//! Peer addresses: the one form a peer may advertise (`http(s)://host:port`, nothing after),
//! and which IP addresses a coordinator on the internet should never dial (its own machine,
//! private networks, link-local, multicast: a peer could otherwise make it reach them). Pure.

use std::net::IpAddr;

/// An advertised address, taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddress {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

/// Parses `http://host:port` or `https://host:port`, refusing anything else (paths, queries,
/// user info, a missing or zero port) with the reason.
pub fn parse(address: &str) -> Result<PeerAddress, String> {
    let (https, rest) = if let Some(r) = address.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = address.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("an address starts with http:// or https://".into());
    };
    if rest.contains(['/', '?', '#', '@']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("an address is scheme://host:port with nothing after the port".into());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (h, p),
        _ => return Err("an address names its port: scheme://host:port".into()),
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or("the port is a number from 1 to 65535")?;
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let host = match bracketed {
        Some(h) if h.parse::<std::net::Ipv6Addr>().is_ok() => h,
        None if !host.contains([':', '[', ']']) => host,
        _ => return Err("an IPv6 host is written in brackets: http://[::1]:9000".into()),
    };
    Ok(PeerAddress { https, host: host.to_owned(), port })
}

/// Whether `ip` is an address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scheme_host_port() {
        let a = parse("http://127.0.0.1:9001").unwrap();
        assert_eq!((a.https, a.host.as_str(), a.port), (false, "127.0.0.1", 9001));
        assert!(parse("https://node.example.org:443").unwrap().https);
        assert_eq!(parse("http://[::1]:9000").unwrap().host, "::1");
        for bad in [
            "ftp://x:1",
            "http://x",
            "http://x:0",
            "http://x:99999",
            "http://x:1/",
            "http://x:1/v2/audit",
            "http://x:1?a",
            "http://u@x:1",
            "http://:1",
            "http://::1:9000",
            "http://x y:1",
            "127.0.0.1:9",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
