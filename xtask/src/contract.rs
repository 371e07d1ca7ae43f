//! The API-contract step of `cargo xtask test`: schemathesis (PyPI, installed once into
//! `.local/tools/schemathesis`) fuzzes a running natter from the OpenAPI document its gateway
//! serves (`GET /api/openapi.json`), as a signed-up user. Every operation, with valid and
//! invalid data and stateful sequences; the step fails on any 5xx, any response the document
//! does not describe (status, content type, body) and any invalid input accepted.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use natter_localinfra::{Fsync, NatsOptions, NatsServer, Postgres, try_free_port, workspace_root};

use crate::service::Service;
use crate::signals::Stop;
use crate::step::{banner, build_services, debug_dir, run_to_end};

/// The schemathesis this step was written against.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
const DATABASE: &str = "natter_contract";
/// The whole fuzzing budget: schemathesis spreads it over its phases.
const MAX_TIME_SECS: &str = "120";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The fuzzed user's password (a throwaway user in a throwaway database).
const PASSWORD: &str = "contract-run-password";

/// The checks the run fails on. `positive_data_acceptance` is left out: data valid by the
/// schema still names users and groups that do not exist, which natter rightly refuses.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
    response_schema_conformance,negative_data_rejection,ignored_auth,unsupported_method,\
    missing_required_header,use_after_free,ensure_resource_availability";

/// What the step runs schemathesis against; stopped in reverse order when dropped.
struct Target {
    base: String,
    username: String,
    log: PathBuf,
    gateway: Service,
    persister: Service,
    _nats: NatsServer,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.gateway.stop(Duration::from_secs(10));
        let _ = self.persister.stop(Duration::from_secs(10));
    }
}

pub fn run(postgres: &Postgres, stop: &Stop) -> anyhow::Result<ExitStatus> {
    let root = workspace_root();
    let tools = ensure_schemathesis(&root)?;
    let status = build_services(stop)?;
    if !status.success() {
        return Ok(status);
    }
    let out = root.join("target").join("contract");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let target = start_natter(postgres, &out, stop)?;
    let base = &target.base;
    banner(&format!(
        "schemathesis against {base}/api/openapi.json ({MAX_TIME_SECS} s at most)"
    ));
    let status = run_to_end(
        Command::new("python3")
            .args(["-m", "schemathesis.cli", "run"])
            .arg(format!("{base}/api/openapi.json"))
            .args(["--checks", CHECKS])
            // The token comes from the hooks (logged in again after a logout revoked it).
            .args(["--generation-with-security-parameters", "false"])
            .args(["--max-time", MAX_TIME_SECS])
            // One worker, a fixed seed and deterministic generation: the same cases in the
            // same order every run (cut off by the time budget), so a red run is a change's
            // doing, not chance.
            .args(["--workers", "1"])
            .args(["--request-timeout", "20"])
            .args(["--seed", "1"])
            .arg("--generation-deterministic")
            .args(["--report", "junit", "--report-dir"])
            .arg(&out)
            .args(["--no-color"])
            .env("PYTHONPATH", python_path(&tools, &root)?)
            .env("SCHEMATHESIS_HOOKS", "natter_hooks")
            .env("NATTER_CONTRACT_BASE", base)
            .env("NATTER_CONTRACT_USER", &target.username)
            .env("NATTER_CONTRACT_PASSWORD", PASSWORD)
            .current_dir(&out),
        "schemathesis run",
        stop,
    )?;
    if !status.success() {
        eprintln!("    the services' log: {}", target.log.display());
    }
    Ok(status)
}

