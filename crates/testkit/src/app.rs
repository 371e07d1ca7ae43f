//! A whole natter for one test: its own nats-server, its own database, and
//! the gateway and persister running in-process on free ports, each of which
//! the test can stop, crash or restart.

use crate::database::TestDatabase;
use crate::nats::TestNats;
use crate::ws::WsClient;
use anyhow::Context as _;
use clap::Parser;
use natter_core::UserId;
use natter_persister::FaultHooks;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The signing secret test tokens use.
pub const TEST_JWT_SECRET: &str = "natter-test-secret-natter-test-secret-0123456789";

/// The test gateway's `AUTH_RATE_PER_MIN`: far above what any test signs up.
pub const TEST_AUTH_RATE_PER_MIN: &str = "100000";
/// The test gateway's `SEND_RATE_PER_SEC`: the default (10) would refuse
/// the bursts that tests of ordering, crashes and backpressure send.
pub const TEST_SEND_RATE_PER_SEC: &str = "100000";
/// Each stream's `max_bytes` in a test, unless the test sets its own.
/// nats-server reserves a stream's `max_bytes` out of 75 % of the free disk
/// when the stream is declared, so production's 1 GiB each would make
/// every test's server need gigabytes free, and fail on a fuller disk.
pub const TEST_STREAM_MAX_BYTES: &str = "67108864";

/// `--chat-max-bytes` and `--delivery-max-bytes` at the test size, for
/// each one `given` does not set.
fn stream_limits(given: &[String]) -> Vec<String> {
    ["--chat-max-bytes", "--delivery-max-bytes"]
        .into_iter()
        .filter(|flag| !given.iter().any(|arg| arg == flag))
        .flat_map(|flag| [flag.to_owned(), TEST_STREAM_MAX_BYTES.to_owned()])
        .collect()
}

#[derive(Clone, Debug)]
pub struct TestOptions {
    /// Run PostgreSQL for this test alone (needed to stop or restart it).
    pub own_postgres: bool,
    /// Start the persister with the gateway.
    pub persister: bool,
    /// Extra flags for the gateway, e.g. `["--session-queue", "4"]`.
    pub gateway_args: Vec<String>,
    /// Extra flags for the persister.
    pub persister_args: Vec<String>,
    /// NATS servers: 1, or a cluster (then every stream has 3 replicas).
    pub nats_nodes: usize,
    /// One NATS server with `deploy/nats/accounts.conf`, each service
    /// connecting as its own user (overrides `nats_nodes`).
    pub nats_permissions: bool,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            own_postgres: false,
            persister: true,
            gateway_args: Vec::new(),
            persister_args: vec!["--ack-wait-secs".into(), "5".into()],
            nats_nodes: 1,
            nats_permissions: false,
        }
    }
}

struct Service {
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
    /// The gateway's own task tracker (the persister has none here).
    tasks: Option<TaskTracker>,
}

impl Service {
    async fn stop(self) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(15), self.handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("service ended with an error: {e:#}"),
            Ok(Err(e)) => eprintln!("service task failed: {e}"),
            Err(_) => eprintln!("service did not stop within 15 s"),
        }
    }

    /// Aborts the service's main task at its next await, as a crash would;
    /// its helper tasks (health endpoints, writers) are told to stop too.
    fn crash(self) {
        self.handle.abort();
        self.shutdown.cancel();
    }
}

/// A signed-up user.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub token: String,
}

