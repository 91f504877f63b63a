//! Where a webhook may go. A webhook URL is chosen by a caller and fetched by chainkeeper from inside the
//! operator's network, so it must not become a way in (SSRF): only `https`, only public addresses, and the
//! connection goes to exactly the address that was checked.
//!
//! - At registration ([`check_url`]): the URL's form, its scheme, and a literal IP address.
//! - At delivery ([`vet`]): the host is resolved once; every address it resolves to must be public; the
//!   request is then sent to the first of them through a client that resolves the host to that address only
//!   (no second lookup, so no DNS rebinding between the check and the connection), with redirects off and no
//!   proxy.
//!
//! The operator may allow plain `http` (`[webhooks] allow_http_hosts`) and loopback or private addresses
//! (`[webhooks] allow_private_hosts`) for named hosts: tests and closed networks. Metadata, multicast,
//! broadcast, "this network" and reserved addresses are never reached.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::WebhookConfig;

/// What kind of address an IP address is, for a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    /// 127/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, fec0::/10 (site-local), 64:ff9b:1::/48 (local NAT64).
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// fc00::/7.
    UniqueLocal,
    /// 100.64/10 (carrier-grade NAT).
    SharedAddressSpace,
    /// 0/8, ::.
    ThisNetwork,
    /// 224/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// Everything else that is not routed on the internet (240/4, 198.18/15, 192.0.0/24, Teredo, …).
    Reserved,
    /// Cloud instance metadata: 169.254.169.254, fd00:ec2::254, 100.100.100.200, 192.0.0.192.
    Metadata,
}

impl AddressClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::UniqueLocal => "unique-local",
            Self::SharedAddressSpace => "shared (carrier-grade NAT)",
            Self::ThisNetwork => "unspecified (this network)",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Reserved => "reserved",
            Self::Metadata => "cloud metadata",
        }
    }

    /// Reachable for a host the operator named in `allow_private_hosts`.
    fn allowed_when_private_is(self) -> bool {
        matches!(
            self,
            Self::Public
                | Self::Loopback
                | Self::Private
                | Self::LinkLocal
                | Self::UniqueLocal
                | Self::SharedAddressSpace
        )
    }
}

/// The class of an address. IPv6 forms that carry an IPv4 address (mapped `::ffff:0:0/96`, compatible
/// `::/96`, translated `::ffff:0:0:0/96`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are classified by the IPv4
/// address they carry.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass::*;
    let [a, b, c, d] = ip.octets();
    if [[169, 254, 169, 254], [100, 100, 100, 200], [192, 0, 0, 192]].contains(&[a, b, c, d]) {
        return Metadata;
    }
    match (a, b, c) {
        (0, ..) => ThisNetwork,
        (10, ..) => Private,
        (100, 64..=127, _) => SharedAddressSpace,
        (127, ..) => Loopback,
        (169, 254, _) => LinkLocal,
        (172, 16..=31, _) => Private,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Documentation,
        (192, 0, 0) | (192, 88, 99) | (198, 18..=19, _) => Reserved,
        (192, 168, _) => Private,
        (224..=239, ..) => Multicast,
        (255, 255, 255) if d == 255 => Broadcast,
        (240..=255, ..) => Reserved,
        _ => Public,
    }
}

fn v4_at(s: &[u16; 8], hi: usize) -> Ipv4Addr {
    let (h, l) = (s[hi], s[hi + 1]);
    Ipv4Addr::new((h >> 8) as u8, h as u8, (l >> 8) as u8, l as u8)
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass::*;
    let s = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Metadata;
    }
    if ip.is_unspecified() {
        return ThisNetwork;
    }
    if ip.is_loopback() {
        return Loopback;
    }
    match s {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
        [0, 0, 0, 0, 0, 0xffff, ..] | [0, 0, 0, 0, 0, 0, ..] => return classify_v4(v4_at(&s, 6)),
        // ::ffff:0:a.b.c.d (translated).
        [0, 0, 0, 0, 0xffff, 0, ..] => return classify_v4(v4_at(&s, 6)),
        // 64:ff9b::/96 (NAT64, well known): the gateway connects to the IPv4 address.
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => return classify_v4(v4_at(&s, 6)),
        // 64:ff9b:1::/48 (NAT64, local use).
        [0x64, 0xff9b, 1, ..] => return Private,
        // 6to4: the relay connects to the IPv4 address in bits 16..48.
        [0x2002, ..] => return classify_v4(v4_at(&s, 1)),
        // 2001:db8::/32, 3fff::/20.
        [0x2001, 0xdb8, ..] => return Documentation,
        [0x3fff, x, ..] if x < 0x1000 => return Documentation,
        // 2001::/23: IETF protocol assignments, Teredo (2001::/32) among them.
        [0x2001, x, ..] if x < 0x200 => return Reserved,
        _ => {}
    }
    match s[0] {
        x if x & 0xffc0 == 0xfe80 => LinkLocal,
        x if x & 0xffc0 == 0xfec0 => Private,
        x if x & 0xfe00 == 0xfc00 => UniqueLocal,
        x if x & 0xff00 == 0xff00 => Multicast,
        x if x & 0xe000 == 0x2000 => Public,
        _ => Reserved,
    }
}

