//! How the journal connects to PostgreSQL, read from its URL: the libpq-style parameters
//! tokio-postgres understands, plus the timeouts and TLS modes it does not.
//!
//! | URL parameter | default | what |
//! |---|---|---|
//! | `connect_timeout` | `10` (s) | giving up on a connection attempt |
//! | `lock_timeout` | `5s` | waiting for the log lock (another host's write transaction) |
//! | `statement_timeout` | `30s` | one statement (a scavenge's `VACUUM FULL` is exempt) |
//! | `idle_in_transaction_session_timeout` | `10s` | the server ends a session of this host frozen inside a transaction, releasing its locks |
//! | `keepalives_idle` | `30` (s) | TCP keepalives on every connection (interval 10 s, 3 probes) |
//! | `sslmode` | `prefer` | `disable`, `prefer`, `require` (encrypted, unverified), `verify-ca`, `verify-full` (certificate and host name checked) |
//! | `sslrootcert` | `~/.postgresql/root.crt` | the CA certificates (PEM) `verify-ca` and `verify-full` trust |
//!
//! Durations are PostgreSQL's: a number with `ms`, `s`, `min` or `h`, milliseconds without a
//! unit; `0` turns a timeout off. The three server-side timeouts are sent as session settings
//! (`-c name=value` in `options`), before any `options` of the URL, which may override them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::JournalError;

/// Everything needed to open connections to the journal's database.
pub(super) struct Settings {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub timeouts: Timeouts,
}

/// The timeouts in force (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub connect: Duration,
    pub lock: Duration,
    pub statement: Duration,
    pub idle_in_transaction: Duration,
}

impl Timeouts {
    /// How long this host waits for any one database exchange before it gives up on it:
    /// the server's own timeouts plus a connection attempt and some slack, so the server
    /// normally answers first (and a frozen server cannot hang a caller for ever).
    pub fn deadline(&self) -> Duration {
        let statement = if self.statement.is_zero() {
            Duration::from_secs(300)
        } else {
            self.statement
        };
        statement + self.connect + Duration::from_secs(5)
    }
}

/// The TLS modes of libpq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

fn unavailable(message: impl Into<String>) -> JournalError {
    JournalError::Unavailable(message.into())
}

impl Settings {
    /// Reads `url` (`postgres://user@host:port/db?param=value&...`).
    pub fn parse(url: &str) -> Result<Settings, JournalError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut passed = Vec::new();
        let mut given = Vec::new();
        let mut timeouts = Timeouts {
            connect: Duration::from_secs(10),
            lock: Duration::from_secs(5),
            statement: Duration::from_secs(30),
            idle_in_transaction: Duration::from_secs(10),
        };
        let mut mode = TlsMode::Prefer;
        let mut root_cert = None;
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| unavailable(format!("the URL parameter {key} is not UTF-8")))?;
            given.push(key.to_owned());
            match key {
                "lock_timeout" => timeouts.lock = duration(key, &value)?,
                "statement_timeout" => timeouts.statement = duration(key, &value)?,
                "idle_in_transaction_session_timeout" => {
                    timeouts.idle_in_transaction = duration(key, &value)?
                }
                "sslmode" => mode = tls_mode(&value)?,
                "sslrootcert" => root_cert = Some(PathBuf::from(value.as_ref())),
                _ => passed.push(pair),
            }
        }
        let url = if passed.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passed.join("&"))
        };
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|error: tokio_postgres::Error| unavailable(error.to_string()))?;
        let has = |key: &str| given.iter().any(|given| given == key);
        match config.get_connect_timeout() {
            Some(timeout) => timeouts.connect = *timeout,
            None => {
                config.connect_timeout(timeouts.connect);
            }
        }
        if !has("keepalives_idle") {
            config.keepalives_idle(Duration::from_secs(30));
        }
        if !has("keepalives_interval") {
            config.keepalives_interval(Duration::from_secs(10));
        }
        if !has("keepalives_retries") {
            config.keepalives_retries(3);
        }
        if config.get_application_name().is_none() {
            config.application_name("foldhost");
        }
        let session = format!(
            "-c lock_timeout={} -c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            timeouts.lock.as_millis(),
            timeouts.statement.as_millis(),
            timeouts.idle_in_transaction.as_millis()
        );
        let options = match config.get_options() {
            Some(theirs) => format!("{session} {theirs}"),
            None => session,
        };
        config.options(options);
        config.ssl_mode(match mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        let tls = MakeRustlsConnect::new(tls_config(mode, root_cert)?);
        Ok(Settings {
            config,
            tls,
            timeouts,
        })
    }
}

