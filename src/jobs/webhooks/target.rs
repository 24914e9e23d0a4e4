//! Where a webhook may be delivered. A tenant names the URL, so by default only public
//! addresses are called: no loopback, private, link-local (cloud metadata at 169.254.169.254),
//! shared, multicast or reserved ranges, checked on the addresses a name resolves to, at the
//! moment of the call (the HTTP client resolves through [`PublicOnly`], so a name that changes
//! its answer after the check cannot slip through), and redirects are not followed.
//! `BACKROOM_WEBHOOKS_ALLOW_PRIVATE=true` lifts this for tests and on-premises receivers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use url::Url;

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Checks a URL a tenant gives: `http` or `https`, a host, no credentials, at most
/// [`MAX_URL_LEN`] characters; an address given literally must be public unless
/// `allow_private`. (A name is checked when it is resolved, at each delivery.)
pub fn check_url(raw: &str, allow_private: bool) -> Result<Url, String> {
    if raw.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    let url = Url::parse(raw).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    match url.host() {
        None => return Err("must name a host".into()),
        Some(url::Host::Ipv4(ip)) if !allow_private && !is_public(IpAddr::V4(ip)) => {
            return Err(format!("{ip} is not a public address"));
        }
        Some(url::Host::Ipv6(ip)) if !allow_private && !is_public(IpAddr::V6(ip)) => {
            return Err(format!("{ip} is not a public address"));
        }
        Some(url::Host::Domain(d)) if !allow_private && is_local_name(d) => {
            return Err(format!("{d} is not a public host"));
        }
        _ => {}
    }
    Ok(url)
}

fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.ends_with(".internal")
}

/// Whether an address is on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments 192.0.0.0/24, benchmarking 198.18.0.0/15, reserved 240/4.
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, documentation 2001:db8::/32.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first == 0x2001 && ip.segments()[1] == 0x0db8))
}

/// The HTTP client's resolver: the system's, keeping only public addresses (all of them when
/// private ones are allowed); a name with none left fails to resolve, so nothing is sent.
#[derive(Clone, Copy)]
pub struct PublicOnly {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if found.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} has no public address").into();
                return Err(refused);
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_refused_public_ones_pass() {
        let cases = [
            ("http://127.0.0.1:8080/hook", false, "loopback"),
            ("http://10.1.2.3/", false, "private"),
            ("http://172.16.0.1/", false, "private"),
            ("http://192.168.1.1/", false, "private"),
            (
                "http://169.254.169.254/latest/meta-data",
                false,
                "metadata (link-local)",
            ),
            ("http://100.64.0.1/", false, "shared"),
            ("http://0.0.0.0/", false, "unspecified"),
            ("http://[::1]/", false, "v6 loopback"),
            ("http://[fd00::1]/", false, "v6 unique local"),
            ("http://[fe80::1]/", false, "v6 link-local"),
            ("http://[::ffff:127.0.0.1]/", false, "v4-mapped loopback"),
            ("http://localhost:3000/", false, "localhost"),
            ("https://hooks.example.com/in", true, "public name"),
            ("https://93.184.215.14/in", true, "public v4"),
            ("https://[2606:4700::1111]/in", true, "public v6"),
        ];
        for (url, ok, why) in cases {
            assert_eq!(check_url(url, false).is_ok(), ok, "{url}: {why}");
        }
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok());
    }

    #[test]
    fn only_web_urls_without_credentials() {
        for url in [
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "not a url",
            "file:///etc/passwd",
        ] {
            assert!(check_url(url, true).is_err(), "{url}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(check_url(&long, true).is_err());
    }
}
