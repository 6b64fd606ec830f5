//! Which addresses webhooks may reach. By default none that is loopback,
//! link-local, private, shared (CGNAT), unspecified or multicast, in IPv4,
//! IPv6 or IPv4 inside IPv6, so the service cannot be used to reach
//! internal hosts. Checked when a subscription is made or changed, and
//! again for every address a delivery's host name resolves to (the
//! connection uses only addresses that passed), which defeats DNS
//! rebinding.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

/// Why an address or URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Not an absolute http or https URL with a host.
    #[error("{0}")]
    Url(String),
    /// It is, or resolves to, an address deliveries may not reach.
    #[error("{0} is a {1} address; deliveries to it are not allowed (see --webhook-allow-private)")]
    Address(IpAddr, &'static str),
}

/// What kind of internal address `ip` is, if it is one.
pub fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 100 && (b & 0xc0) == 64 {
        Some("shared (CGNAT)")
    } else if a == 0 {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::/96) carry an IPv4 address too.
    let embedded = Ipv4Addr::new(
        (segments[6] >> 8) as u8,
        segments[6] as u8,
        (segments[7] >> 8) as u8,
        segments[7] as u8,
    );
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if segments[..6] == [0; 6] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        internal_v4(embedded)
    } else if (segments[0] & 0xfe00) == 0xfc00 {
        Some("unique local (private)")
    } else if (segments[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast or reserved")
    } else {
        None
    }
}

/// Checks `ip` unless private addresses are allowed.
pub fn check_ip(ip: IpAddr, allow_private: bool) -> Result<(), Refused> {
    match internal(ip) {
        Some(what) if !allow_private => Err(Refused::Address(ip, what)),
        _ => Ok(()),
    }
}

/// Checks a subscription's URL: absolute, http or https, with a host; a
/// literal address, or any address its name resolves to now, must be
/// allowed. A name that does not resolve yet is accepted (every delivery
/// checks again).
pub async fn check_url(url: &str, allow_private: bool) -> Result<Url, Refused> {
    let parsed = check_target(url, allow_private)?;
    if let (false, Some(url::Host::Domain(name))) = (allow_private, parsed.host()) {
        let port = parsed.port_or_known_default().unwrap_or(443);
        if let Ok(Ok(addrs)) = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tokio::net::lookup_host((name, port)),
        )
        .await
        {
            for addr in addrs {
                check_ip(addr.ip(), false)?;
            }
        }
    }
    Ok(parsed)
}

/// Checks a delivery's URL without resolving its name: what [`check_url`]
/// checks, but a name's addresses are left to [`CheckedResolver`], which
/// checks every address the connection may use (a literal address never
/// reaches a resolver, so it is checked here).
pub fn check_target(url: &str, allow_private: bool) -> Result<Url, Refused> {
    let parsed = Url::parse(url).map_err(|e| Refused::Url(format!("not an absolute URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Refused::Url(format!(
            "the scheme must be http or https, not {}",
            parsed.scheme()
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Refused::Url(
            "credentials in the URL are not allowed".into(),
        ));
    }
    let Some(host) = parsed.host() else {
        return Err(Refused::Url("the URL has no host".into()));
    };
    match host {
        url::Host::Ipv4(ip) => check_ip(IpAddr::V4(ip), allow_private)?,
        url::Host::Ipv6(ip) => check_ip(IpAddr::V6(ip), allow_private)?,
        url::Host::Domain(name) => {
            let lower = name.to_ascii_lowercase();
            if !allow_private && (lower == "localhost" || lower.ends_with(".localhost")) {
                return Err(Refused::Address(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    "loopback",
                ));
            }
        }
    }
    Ok(parsed)
}

/// A resolver for deliveries that hands the connection only addresses
/// that pass the rule: the check and the connection use the same answer.
#[derive(Debug, Clone, Copy)]
pub struct CheckedResolver {
    /// Whether private addresses are allowed.
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match check_ip(addr.ip(), allow_private) {
                    Ok(()) => true,
                    Err(e) => {
                        refused = Some(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why: Box<dyn std::error::Error + Send + Sync> = match refused {
                    Some(e) => Box::new(e),
                    None => format!("{} resolves to no address", name.as_str()).into(),
                };
                return Err(why);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_in_every_spelling() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(check_ip(ip, false).is_err(), "{ip} should be refused");
            assert!(check_ip(ip, true).is_ok());
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "100.128.0.1",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(check_ip(ip, false).is_ok(), "{ip} should be allowed");
        }
    }

    #[tokio::test]
    async fn urls_need_http_and_an_allowed_host() {
        assert!(check_url("ftp://example.com/x", false).await.is_err());
        assert!(check_url("not a url", false).await.is_err());
        assert!(check_url("http://localhost:8080/x", false).await.is_err());
        assert!(check_url("http://[::ffff:7f00:1]/x", false).await.is_err());
        assert!(check_url("http://127.0.0.1:9/x", true).await.is_ok());
        assert!(check_url("https://93.184.216.34/hook", false).await.is_ok());
    }
}