/// Why a webhook URL is refused at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlRefusal {
    NotAbsolute,
    /// Not `http(s)://host/path`, or with credentials in it.
    Form,
    /// Plain `http` to a host the operator did not name in `[webhooks] allow_http_hosts`.
    NotHttps,
    /// A literal address that is not public (its class).
    PrivateAddress(AddressClass),
}

fn named(list: &[String], host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    list.iter().any(|h| {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        h.eq_ignore_ascii_case(bare)
    })
}

fn address_allowed(class: AddressClass, host: &str, allow: &WebhookConfig) -> bool {
    class == AddressClass::Public || (class.allowed_when_private_is() && named(&allow.allow_private_hosts, host))
}

/// The registration check: form, scheme, and a literal address. Host names are resolved at delivery.
pub fn check_url(url: &str, allow: &WebhookConfig) -> Result<url::Url, UrlRefusal> {
    let url = url::Url::parse(url).map_err(|_| UrlRefusal::NotAbsolute)?;
    let Some(host) = url.host_str().map(str::to_string) else { return Err(UrlRefusal::Form) };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefusal::Form);
    }
    match url.scheme() {
        "https" => {}
        "http" if named(&allow.allow_http_hosts, &host) => {}
        "http" => return Err(UrlRefusal::NotHttps),
        _ => return Err(UrlRefusal::Form),
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        _ => None,
    };
    if let Some(ip) = literal {
        let class = classify(ip);
        if !address_allowed(class, &host, allow) {
            return Err(UrlRefusal::PrivateAddress(class));
        }
    }
    Ok(url)
}

/// Why a delivery was refused before anything was sent. Its text names no part of the URL (a secret).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryRefusal {
    #[error("the webhook URL is refused: {0:?}")]
    Url(UrlRefusal),
    #[error("the webhook host could not be resolved")]
    Unresolvable,
    #[error(
        "the webhook host resolves to {addr}, a {} address; webhooks reach public addresses only \
         (an operator may allow private addresses for a named host with [webhooks] allow_private_hosts)",
        .class.as_str()
    )]
    Address { addr: IpAddr, class: AddressClass },
}

/// A URL that passed the delivery check, and the one address to connect to.
#[derive(Debug)]
pub struct Target {
    pub url: url::Url,
    pub addr: SocketAddr,
}

/// The delivery check: resolve the host once; every address must be allowed (a name that resolves to a public
/// and a private address is refused); the first is the one to connect to.
pub async fn vet(url: &str, allow: &WebhookConfig) -> Result<Target, DeliveryRefusal> {
    let url = check_url(url, allow).map_err(DeliveryRefusal::Url)?;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(v4)) => vec![SocketAddr::new(IpAddr::V4(v4), port)],
        Some(url::Host::Ipv6(v6)) => vec![SocketAddr::new(IpAddr::V6(v6), port)],
        _ => tokio::net::lookup_host((host.as_str(), port)).await.map_err(|_| DeliveryRefusal::Unresolvable)?.collect(),
    };
    let Some(first) = addrs.first().copied() else { return Err(DeliveryRefusal::Unresolvable) };
    for a in &addrs {
        let class = classify(a.ip());
        if !address_allowed(class, &host, allow) {
            return Err(DeliveryRefusal::Address { addr: a.ip(), class });
        }
    }
    Ok(Target { url, addr: first })
}

/// A client that reaches the target's host at the vetted address only: no other lookup, no redirects, no proxy.
pub fn client_for(target: &Target) -> reqwest::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(5));
    if let Some(url::Host::Domain(d)) = target.url.host() {
        b = b.resolve(d, target.addr);
    }
    b.build()
}