/// A duration as PostgreSQL writes it: `250ms`, `5s`, `2min`, `1h`; a bare number is
/// milliseconds.
fn duration(key: &str, value: &str) -> Result<Duration, JournalError> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let millis_per_unit = match unit.trim() {
        "" | "ms" => Some(1),
        "s" => Some(1_000),
        "min" => Some(60_000),
        "h" => Some(3_600_000),
        _ => None,
    };
    match (number.parse::<u64>(), millis_per_unit) {
        (Ok(number), Some(unit)) => Ok(Duration::from_millis(number.saturating_mul(unit))),
        _ => Err(unavailable(format!(
            "the URL parameter {key}={value} is not a duration (e.g. 500ms, 5s, 2min)"
        ))),
    }
}

fn tls_mode(value: &str) -> Result<TlsMode, JournalError> {
    Ok(match value {
        "disable" => TlsMode::Disable,
        "prefer" => TlsMode::Prefer,
        "require" => TlsMode::Require,
        "verify-ca" => TlsMode::VerifyCa,
        "verify-full" => TlsMode::VerifyFull,
        other => {
            return Err(unavailable(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            )));
        }
    })
}

/// The rustls configuration of `mode`. `prefer` and `require` encrypt without checking the
/// server's certificate, as libpq does; the `verify-*` modes check it against `root_cert`.
fn tls_config(
    mode: TlsMode,
    root_cert: Option<PathBuf>,
) -> Result<rustls::ClientConfig, JournalError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| unavailable(error.to_string()))?;
    let config = match mode {
        TlsMode::Disable | TlsMode::Prefer | TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let roots = Arc::new(root_store(root_cert)?);
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots,
                provider.clone(),
            )
            .build()
            .map_err(|error| unavailable(format!("sslrootcert: {error}")))?;
            let verifier: Arc<dyn ServerCertVerifier> = if mode == TlsMode::VerifyCa {
                Arc::new(AnyName(verifier))
            } else {
                verifier
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// The CA certificates in `path` (libpq's default: `~/.postgresql/root.crt`).
fn root_store(path: Option<PathBuf>) -> Result<RootCertStore, JournalError> {
    let path = path
        .or_else(|| std::env::home_dir().map(|home| home.join(".postgresql/root.crt")))
        .ok_or_else(|| unavailable("sslmode=verify-* needs sslrootcert=FILE"))?;
    let failed = |error: &dyn std::fmt::Display| {
        unavailable(format!("sslrootcert {}: {error}", path.display()))
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&path).map_err(|error| failed(&error))? {
        roots
            .add(cert.map_err(|error| failed(&error))?)
            .map_err(|error| failed(&error))?;
    }
    if roots.is_empty() {
        return Err(failed(&"no certificate in the file"));
    }
    Ok(roots)
}

/// `prefer` / `require`: any certificate, but a valid signature by it (the session is
/// encrypted, the server not authenticated).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the host name is not checked.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_postgresql_writes_them() {
        assert_eq!(duration("t", "250").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("t", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("t", "5s").unwrap(), Duration::from_secs(5));
        assert_eq!(duration("t", "2min").unwrap(), Duration::from_secs(120));
        assert!(duration("t", "5 parsecs").is_err());
        assert!(duration("t", "").is_err());
    }

    #[test]
    fn foldhost_parameters_are_taken_out_and_the_rest_passed_on() {
        let settings = Settings::parse(
            "postgres://u@h:5433/db?lock_timeout=2s&application_name=app&sslmode=require\
             &options=-c%20work_mem%3D8MB&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(settings.timeouts.lock, Duration::from_secs(2));
        assert_eq!(settings.timeouts.connect, Duration::from_secs(3));
        assert_eq!(settings.config.get_application_name(), Some("app"));
        assert_eq!(settings.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(
            settings.config.get_options(),
            Some(
                "-c lock_timeout=2000 -c statement_timeout=30000 \
                 -c idle_in_transaction_session_timeout=10000 -c work_mem=8MB"
            )
        );
        assert!(Settings::parse("postgres://h/db?sslmode=verify-full&sslrootcert=/nope").is_err());
        assert!(Settings::parse("postgres://h/db?sslmode=sometimes").is_err());
    }
}
