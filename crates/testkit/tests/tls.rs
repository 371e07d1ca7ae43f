//! NATS over TLS as `deploy/nats/tls.conf` and `route-tls.conf` set it up,
//! with certificates from a self-signed CA (what `cargo xtask tls` makes):
//! two nodes whose route is TLS with mutual verification, and natter's own
//! connection code (`NATS_CA_FILE`) speaking TLS to them. A client that does
//! not trust the CA gets nowhere.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A nats-server, killed on drop.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn deploy_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/nats")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `deploy/nats/<name>` with the certificates' directory put where the
/// test made them.
fn rendered(name: &str, certs: &Path) -> String {
    deploy_file(name).replace("/etc/nats/tls/", &format!("{}/", certs.display()))
}

fn start_node(dir: &Path, name: &str, client: u16, route: u16, peer_route: u16) -> Node {
    let config = dir.join(format!("{name}.conf"));
    std::fs::write(
        &config,
        format!(
            "server_name: {name}\nlisten: 127.0.0.1:{client}\ninclude ./tls.conf\n\
             cluster {{\n  name: natter-tls\n  listen: 127.0.0.1:{route}\n  \
             routes: [\"tls://127.0.0.1:{peer_route}\"]\n  include ./route-tls.conf\n}}\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(natter_localinfra::nats_server_binary().unwrap())
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let node = Node(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !natter_localinfra::tcp_accepts(client) {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node
}

fn nats_args(url: &str, ca: Option<&Path>) -> natter_runtime::config::NatsArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        nats: natter_runtime::config::NatsArgs,
    }
    let mut argv = vec![
        "tls-test".to_owned(),
        "--nats-url".to_owned(),
        url.to_owned(),
    ];
    if let Some(ca) = ca {
        argv.extend(["--nats-ca-file".to_owned(), ca.display().to_string()]);
    }
    <Cli as clap::Parser>::parse_from(argv).nats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls_on_clients_and_routes_as_deployed() {
    let dir = tempfile::tempdir().unwrap();
    let certs = natter_localinfra::make_certificates(
        &dir.path().join("tls"),
        &["localhost", "nats-1", "nats-2", "nats-3"],
    )
    .unwrap();
    let cert_dir = certs.ca.parent().unwrap().to_path_buf();
    std::fs::write(dir.path().join("tls.conf"), rendered("tls.conf", &cert_dir)).unwrap();
    std::fs::write(
        dir.path().join("route-tls.conf"),
        rendered("route-tls.conf", &cert_dir),
    )
    .unwrap();
    let ports: Vec<u16> = (0..4)
        .map(|_| natter_localinfra::try_free_port().unwrap())
        .collect();
    let (client1, client2, route1, route2) = (ports[0], ports[1], ports[2], ports[3]);
    let _n1 = start_node(dir.path(), "t1", client1, route1, route2);
    let _n2 = start_node(dir.path(), "t2", client2, route2, route1);

    // natter's connection code, trusting the CA, on each node.
    let connect = |port: u16| {
        let args = nats_args(&format!("tls://127.0.0.1:{port}"), Some(&certs.ca));
        async move {
            natter_runtime::jetstream::connect(&args, "tls-test", "_INBOX", None)
                .await
                .unwrap()
        }
    };
    let (one, two) = (connect(client1).await, connect(client2).await);
    let mut subscriber = two.subscribe("tls.check").await.unwrap();
    two.flush().await.unwrap();
    // A message crosses from node 1 to node 2 once the TLS route is up
    // and has carried node 2's interest over.
    let crossed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            one.publish("tls.check", "over TLS".into()).await.unwrap();
            one.flush().await.unwrap();
            if let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_millis(250), subscriber.next()).await
            {
                return message;
            }
        }
    })
    .await
    .expect("a message crossed the TLS route");
    assert_eq!(&crossed.payload[..], b"over TLS");

    // A client that does not trust the CA is refused at the handshake.
    let untrusted = async_nats::ConnectOptions::new()
        .require_tls(true)
        .connection_timeout(Duration::from_secs(3))
        .connect(format!("tls://127.0.0.1:{client1}"))
        .await;
    assert!(untrusted.is_err(), "a client without the CA connected");
    // And one that tries plain text is refused too: the server demands TLS.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .connect(format!("nats://127.0.0.1:{client1}")),
    )
    .await;
    assert!(!matches!(plain, Ok(Ok(_))), "a plain-text client connected");
}
