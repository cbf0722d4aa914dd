//! Where pregon may post a callback: only to the public internet, never inside the network it runs
//! in. A subscriber's URL is checked when it is given and every address it resolves to is checked
//! again when a delivery connects (so a name that later resolves to an inside address, DNS
//! rebinding, is refused too).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What callbacks may reach besides public https endpoints. Both off by default; a development
/// setup that posts to a receiver on the same machine turns them on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallbackPolicy {
    /// Plain `http://` URLs.
    pub allow_http: bool,
    /// Loopback, private, link-local and other non-public addresses.
    pub allow_private: bool,
}

/// Why a callback URL is refused; `code` is the API's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackRefusal {
    #[error("url must be an absolute https URL")]
    NotHttps,
    #[error("url must not carry a user name or password")]
    Credentials,
    #[error(
        "url points at an address callbacks may not reach (loopback, private, link-local, multicast or metadata)"
    )]
    AddressNotAllowed,
}

impl CallbackRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            CallbackRefusal::NotHttps => "invalid_field",
            CallbackRefusal::Credentials => "invalid_field",
            CallbackRefusal::AddressNotAllowed => "callback_address_not_allowed",
        }
    }
}

/// Checks what can be checked of a URL without resolving it: the scheme, no credentials, and a
/// literal address or a name that always means this machine.
pub fn check_url(url: &url::Url, policy: CallbackPolicy) -> Result<(), CallbackRefusal> {
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        _ => return Err(CallbackRefusal::NotHttps),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(CallbackRefusal::Credentials);
    }
    if policy.allow_private {
        return Ok(());
    }
    match url.host() {
        None => Err(CallbackRefusal::NotHttps),
        Some(url::Host::Ipv4(ip)) if !is_public(IpAddr::V4(ip)) => {
            Err(CallbackRefusal::AddressNotAllowed)
        }
        Some(url::Host::Ipv6(ip)) if !is_public(IpAddr::V6(ip)) => {
            Err(CallbackRefusal::AddressNotAllowed)
        }
        Some(url::Host::Domain(name)) if names_this_machine(name) => {
            Err(CallbackRefusal::AddressNotAllowed)
        }
        Some(_) => Ok(()),
    }
}

/// `localhost` and its subdomains resolve to loopback whatever DNS says (RFC 6761).
fn names_this_machine(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Whether an address is on the public internet: not loopback, private, shared (CGNAT),
/// link-local (cloud metadata lives at 169.254.169.254 and fd00:ec2::254), multicast, broadcast,
/// documentation, benchmarking or reserved. IPv4 embedded in IPv6 (mapped, NAT64) is judged as
/// the IPv4 address it carries.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return is_public_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // IPv4-compatible (deprecated) ::a.b.c.d
        || segments[..6] == [0, 0, 0, 0, 0, 0]
        // unique local fc00::/7 (includes fd00:ec2::254)
        || (segments[0] & 0xfe00) == 0xfc00
        // link-local fe80::/10 and the old site-local fec0::/10
        || (segments[0] & 0xffc0) == 0xfe80
        || (segments[0] & 0xffc0) == 0xfec0
        // documentation 2001:db8::/32
        || (segments[0] == 0x2001 && segments[1] == 0x0db8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        let cases: &[(&str, bool)] = &[
            ("8.8.8.8", true),
            ("157.240.1.35", true),
            ("127.0.0.1", false),
            ("127.255.0.9", false),
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("10.0.0.1", false),
            ("172.16.5.4", false),
            ("172.32.0.1", true),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("100.128.0.1", true),
            ("192.0.0.8", false),
            ("192.0.2.1", false),
            ("198.18.0.1", false),
            ("224.0.0.1", false),
            ("255.255.255.255", false),
            ("240.0.0.1", false),
            ("2a03:2880:f12f:83:face:b00c::25de", true),
            ("::1", false),
            ("::", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:8.8.8.8", true),
            ("::127.0.0.1", false),
            ("64:ff9b::a00:1", false),
            ("64:ff9b::808:808", true),
            ("fd00:ec2::254", false),
            ("fc00::1", false),
            ("fe80::1", false),
            ("fec0::1", false),
            ("ff02::1", false),
            ("2001:db8::1", false),
        ];
        for (raw, public) in cases {
            let ip: IpAddr = raw.parse().unwrap();
            assert_eq!(is_public(ip), *public, "{raw}");
        }
    }

    #[test]
    fn urls_are_checked_before_any_lookup() {
        let strict = CallbackPolicy::default();
        let dev = CallbackPolicy {
            allow_http: true,
            allow_private: true,
        };
        type Expected = Result<(), CallbackRefusal>;
        let cases: &[(&str, Expected, Expected)] = &[
            ("https://hooks.example.com/x", Ok(()), Ok(())),
            ("https://8.8.8.8/x", Ok(()), Ok(())),
            (
                "http://hooks.example.com/x",
                Err(CallbackRefusal::NotHttps),
                Ok(()),
            ),
            (
                "ftp://hooks.example.com/x",
                Err(CallbackRefusal::NotHttps),
                Err(CallbackRefusal::NotHttps),
            ),
            (
                "https://user:pw@hooks.example.com/x",
                Err(CallbackRefusal::Credentials),
                Err(CallbackRefusal::Credentials),
            ),
            (
                "https://127.0.0.1/x",
                Err(CallbackRefusal::AddressNotAllowed),
                Ok(()),
            ),
            (
                "https://localhost:8080/x",
                Err(CallbackRefusal::AddressNotAllowed),
                Ok(()),
            ),
            (
                "https://api.LOCALHOST./x",
                Err(CallbackRefusal::AddressNotAllowed),
                Ok(()),
            ),
            (
                "https://10.0.0.1/x",
                Err(CallbackRefusal::AddressNotAllowed),
                Ok(()),
            ),
            (
                "https://169.254.169.254/latest/meta-data",
                Err(CallbackRefusal::AddressNotAllowed),
                Ok(()),
            ),
            (
                "https://[::1]/x",
                Err(CallbackRefusal::AddressNotAllowed),
                Ok(()),
            ),
            (
                "https://[::ffff:127.0.0.1]/x",
                Err(CallbackRefusal::AddressNotAllowed),
                Ok(()),
            ),
            (
                "https://2130706433/x",
                Err(CallbackRefusal::AddressNotAllowed),
                Ok(()),
            ),
            (
                "https://0x7f.1/x",
                Err(CallbackRefusal::AddressNotAllowed),
                Ok(()),
            ),
        ];
        for (raw, strictly, in_dev) in cases {
            let url = url::Url::parse(raw).unwrap();
            assert_eq!(&check_url(&url, strict), strictly, "{raw}");
            assert_eq!(&check_url(&url, dev), in_dev, "{raw} in development");
        }
    }
}