pub struct TestApp {
    pub nats: TestNats,
    pub db: TestDatabase,
    pub http: reqwest::Client,
    pub gateway_port: u16,
    pub persister_port: u16,
    options: TestOptions,
    gateway: Option<Service>,
    persister: Option<Service>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(TestOptions::default()).await
    }

    pub async fn spawn_with(options: TestOptions) -> Self {
        Self::try_spawn(options).await.expect("test app starts")
    }

    /// A test app with a PostgreSQL of its own, which the test may stop and
    /// start ([`TestApp::stop_postgres`]).
    pub async fn spawn_with_own_postgres() -> Self {
        Self::spawn_with(TestOptions {
            own_postgres: true,
            ..TestOptions::default()
        })
        .await
    }

    async fn try_spawn(options: TestOptions) -> anyhow::Result<Self> {
        crate::logging::init_logging();
        let dir = tempfile::Builder::new().prefix("natter-test-").tempdir()?;
        let nats_dir = dir.path().join("nats");
        let nodes = options.nats_nodes;
        let nats = if options.nats_permissions {
            tokio::task::spawn_blocking(TestNats::start_deploy).await??
        } else {
            tokio::task::spawn_blocking(move || TestNats::start(&nats_dir, nodes)).await??
        };
        let db = TestDatabase::create(options.own_postgres).await?;
        let gateway_listener = TcpListener::bind("127.0.0.1:0").await?;
        let persister_listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut app = Self {
            nats,
            db,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            gateway_port: gateway_listener.local_addr()?.port(),
            persister_port: persister_listener.local_addr()?.port(),
            options,
            gateway: None,
            persister: None,
            _dir: dir,
        };
        if app.options.persister {
            app.start_persister_on(persister_listener, FaultHooks::default())
                .await?;
        } else {
            drop(persister_listener);
        }
        app.start_gateway_on(gateway_listener).await?;
        Ok(app)
    }

    pub fn gateway_config(&self) -> natter_gateway::Config {
        let mut args: Vec<String> = vec![
            "natter-gateway".into(),
            "--nats-url".into(),
            self.nats.url_for("gateway"),
            "--database-url".into(),
            self.db.url.clone(),
            "--jwt-secret".into(),
            TEST_JWT_SECRET.into(),
            "--allowed-origins".into(),
            "http://localhost:5173".into(),
        ];
        // Every test user signs up from 127.0.0.1; a test of the limit sets its own.
        if !self
            .options
            .gateway_args
            .iter()
            .any(|arg| arg == "--auth-rate-per-min")
        {
            args.extend(["--auth-rate-per-min".into(), TEST_AUTH_RATE_PER_MIN.into()]);
        }
        // Likewise every test's own senders; a test of the send limit sets its own.
        if !self
            .options
            .gateway_args
            .iter()
            .any(|arg| arg == "--send-rate-per-sec")
        {
            args.extend(["--send-rate-per-sec".into(), TEST_SEND_RATE_PER_SEC.into()]);
        }
        args.extend(stream_limits(&self.options.gateway_args));
        args.extend(self.replicas());
        args.extend(self.options.gateway_args.iter().cloned());
        natter_gateway::Config::parse_from(args)
    }

    pub fn persister_config(&self) -> natter_persister::Config {
        let mut args: Vec<String> = vec![
            "natter-persister".into(),
            "--nats-url".into(),
            self.nats.url_for("persister"),
            "--database-url".into(),
            self.db.url.clone(),
        ];
        args.extend(stream_limits(&self.options.persister_args));
        args.extend(self.replicas());
        args.extend(self.options.persister_args.iter().cloned());
        natter_persister::Config::parse_from(args)
    }

    async fn start_gateway_on(&mut self, listener: TcpListener) -> anyhow::Result<()> {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let handle = tokio::spawn(natter_gateway::serve(
            self.gateway_config(),
            listener,
            shutdown.clone(),
            tasks.clone(),
        ));
        self.gateway = Some(Service {
            shutdown,
            handle,
            tasks: Some(tasks),
        });
        self.wait_ready(self.gateway_port).await
    }

    async fn start_persister_on(
        &mut self,
        listener: TcpListener,
        hooks: FaultHooks,
    ) -> anyhow::Result<()> {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(natter_persister::run(
            self.persister_config(),
            listener,
            hooks,
            shutdown.clone(),
        ));
        self.persister = Some(Service {
            shutdown,
            handle,
            tasks: None,
        });
        self.wait_ready(self.persister_port).await
    }

    async fn wait_ready(&self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://127.0.0.1:{port}/readyz");
        loop {
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "{url} not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts the persister (again) with fault hooks.
    pub async fn start_persister(&mut self, hooks: FaultHooks) {
        assert!(self.persister.is_none(), "persister already running");
        let listener = bind_again(self.persister_port).await;
        self.start_persister_on(listener, hooks)
            .await
            .expect("persister starts");
    }

    /// Stops the persister gracefully.
    pub async fn stop_persister(&mut self) {
        if let Some(service) = self.persister.take() {
            service.stop().await;
        }
    }

    /// Ends the persister abruptly, as a crash would.
    pub async fn crash_persister(&mut self) {
        if let Some(service) = self.persister.take() {
            service.crash();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tracker that owns every task of the running gateway.
    pub fn gateway_tasks(&self) -> Option<TaskTracker> {
        self.gateway.as_ref().and_then(|g| g.tasks.clone())
    }

    /// Stops the gateway gracefully and starts a new one on the same port.
    pub async fn restart_gateway(&mut self) {
        if let Some(service) = self.gateway.take() {
            service.stop().await;
        }
        let listener = bind_again(self.gateway_port).await;
        self.start_gateway_on(listener)
            .await
            .expect("gateway restarts");
    }

    /// `--stream-replicas 3` on a cluster.
    fn replicas(&self) -> Vec<String> {
        if self.nats.len() > 1 {
            vec!["--stream-replicas".into(), "3".into()]
        } else {
            Vec::new()
        }
    }

    /// kill -9 of nats-server (the first node of a cluster), then a restart
    /// on the same port and store.
    pub async fn crash_and_restart_nats(&mut self) {
        self.nats.node_mut(0).kill().expect("nats-server killed");
        self.nats
            .node_mut(0)
            .restart()
            .expect("nats-server restarts");
        self.wait_ready(self.gateway_port)
            .await
            .expect("gateway ready again");
        if self.persister.is_some() {
            self.wait_ready(self.persister_port)
                .await
                .expect("persister ready again");
        }
    }

    /// Stops this test's own PostgreSQL (requires `own_postgres`).
    pub fn stop_postgres(&mut self) {
        self.db
            .cluster
            .as_mut()
            .expect("test runs its own PostgreSQL")
            .stop()
            .expect("PostgreSQL stops");
    }

    pub fn start_postgres(&mut self) {
        self.db
            .cluster
            .as_mut()
            .expect("test runs its own PostgreSQL")
            .restart()
            .expect("PostgreSQL starts");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway_port)
    }

    pub fn ws_url(&self, token: &str, device: &str) -> String {
        format!(
            "ws://127.0.0.1:{}/ws?token={token}&device={device}",
            self.gateway_port
        )
    }

    /// `/metrics` of the service listening on `port` (the gateway's or the
    /// persister's).
    pub async fn scrape(&self, port: u16) -> crate::scrape::Scrape {
        let text = self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics are text");
        crate::scrape::Scrape::parse(&text)
    }

    /// Every record of `user`'s delivery log, in log order.
    pub async fn delivery_log(
        &self,
        user: UserId,
    ) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let js = self.jetstream().await;
        let stream = js
            .get_stream(natter_core::subjects::DELIVERY_STREAM)
            .await
            .expect("DELIVERY exists");
        let subject = natter_core::subjects::deliver(user);
        let mut log = Vec::new();
        let mut from = 1;
        while let Ok(record) = stream
            .direct_get_next_for_subject(subject.as_str(), Some(from))
            .await
        {
            from = record.sequence + 1;
            log.push(record);
        }
        log
    }

    /// A direct JetStream handle, for tests that inspect the streams.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.nats.first_url())
            .await
            .expect("test connects to NATS");
        async_nats::jetstream::new(client)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        response(request.send().await.expect("GET is answered")).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = self.http.post(self.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        response(request.send().await.expect("POST is answered")).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = self.http.patch(self.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        response(request.send().await.expect("PATCH is answered")).await
    }

    pub async fn signup(&self, username: &str) -> TestUser {
        let display_name = format!("{username} (display)");
        let (status, body) = self
            .post(
                "/api/auth/signup",
                None,
                json!({"username": username, "password": "password-123", "displayName": display_name}),
            )
            .await;
        assert_eq!(status, 201, "signup of {username}: {body}");
        TestUser {
            id: body["user"]["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("user id"),
            username: username.to_owned(),
            display_name,
            token: body["token"].as_str().expect("token").to_owned(),
        }
    }

    /// Creates `count` users straight in the database, with tokens signed by
    /// the test secret: for tests that need many users and not sign-up.
    pub async fn seed_users(&self, prefix: &str, count: usize) -> Vec<TestUser> {
        let keys = natter_gateway::auth::TokenKeys::new(
            Some(TEST_JWT_SECRET),
            false,
            Duration::from_secs(3600),
        )
        .expect("test keys");
        let pool = self.db.pool().await.expect("test database");
        let mut users = Vec::with_capacity(count);
        for i in 0..count {
            let id = UserId::generate();
            let username = format!("{prefix}{i}");
            let display_name = format!("{username} (display)");
            sqlx::query(
                "INSERT INTO users (id, username, display_name, password_hash) VALUES ($1, $2, $3, 'seeded')",
            )
            .bind(id.0)
            .bind(&username)
            .bind(&display_name)
            .execute(&pool)
            .await
            .expect("seeded user");
            users.push(TestUser {
                id,
                username,
                display_name,
                token: keys.issue(id).expect("token"),
            });
        }
        pool.close().await;
        users
    }

    /// Creates a group over REST and returns its JSON.
    pub async fn create_group(
        &self,
        creator: &TestUser,
        name: &str,
        members: &[&TestUser],
    ) -> Value {
        let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
        let (status, body) = self
            .post(
                "/api/groups",
                Some(&creator.token),
                json!({"name": name, "memberIds": ids}),
            )
            .await;
        assert_eq!(status, 201, "group creation: {body}");
        body["group"].clone()
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.delete(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        response(request.send().await.expect("DELETE is answered")).await
    }

    /// `PUT path` with no body.
    pub async fn put(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.put(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        response(request.send().await.expect("PUT is answered")).await
    }

    /// Opens a socket for `user` on `device` and waits for `ready`.
    pub async fn connect(&self, user: &TestUser, device: &str) -> WsClient {
        WsClient::connect(&self.ws_url(&user.token, device))
            .await
            .context("WebSocket connects")
            .expect("connected")
    }

    /// The user's unread count for the direct conversation with `other`,
    /// from `GET /api/users`.
    pub async fn unread_from(&self, user: &TestUser, other: &TestUser) -> i64 {
        let (status, users) = self.get("/api/users", Some(&user.token)).await;
        assert_eq!(status, 200, "{users}");
        users["users"]
            .as_array()
            .and_then(|list| {
                list.iter()
                    .find(|u| u["id"] == other.id.to_string())
                    .and_then(|u| u["unreadCount"].as_i64())
            })
            .expect("other user listed with unreadCount")
    }

    /// The conversation's history as `user` sees it over REST.
    pub async fn history(&self, user: &TestUser, conversation: &str) -> Vec<Value> {
        let (status, body) = self
            .get(
                &format!("/api/conversations/{conversation}/messages?limit=200"),
                Some(&user.token),
            )
            .await;
        match status {
            200 => body["messages"].as_array().cloned().unwrap_or_default(),
            // Not projected yet: the conversation does not exist for anyone.
            404 => Vec::new(),
            other => panic!("history answered {other}: {body}"),
        }
    }

    /// The history once it holds at least `count` messages (or panics after 15 s).
    pub async fn history_eventually(
        &self,
        user: &TestUser,
        conversation: &str,
        count: usize,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let history = self.history(user, conversation).await;
            if history.len() >= count {
                return history;
            }
            assert!(
                Instant::now() < deadline,
                "history of {conversation} reached {} of {count}",
                history.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls `check` until it holds or `within` passes.
    pub async fn eventually<F, Fut>(&self, within: Duration, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        loop {
            if check().await {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Binds a port a stopped service just released (its tasks may take a moment).
async fn bind_again(port: u16) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return listener,
            Err(e) if Instant::now() > deadline => panic!("port {port} not free again: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn response(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for service in [self.gateway.take(), self.persister.take()]
            .into_iter()
            .flatten()
        {
            service.crash();
        }
    }
}

/// Polls `url` until it answers 2xx (or panics after 30 s); returns the body.
pub async fn wait_until_ok(http: &reqwest::Client, url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = http.get(url).send().await
            && response.status().is_success()
        {
            return response.json().await.unwrap_or(Value::Null);
        }
        assert!(Instant::now() < deadline, "{url} not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A response's status, `Retry-After` (whole seconds) and JSON body (null
/// if there is none): what a test of a limit checks.
pub async fn limited(response: reqwest::Response) -> (u16, Option<u64>, Value) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

/// Sends SIGTERM to a child process and waits (up to 15 s) for its exit.
pub async fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process {} ignored SIGTERM",
            child.id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
