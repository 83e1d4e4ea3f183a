//! The PostgreSQL journal over TLS (rustls): `sslmode=require` encrypts every session,
//! `verify-full` connects only to a server whose certificate it can verify, and `verify-ca`
//! checks the certificate's signature but not its name.
//!
//! Runs a private cluster with `ssl=on` and a certificate made by the test (`openssl`).

use crate::pgcluster;

use foldhost::journal::{ExpectedVersion, Journal, JournalConfig, NewEvent};

/// Whether every session of `application` on the cluster at `url` is encrypted, as the
/// server sees it (`pg_stat_ssl`); panics if there is none.
async fn encrypted(url: &str, application: &str) -> bool {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&application],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty(), "no session of {application}");
    rows.iter().all(|row| row.get::<_, bool>(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_encrypts_its_sessions_and_verifies_the_certificates_it_is_asked_to() {
    let cluster = pgcluster::Cluster::start_with_tls();
    let url = cluster.url();
    let open = |query: String| {
        let url = format!("{url}?{query}");
        async move { Journal::open_postgres(&url, JournalConfig::default()).await }
    };

    let journal = open("sslmode=require&application_name=tls-require".into())
        .await
        .unwrap();
    let event = NewEvent::json("Noted", &serde_json::json!({"secret": true}));
    journal
        .append("s", ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    assert!(encrypted(&url, "tls-require").await);
    // The control: a session with TLS off is seen as such.
    let plain = open("sslmode=disable&application_name=tls-off".into())
        .await
        .unwrap();
    assert!(!encrypted(&url, "tls-off").await);
    drop(plain);

    let ca = cluster.ca().display().to_string();
    let verified = open(format!(
        "sslmode=verify-full&sslrootcert={ca}&application_name=tls-verified"
    ))
    .await
    .unwrap();
    assert_eq!(verified.head_position(), 1);
    assert!(encrypted(&url, "tls-verified").await);

    let other = cluster.other_ca().display().to_string();
    match open(format!("sslmode=verify-full&sslrootcert={other}")).await {
        Err(error) => assert!(error.to_string().contains("certificate"), "{error}"),
        Ok(_) => panic!("verify-full trusted a certificate its CA did not sign"),
    }
    // The right CA, but a name the certificate does not carry.
    let by_name = url.replace("127.0.0.1", "localhost");
    let wrong_name = Journal::open_postgres(
        &format!("{by_name}?sslmode=verify-full&sslrootcert={ca}"),
        JournalConfig::default(),
    )
    .await;
    match wrong_name {
        Err(error) => assert!(error.to_string().contains("certificate"), "{error}"),
        Ok(_) => panic!("verify-full accepted a certificate for another name"),
    }

    // verify-ca: the same certificate under the other name is fine, another CA's is not.
    let by_ca = Journal::open_postgres(
        &format!("{by_name}?sslmode=verify-ca&sslrootcert={ca}&application_name=tls-ca"),
        JournalConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(by_ca.head_position(), 1);
    assert!(encrypted(&url, "tls-ca").await);
    match open(format!("sslmode=verify-ca&sslrootcert={other}")).await {
        Err(error) => assert!(error.to_string().contains("certificate"), "{error}"),
        Ok(_) => panic!("verify-ca trusted a certificate its CA did not sign"),
    }
}
