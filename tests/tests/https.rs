//! The command line over HTTPS: a server behind a TLS-terminating reverse proxy (as README
//! advises) is reached at an `https://` URL, the proxy's certificate verified against the
//! CA store (here `SSL_CERT_FILE`, a CA made by the test with `openssl`), so the admin token
//! crosses the network encrypted; a certificate of a CA the client does not trust, or for
//! another name, is refused before anything is sent.

use crate::serve::{BIN, Dirs, Server};

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const TOKEN: &str = "https-admin-token-7f3a";

/// The bytes read through it, kept.
struct Tap<S> {
    inner: S,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.seen
            .lock()
            .unwrap()
            .extend_from_slice(&buf.filled()[before..]);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TLS-terminating proxy in front of a plain-HTTP server, keeping what clients sent: as
/// it crossed the network (`wire`) and as it arrived decrypted (`plain`).
struct Proxy {
    port: u16,
    wire: Arc<Mutex<Vec<u8>>>,
    plain: Arc<Mutex<Vec<u8>>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 with `cert` and `key` (PEM) and forwards to `upstream`
    /// (`host:port`).
    async fn start(cert: &Path, key: &Path, upstream: String) -> Proxy {
        let chain = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (wire, plain) = (Arc::default(), Arc::default());
        let proxy = Proxy {
            port,
            wire: Arc::clone(&wire),
            plain: Arc::clone(&plain),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                let (wire, plain) = (Arc::clone(&wire), Arc::clone(&plain));
                tokio::spawn(async move {
                    let stream = Tap {
                        inner: stream,
                        seen: wire,
                    };
                    // A client that refuses the certificate ends the handshake here.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut client = Tap {
                        inner: tls,
                        seen: plain,
                    };
                    let mut server = TcpStream::connect(&upstream).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        proxy
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

/// Whether `needle` occurs in `bytes`.
fn holds(bytes: &Mutex<Vec<u8>>, needle: &str) -> bool {
    let bytes = bytes.lock().unwrap();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// `foldhost ARGS` with `FOLDHOST_URL=url` and, if given, `SSL_CERT_FILE=ca` as the only CA
/// store (none given: the system's).
fn foldhost(url: &str, ca: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("FOLDHOST_DATA")
        .env_remove("FOLDHOST_ADMIN_TOKEN")
        .env_remove("FOLDHOST_ADMIN_TOKEN_FILE")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env("FOLDHOST_URL", url)
        .stdin(Stdio::null());
    if let Some(ca) = ca {
        command.env("SSL_CERT_FILE", ca);
    }
    command.output().unwrap()
}

fn ok(url: &str, ca: &Path, args: &[&str]) -> String {
    let output = foldhost(url, Some(ca), args);
    assert!(
        output.status.success(),
        "foldhost {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a subcommand that must fail for want of a certificate it trusts (with the system's
/// store alone, a machine may have none to load at all).
fn refused(url: &str, ca: Option<&Path>, args: &[&str]) {
    let output = foldhost(url, ca, args);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "foldhost {args:?}: {stderr}");
    let untrusted = stderr.contains("invalid peer certificate")
        || ca.is_none() && stderr.contains("No CA certificates were loaded");
    assert!(untrusted, "{stderr}");
}

/// A server reached over plain HTTP needs no CA store: a CLI on a machine without one (a slim
/// image) still reaches it.
#[test]
fn a_plain_http_url_needs_no_ca_store() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let nothing = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["plugins", "list", "--url", &server.url])
        .env("SSL_CERT_FILE", nothing.path().join("none.pem"))
        .env("SSL_CERT_DIR", nothing.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
}

#[test]
fn client_subcommands_reach_a_server_behind_a_tls_proxy_and_verify_its_certificate() {
    let dirs = Dirs::new();
    let tls = tempfile::tempdir().unwrap();
    crate::certificates::make(tls.path(), "localhost", "DNS:localhost");
    let file = |name: &str| -> PathBuf { tls.path().join(name) };
    let token_file = file("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_file = token_file.to_str().unwrap();

    let server = Server::start(&dirs, Some(TOKEN));
    let upstream = server.url.strip_prefix("http://").unwrap().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let proxy = runtime.block_on(Proxy::start(
        &file("server.crt"),
        &file("server.key"),
        upstream,
    ));
    let url = &proxy.url();

    // Not trusted: the system's store alone, another CA, or the right CA for another name.
    let list = ["plugins", "list", "--url", url];
    refused(url, None, &list);
    refused(url, Some(&file("other-ca.crt")), &list);
    let by_address = url.replace("localhost", "127.0.0.1");
    refused(&by_address, Some(&file("ca.crt")), &["plugins", "list"]);
    let backup = tls.path().join("refused-backup");
    let backup = backup.to_str().unwrap();
    refused(
        url,
        Some(&file("other-ca.crt")),
        &["backup", "--to", backup, "--admin-token-file", token_file],
    );
    assert!(!holds(&proxy.wire, TOKEN));
    assert!(
        proxy.plain.lock().unwrap().is_empty(),
        "a client sent a request to a server it did not trust"
    );

    // Trusted: the subcommands work through the proxy.
    let ca = &file("ca.crt");
    let plugins: Value = serde_json::from_str(&ok(url, ca, &list)).unwrap();
    let names: Vec<&str> = plugins
        .as_array()
        .unwrap()
        .iter()
        .map(|plugin| plugin["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"bank-analytics"), "{plugins}");
    // An admin subcommand, its URL from FOLDHOST_URL: the token crosses encrypted.
    let policy: Value = serde_json::from_str(&ok(
        url,
        ca,
        &[
            "plugins",
            "policy",
            "bank-analytics",
            "stop",
            "--admin-token-file",
            token_file,
        ],
    ))
    .unwrap();
    assert_eq!(policy["policy"], "stop", "{policy}");
    let backup = tls.path().join("backup");
    ok(
        url,
        ca,
        &[
            "backup",
            "--to",
            backup.to_str().unwrap(),
            "--admin-token-file",
            token_file,
        ],
    );
    assert!(backup.join("journal.redb").exists() && backup.join("backup.json").exists());
    // The token was sent (decrypted, the proxy reads it), and never in the clear.
    assert!(holds(&proxy.plain, &format!("Bearer {TOKEN}")));
    assert!(
        !holds(&proxy.wire, TOKEN),
        "the token crossed the network in the clear"
    );
}
