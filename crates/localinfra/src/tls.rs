//! A self-signed certificate authority and one certificate it signs, made with the `openssl`
//! command, for NATS with TLS on client and route connections: `cargo xtask tls` writes them
//! for a deployment to try, and the tests use them to prove the configs in `deploy/nats/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{IoContext as _, Result};
use crate::process::run;

/// The files [`make_certificates`] writes.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA's certificate: what clients and nodes trust.
    pub ca: PathBuf,
    /// The CA's private key (keep it off the servers).
    pub ca_key: PathBuf,
    /// The certificate of the NATS nodes, for serving clients and, as a client of its peers,
    /// for routes.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Days the certificates are valid.
const DAYS: &str = "825";

/// Makes a CA and a certificate for `names` (DNS names; `127.0.0.1` is always added as an IP)
/// under `dir`, valid for server and client authentication.
pub fn make_certificates(dir: &Path, names: &[&str]) -> Result<TlsFiles> {
    fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        ca_key: dir.join("ca-key.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    let csr = dir.join("server.csr");
    let extensions = dir.join("server.ext");
    let mut alt_names: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    alt_names.push("IP:127.0.0.1".to_owned());
    fs::write(
        &extensions,
        format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
            alt_names.join(",")
        ),
    )
    .context(|| format!("writing {}", extensions.display()))?;

    openssl(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", DAYS])
            .args(["-subj", "/CN=natter NATS CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&files.ca_key)
            .arg("-out")
            .arg(&files.ca),
    )?;
    openssl(
        Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-subj", "/CN=natter NATS node"])
            .arg("-keyout")
            .arg(&files.key)
            .arg("-out")
            .arg(&csr),
    )?;
    openssl(
        Command::new("openssl")
            .args(["x509", "-req", "-days", DAYS, "-set_serial", "2"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&files.ca)
            .arg("-CAkey")
            .arg(&files.ca_key)
            .arg("-extfile")
            .arg(&extensions)
            .arg("-out")
            .arg(&files.cert),
    )?;
    let _ = fs::remove_file(&csr);
    let _ = fs::remove_file(&extensions);
    Ok(files)
}

fn openssl(command: &mut Command) -> Result<()> {
    run(command).map(|_| ())
}
