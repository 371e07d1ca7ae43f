//! `cargo xtask tls`: a self-signed CA and a certificate for the NATS nodes, to try TLS on
//! client and route connections (`deploy/nats/tls.conf`, `route-tls.conf`; deploy/README.md,
//! "TLS"). For trying it out: production uses its own CA.

use std::path::PathBuf;
use std::process::ExitCode;

use natter_localinfra::workspace_root;

#[derive(clap::Args)]
pub struct TlsArgs {
    /// Where to write ca.pem, ca-key.pem, server.pem and server-key.pem [default: .local/tls].
    #[arg(long)]
    out: Option<PathBuf>,
    /// DNS names the node certificate is for (127.0.0.1 is always added).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "localhost,nats-1,nats-2,nats-3"
    )]
    names: Vec<String>,
}

pub fn run(args: &TlsArgs) -> anyhow::Result<ExitCode> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join(".local").join("tls"));
    let names: Vec<&str> = args.names.iter().map(String::as_str).collect();
    let files = natter_localinfra::make_certificates(&out, &names)?;
    println!("CA certificate:   {}", files.ca.display());
    println!(
        "CA key:           {} (keep it off the servers)",
        files.ca_key.display()
    );
    println!(
        "node certificate: {} (for {})",
        files.cert.display(),
        names.join(", ")
    );
    println!("node key:         {}", files.key.display());
    println!(
        "mount the folder at /etc/nats/tls on every node and give the services NATS_CA_FILE={}",
        files.ca.display()
    );
    Ok(ExitCode::SUCCESS)
}