/// nats-server, a database, the persister and a gateway (logging into `out`), with a user
/// signed up for the run. Limits and the hashing cost are lifted: fuzzing signs up and logs
/// in thousands of times from one address, and the handlers, not the limiter, should answer.
fn start_natter(postgres: &Postgres, out: &Path, stop: &Stop) -> anyhow::Result<Target> {
    banner("nats-server, a database, the persister and a gateway for schemathesis");
    let nats = NatsServer::start(NatsOptions {
        data_dir: out.join("nats"),
        port: None,
        fsync: Fsync::Interval,
        cluster: None,
    })?;
    // The run's PostgreSQL is new each run, and so is this database.
    postgres.ensure_database(DATABASE)?;
    let gateway_port = try_free_port()?;
    let persister_port = loop {
        let port = try_free_port()?;
        if port != gateway_port {
            break port;
        }
    };
    let username = format!("fuzz{}", std::process::id());
    let (gateway_port_text, persister_port_text) =
        (gateway_port.to_string(), persister_port.to_string());
    let (nats_url, database_url) = (nats.url(), postgres.url(DATABASE));
    let env = [
        ("NATS_URL", nats_url.as_str()),
        ("DATABASE_URL", database_url.as_str()),
        ("JWT_SECRET", "contract-run-secret-not-for-production"),
        ("PORT", gateway_port_text.as_str()),
        ("PERSISTER_PORT", persister_port_text.as_str()),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("RUST_LOG", "warn"),
        ("AUTH_RATE_PER_MIN", "1000000"),
        ("PASSWORD_HASH_MEMORY_MIB", "8"),
        ("SEND_RATE_PER_SEC", "1000000"),
        ("ADMIN_USERS", username.as_str()),
    ];
    let debug = debug_dir();
    let log = out.join("services.log");
    let start = |name: &'static str, port: u16| -> anyhow::Result<Service> {
        let mut service = Service::spawn_logged(name, &debug.join(name), port, &env, &log)?;
        if !service.wait_ready(READY_TIMEOUT, stop)? {
            bail!("{name} not ready (see {})", log.display());
        }
        Ok(service)
    };
    let persister = start("natter-persister", persister_port)?;
    let gateway = start("natter-gateway", gateway_port)?;
    let base = format!("http://127.0.0.1:{gateway_port}");
    sign_up(&base, &username)?;
    Ok(Target {
        base,
        username,
        log,
        gateway,
        persister,
        _nats: nats,
    })
}

/// Installs schemathesis with pip into `.local/tools/schemathesis` unless it is there; returns
/// the directory to put on `PYTHONPATH`.
fn ensure_schemathesis(root: &Path) -> anyhow::Result<PathBuf> {
    let target = root.join(".local").join("tools").join("schemathesis");
    let installed = || {
        Command::new("python3")
            .args(["-m", "schemathesis.cli", "--version"])
            .env("PYTHONPATH", &target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if installed() {
        return Ok(target);
    }
    banner(&format!(
        "pip install {SCHEMATHESIS} (into {})",
        target.display()
    ));
    natter_localinfra::pip_install(SCHEMATHESIS, &target)?;
    if !installed() {
        bail!("pip installed {SCHEMATHESIS}, but schemathesis does not run");
    }
    Ok(target)
}

/// schemathesis, and the hooks in `xtask/contract/`.
fn python_path(tools: &Path, root: &Path) -> anyhow::Result<std::ffi::OsString> {
    std::env::join_paths([tools.to_path_buf(), root.join("xtask").join("contract")])
        .context("joining PYTHONPATH")
}

/// Signs `username` up (a POST from Python: xtask has no HTTP client).
fn sign_up(base: &str, username: &str) -> anyhow::Result<()> {
    let script = r#"
import json, sys, urllib.request
body = json.dumps({"username": sys.argv[2], "password": sys.argv[3]}).encode()
request = urllib.request.Request(sys.argv[1] + "/api/auth/signup", data=body,
                                 headers={"Content-Type": "application/json"})
urllib.request.urlopen(request, timeout=30)
"#;
    let output = Command::new("python3")
        .args(["-c", script, base, username, PASSWORD])
        .output()
        .context("running python3 to sign up")?;
    if !output.status.success() {
        bail!(
            "sign-up failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