/// The URL as views and the audit show it: scheme, host and port; the path and query (where receivers keep
/// their secret) are hidden.
pub fn masked(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}/…", u.scheme()),
            (Some(h), None) => format!("{}://{h}/…", u.scheme()),
            _ => "…".into(),
        },
        Err(_) => "…".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::AddressClass::*;
    use super::*;

    #[test]
    fn addresses_are_classified_with_the_ipv4_they_carry() {
        let table: &[(&str, AddressClass)] = &[
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.32.0.1", Public),
            ("172.15.255.255", Public),
            ("192.168.1.1", Private),
            ("169.254.1.1", LinkLocal),
            ("169.254.169.254", Metadata),
            ("100.100.100.200", Metadata),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("100.128.0.1", Public),
            ("0.0.0.0", ThisNetwork),
            ("0.1.2.3", ThisNetwork),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("198.18.0.1", Reserved),
            ("192.0.0.8", Reserved),
            ("192.0.0.192", Metadata),
            ("2606:4700:4700::1111", Public),
            ("::1", Loopback),
            ("::", ThisNetwork),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", Private),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fd00:ec2::254", Metadata),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001::1", Reserved),
            ("100::1", Reserved),
            // IPv4-mapped.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:7f00:1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", Metadata),
            ("::ffff:8.8.8.8", Public),
            // IPv4-compatible.
            ("::127.0.0.1", Loopback),
            ("::192.168.0.1", Private),
            ("::0.0.0.2", ThisNetwork),
            // IPv4-translated.
            ("::ffff:0:127.0.0.1", Loopback),
            // NAT64, well known and local use.
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", Metadata),
            ("64:ff9b::10.0.0.1", Private),
            ("64:ff9b::8.8.8.8", Public),
            ("64:ff9b:1::8.8.8.8", Private),
            // 6to4.
            ("2002:7f00:1::1", Loopback),
            ("2002:0808:0808::1", Public),
        ];
        for (text, want) in table {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(classify(ip), *want, "{text}");
        }
    }

    fn allow(http: &[&str], private: &[&str]) -> WebhookConfig {
        WebhookConfig {
            allow_http_hosts: http.iter().map(|s| s.to_string()).collect(),
            allow_private_hosts: private.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn registration_refuses_plain_http_and_literal_inside_addresses() {
        let none = allow(&[], &[]);
        assert!(check_url("https://hooks.example.com/x", &none).is_ok());
        assert_eq!(check_url("http://hooks.example.com/x", &none).unwrap_err(), UrlRefusal::NotHttps);
        assert_eq!(check_url("ftp://hooks.example.com/x", &none).unwrap_err(), UrlRefusal::Form);
        assert_eq!(check_url("https://u:p@hooks.example.com/x", &none).unwrap_err(), UrlRefusal::Form);
        assert_eq!(check_url("hooks.example.com/x", &none).unwrap_err(), UrlRefusal::NotAbsolute);
        for (url, class) in [
            ("https://127.0.0.1/x", Loopback),
            ("https://[::ffff:127.0.0.1]/x", Loopback),
            ("https://[64:ff9b::a9fe:a9fe]/x", Metadata),
            ("https://169.254.169.254/latest", Metadata),
            ("https://0x7f.1/x", Loopback),
            ("https://2130706433/x", Loopback),
            ("https://10.0.0.1/x", Private),
            ("https://[fd00:ec2::254]/x", Metadata),
        ] {
            assert_eq!(check_url(url, &none).unwrap_err(), UrlRefusal::PrivateAddress(class), "{url}");
        }
        let tests = allow(&["127.0.0.1", "[::1]"], &["127.0.0.1", "::1"]);
        assert!(check_url("http://127.0.0.1:8080/hook", &tests).is_ok());
        assert!(check_url("http://[::1]:8080/hook", &tests).is_ok());
        assert_eq!(check_url("http://127.0.0.2/hook", &tests).unwrap_err(), UrlRefusal::NotHttps);
        let meta = allow(&[], &["169.254.169.254"]);
        assert_eq!(
            check_url("https://169.254.169.254/x", &meta).unwrap_err(),
            UrlRefusal::PrivateAddress(Metadata),
            "metadata is never reached"
        );
    }

    #[tokio::test]
    async fn delivery_resolves_the_name_and_refuses_an_inside_answer() {
        let http_only = allow(&["localhost"], &[]);
        match vet("http://localhost:9/hook", &http_only).await {
            Err(DeliveryRefusal::Address { class, .. }) => assert_eq!(class, Loopback),
            other => panic!("{other:?}"),
        }
        let both = allow(&["localhost"], &["localhost"]);
        let t = vet("http://localhost:9/hook", &both).await.unwrap();
        assert!(t.addr.ip().is_loopback());
        assert_eq!(t.addr.port(), 9);
        let refusal = vet("http://localhost:9/hook-secret", &http_only).await.unwrap_err().to_string();
        assert!(!refusal.contains("hook-secret") && !refusal.contains("localhost"), "{refusal}");
    }

    #[test]
    fn masking_keeps_the_host_and_hides_the_path() {
        assert_eq!(masked("https://hooks.example.com/T0/B1/secret?x=1"), "https://hooks.example.com/…");
        assert_eq!(masked("http://127.0.0.1:8080/hook"), "http://127.0.0.1:8080/…");
    }
}
