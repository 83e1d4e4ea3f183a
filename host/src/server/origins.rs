//! Which web pages may reach the server through a visitor's browser.
//!
//! Appends, commands and stream reads need no token, so without this check any web site open
//! in the operator's browser could write to a host it can reach (a `no-cors` POST sends a
//! plain-text body the server parses as JSON), and by DNS rebinding (its own name resolved to
//! 127.0.0.1) read the whole journal. Two rules stop both, and leave clients that are not
//! browsers (curl, the CLI, services; they send no `Origin`) as they were:
//! - a request whose `Origin` is not the server's own (its `Host`) or an allowed name is
//!   refused: browsers send `Origin` with every cross-origin request and every POST;
//! - a server listening only on a loopback address answers only requests addressed to a
//!   loopback name (`localhost`, `127.0.0.1`, `[::1]`) or an allowed name.
//!
//! Allowed names (`--allowed-host`) are the names of a reverse proxy in front of the server
//! that rewrites `Host`, or that forwards to a loopback address.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;

/// The names requests may be addressed to and pages may come from, besides the server's own.
#[derive(Clone)]
pub struct Origins {
    /// The server listens on a loopback address only: `Host` must name one.
    loopback: bool,
    /// Lowercase host names (no port) allowed as `Host` and in `Origin`.
    allowed: Arc<[String]>,
}

impl Origins {
    /// The rules for a server listening on `listen` with these extra allowed host names.
    pub fn new(listen: IpAddr, allowed: &[String]) -> Self {
        Self {
            loopback: listen.is_loopback(),
            allowed: allowed
                .iter()
                .map(|name| name.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Why a request with these headers may not be served, if it may not.
    fn refusal(&self, headers: &HeaderMap) -> Option<String> {
        let host = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok());
        if self.loopback
            && let Some(host) = host
            && !is_loopback_name(name_of(host))
            && !self.is_allowed(name_of(host))
        {
            return Some(format!(
                "this server listens on a loopback address and answers only requests for \
                 localhost, not {host:?}; name a reverse proxy's host with --allowed-host"
            ));
        }
        let origin = headers.get(header::ORIGIN)?;
        let authority = origin
            .to_str()
            .ok()
            .and_then(|origin| origin.split_once("://"))
            .map(|(_, authority)| authority);
        let same = authority.is_some_and(|authority| {
            host.is_some_and(|host| authority.eq_ignore_ascii_case(host))
                || self.is_allowed(name_of(authority))
        });
        (!same).then(|| {
            format!(
                "requests from web pages of another origin ({origin:?}) are refused; name a \
                 reverse proxy's host with --allowed-host"
            )
        })
    }

    fn is_allowed(&self, name: &str) -> bool {
        self.allowed
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
    }
}

/// Refuses with 403 a request [`Origins`] does not allow.
pub async fn guard(State(origins): State<Origins>, request: Request, next: Next) -> Response {
    match origins.refusal(request.headers()) {
        None => next.run(request).await,
        Some(reason) => ApiError::new(StatusCode::FORBIDDEN, reason).into_response(),
    }
}

/// The host name of a `Host` value or an origin's authority: without its port, an IPv6
/// address without its brackets.
fn name_of(authority: &str) -> &str {
    match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(bracketed),
        None => authority.split(':').next().unwrap_or(authority),
    }
}

/// `localhost` (and its subdomains, which resolve to loopback) or a loopback address.
fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(origins: &Origins, host: Option<&str>, origin: Option<&str>) -> bool {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(header::HOST, host.parse().unwrap());
        }
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, origin.parse().unwrap());
        }
        origins.refusal(&headers).is_some()
    }

    #[test]
    fn a_loopback_server_answers_only_loopback_names_and_allowed_ones() {
        let origins = Origins::new("127.0.0.1".parse().unwrap(), &["Events.Example".into()]);
        for host in [
            "localhost:7878",
            "127.0.0.1:7878",
            "[::1]:7878",
            "app.localhost",
        ] {
            assert!(!refused(&origins, Some(host), None), "{host}");
        }
        assert!(!refused(&origins, Some("events.example"), None));
        assert!(!refused(&origins, None, None), "HTTP/1.0 sends no Host");
        assert!(refused(&origins, Some("rebind.evil.example:7878"), None));
        let everywhere = Origins::new("0.0.0.0".parse().unwrap(), &[]);
        assert!(!refused(&everywhere, Some("10.0.0.5:7878"), None));
    }

    #[test]
    fn a_page_of_another_origin_is_refused_and_the_servers_own_is_not() {
        let origins = Origins::new("0.0.0.0".parse().unwrap(), &["events.example".into()]);
        let host = Some("10.0.0.5:7878");
        assert!(!refused(&origins, host, Some("http://10.0.0.5:7878")));
        assert!(!refused(&origins, host, Some("https://events.example")));
        assert!(refused(&origins, host, Some("http://evil.example")));
        assert!(refused(&origins, host, Some("http://10.0.0.5:8080")));
        assert!(refused(&origins, host, Some("null")));
        assert!(refused(&origins, None, Some("http://10.0.0.5:7878")));
    }
}
