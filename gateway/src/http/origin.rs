//! The origin rule for WebSockets and cross-site publishing (gorilla/websocket's default):
//! a request without `Origin` is a non-browser client and allowed; a browser's `Origin` must
//! name the host the request was sent to (the `Host` header), or be listed with
//! `--allow-origin` (`*` allows any). `Origin: null` and the same host on another port are
//! foreign. A pure function of the headers, tested alone.

/// The configured exceptions to same-origin.
#[derive(Debug, Clone, Copy)]
pub struct OriginPolicy<'a> {
    /// `--allow-origin` values: exact origins (`https://app.example`), or `*` for any.
    pub allowed: &'a [String],
}

impl OriginPolicy<'_> {
    /// Whether a request with this `Origin` (if any) sent to this `Host` is allowed.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin.map(str::trim) else {
            return true;
        };
        if self
            .allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        host.is_some_and(|host| same_origin(origin, host))
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the authority in `host` (`host[:port]`),
/// a default port written or not.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // `null`, or not an origin at all
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "80",
        "https" | "wss" => "443",
        _ => return false,
    };
    if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
        return false;
    }
    let normal = |a: &str| -> String {
        let a = a.trim().to_ascii_lowercase();
        match split_port(&a) {
            (h, Some(p)) if p == default_port => h.to_owned(),
            _ => a,
        }
    };
    normal(authority) == normal(host)
}

/// `host:port` into its parts; an IPv6 literal keeps its brackets.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_by_default() {
        let p = OriginPolicy { allowed: &[] };
        let table = [
            (None, Some("gw.example"), true),
            (Some("https://gw.example"), Some("gw.example"), true),
            (Some("https://GW.example"), Some("gw.example:443"), true),
            (Some("http://gw.example:80"), Some("gw.example"), true),
            (Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080"), true),
            (Some("http://[::1]:8080"), Some("[::1]:8080"), true),
            (Some("http://127.0.0.1:9000"), Some("127.0.0.1:8080"), false),
            (Some("https://gw.example"), Some("gw.example:8443"), false),
            (Some("https://evil.example"), Some("gw.example"), false),
            (Some("null"), Some("gw.example"), false),
            (Some("https://gw.example.evil"), Some("gw.example"), false),
            (Some("https://gw.example"), None, false),
            (Some("file://gw.example"), Some("gw.example"), false),
        ];
        for (origin, host, want) in table {
            assert_eq!(p.allows(origin, host), want, "{origin:?} to {host:?}");
        }
    }

    #[test]
    fn allow_list_and_wildcard() {
        let list = ["https://app.example".to_owned()];
        let p = OriginPolicy { allowed: &list };
        assert!(p.allows(Some("https://app.example"), Some("gw.example")));
        assert!(!p.allows(Some("https://app.example.evil"), Some("gw.example")));
        // Same-origin requests stay allowed with a list.
        assert!(p.allows(Some("https://gw.example"), Some("gw.example")));
        let any = ["*".to_owned()];
        let p = OriginPolicy { allowed: &any };
        assert!(p.allows(Some("null"), Some("gw.example")));
    }
}
