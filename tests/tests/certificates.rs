//! Certificates made for a test with the `openssl` CLI (`scripts/postgres` installs it).

use std::path::Path;
use std::process::Command;

/// Writes into `dir` a CA (`ca.crt`, `ca.key`), a certificate for a server (`server.crt`,
/// `server.key`) that it signed, named `common_name` and valid for `subject_alt_name` (e.g.
/// `DNS:localhost` or `IP:127.0.0.1`), and another CA that signed nothing (`other-ca.crt`).
pub fn make(dir: &Path, common_name: &str, subject_alt_name: &str) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, subject) in [
        ("ca", "/CN=foldhost test CA"),
        ("other-ca", "/CN=someone else"),
    ] {
        let (key, cert) = (format!("{name}.key"), format!("{name}.crt"));
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", subject];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &cert]);
        openssl(&args);
    }
    let subject = format!("/CN={common_name}");
    let mut args = vec!["req", "-subj", &subject, "-keyout", "server.key"];
    args.extend(ec);
    args.extend(["-out", "server.csr"]);
    openssl(&args);
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "subjectAltName={subject_alt_name}\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
}
