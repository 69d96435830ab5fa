//! Which names the HTTP server answers to, and which pages may open `/mqtt` (pure).
//!
//! `Host` must name this camera: an IP literal, `localhost`, this machine's hostname (also
//! under `.local`), or a name in `[http] allowed_hosts`. A page on a stranger's site cannot
//! then reach rtcam by pointing its own DNS name at the camera's address (DNS rebinding), and
//! so cannot read `/config.json` or open `/mqtt` as if it were the camera's own page. On the
//! `/mqtt` upgrade an `Origin`, when the client sends one (browsers always do), must be the
//! same origin as the `Host`: a WebSocket is not bound by the same-origin policy, so without
//! this check any site a viewer visits could open one to the camera.

use super::serve::Scheme;
use std::net::IpAddr;

/// `host[:port]` from a `Host` header or an origin, the host lowercased, without a trailing
/// dot, IPv6 without brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: String,
    pub port: Option<u16>,
}

impl Authority {
    pub fn parse(text: &str) -> Option<Authority> {
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (v6, after) = rest.split_once(']')?;
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            (v6, after)
        } else {
            match text.find(':') {
                Some(i) => (&text[..i], &text[i..]),
                None => (text, ""),
            }
        };
        let port = match port {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let name_like = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ':');
        if host.is_empty() || !name_like {
            return None;
        }
        Some(Authority { host, port })
    }

    fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// The names this server answers to besides IP literals.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    names: Vec<String>,
}

impl HostPolicy {
    /// `own` are this machine's names (see `tls::own_names`), `allowed` the configured extras.
    pub fn new(own: &[String], allowed: &[String]) -> HostPolicy {
        let mut names: Vec<String> = own
            .iter()
            .chain(allowed)
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        if !names.iter().any(|n| n == "localhost") {
            names.push("localhost".into());
        }
        HostPolicy { names }
    }

    /// The request's authority when its `Host` names this camera; else the sentence a 403
    /// carries.
    pub fn check_host(&self, host: Option<&str>) -> Result<Authority, String> {
        let Some(text) = host else {
            return Err("A Host header is required.".into());
        };
        let Some(authority) = Authority::parse(text) else {
            return Err(format!(
                "{text:?} is not a host name this camera can check."
            ));
        };
        if authority.ip().is_some() || self.names.contains(&authority.host) {
            return Ok(authority);
        }
        Err(format!(
            "This camera does not answer to the name {:?}; open it by its address, its \
             hostname, or add the name to [http] allowed_hosts.",
            authority.host
        ))
    }
}

/// Whether a WebSocket upgrade's `Origin` is the same origin as its `Host` (arriving through
/// `scheme`): http or https, the same host, the same port once defaults are filled in. No
/// `Origin` passes: only browsers send one, and they always do.
pub fn check_origin(origin: Option<&str>, host: &Authority, scheme: Scheme) -> Result<(), String> {
    let Some(origin) = origin else {
        return Ok(());
    };
    let refuse = || {
        Err(format!(
            "A page from {origin} may not open this camera's /mqtt; open the camera's own page."
        ))
    };
    let (origin_scheme, rest) = match origin.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return refuse(),
    };
    let Some(from) = Authority::parse(rest) else {
        return refuse();
    };
    let same_host = match (from.ip(), host.ip()) {
        (Some(a), Some(b)) => a == b,
        _ => from.host == host.host,
    };
    let from_port = from.port.unwrap_or(origin_scheme.default_port());
    let host_port = host.port.unwrap_or(scheme.default_port());
    if same_host && from_port == host_port {
        Ok(())
    } else {
        refuse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HostPolicy {
        HostPolicy::new(
            &["cam".into(), "cam.local".into(), "localhost".into()],
            &["Camera.Example.Org".into()],
        )
    }

    #[test]
    fn host_must_name_this_camera() {
        let p = policy();
        for ok in [
            "192.0.2.7:8080",
            "192.0.2.7",
            "[::1]:8443",
            "[fe80::1]",
            "localhost:8080",
            "LOCALHOST",
            "cam",
            "cam.local:8080",
            "cam.local.",
            "camera.example.org:443",
        ] {
            assert!(p.check_host(Some(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "cam.evil.example",
            "",
            "cam:port",
            "[::1",
            "[nonsense]:80",
            "a b",
            "cam:99999",
        ] {
            let err = p.check_host(Some(bad)).unwrap_err();
            assert!(err.ends_with('.'), "{bad}: {err}");
        }
        assert!(p.check_host(None).is_err());
    }

    #[test]
    fn authority_keeps_the_port_apart_from_an_ipv6_host() {
        assert_eq!(
            Authority::parse("[2001:db8::1]:8443"),
            Some(Authority {
                host: "2001:db8::1".into(),
                port: Some(8443)
            })
        );
        assert_eq!(
            Authority::parse("Cam.Local"),
            Some(Authority {
                host: "cam.local".into(),
                port: None
            })
        );
    }

    #[test]
    fn origin_must_be_the_same_as_the_host() {
        let host = |s| Authority::parse(s).unwrap();
        let http = Scheme::Http;
        let https = Scheme::Https;
        assert!(check_origin(None, &host("cam:8080"), http).is_ok());
        assert!(check_origin(Some("http://cam:8080"), &host("cam:8080"), http).is_ok());
        assert!(check_origin(Some("http://CAM:8080"), &host("cam:8080"), http).is_ok());
        assert!(check_origin(Some("https://cam:8443"), &host("cam:8443"), https).is_ok());
        assert!(check_origin(Some("https://cam"), &host("cam"), https).is_ok());
        assert!(check_origin(Some("http://cam"), &host("cam:80"), http).is_ok());
        assert!(check_origin(Some("http://[::1]:8080"), &host("[0::1]:8080"), http).is_ok());
        for (origin, h, scheme) in [
            ("http://evil.example", "cam:8080", http),
            ("http://cam:9090", "cam:8080", http),
            ("https://cam", "cam", http),
            ("http://cam", "cam", https),
            ("null", "cam", http),
            ("file://", "cam", http),
            ("ws://cam:8080", "cam:8080", http),
            ("http://cam:8080/path", "cam:8080", http),
            ("http://192.0.2.1:8080", "192.0.2.2:8080", http),
        ] {
            let err = check_origin(Some(origin), &host(h), scheme).unwrap_err();
            assert!(err.contains(origin), "{origin}: {err}");
        }
    }
}
