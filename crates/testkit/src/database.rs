//! A database per test. The cluster comes from `NATTER_TEST_PG_URL` (set by
//! `cargo xtask test`, which starts one cluster for the whole run) or is
//! started for the test itself. Each test's database is a copy of a
//! template migrated once per schema version, so a test starts in
//! milliseconds; it is dropped when the test ends.

use natter_localinfra::{Postgres, PostgresOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use std::hash::{DefaultHasher, Hash, Hasher};

/// The environment variable naming a running cluster's admin URL.
pub const CLUSTER_URL_ENV: &str = "NATTER_TEST_PG_URL";

pub struct TestDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
    /// The cluster, when this test owns one.
    pub cluster: Option<Postgres>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A fresh, migrated database. `own_cluster` forces a cluster of the
    /// test's own (for tests that stop PostgreSQL).
    pub async fn create(own_cluster: bool) -> anyhow::Result<Self> {
        Self::create_from(own_cluster, true).await
    }

    /// A fresh database without natter's schema, for tests of migrating.
    pub async fn create_blank() -> anyhow::Result<Self> {
        Self::create_from(false, false).await
    }

    async fn create_from(own_cluster: bool, migrated: bool) -> anyhow::Result<Self> {
        let shared = std::env::var(CLUSTER_URL_ENV).ok().filter(|_| !own_cluster);
        let (admin_url, cluster, dir) = match shared {
            Some(url) => (url, None, None),
            None => {
                let dir = tempfile::Builder::new().prefix("natter-pg-").tempdir()?;
                let data_dir = dir.path().join("data");
                let cluster = tokio::task::spawn_blocking(move || {
                    Postgres::start(PostgresOptions {
                        data_dir,
                        port: None,
                    })
                })
                .await??;
                (cluster.url("postgres"), Some(cluster), Some(dir))
            }
        };
        let template = if migrated {
            ensure_template(&admin_url).await?
        } else {
            "template0".to_owned()
        };
        let name = format!("natter_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {name} TEMPLATE {template}"
            )))
            .await?;
        admin.close().await?;
        let url = replace_database(&admin_url, &name);
        Ok(Self {
            admin_url,
            name,
            url,
            cluster,
            _dir: dir,
        })
    }

    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        Ok(PgPool::connect(&self.url).await?)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.cluster.is_some() {
            // The whole cluster goes with the test.
            return;
        }
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime; use a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut admin = PgConnection::connect(&admin_url).await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await?;
                admin.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

fn replace_database(url: &str, database: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{database}"),
        None => format!("{url}/{database}"),
    }
}

/// The name of the migrated template for the current migrations, creating
/// it if no test process did yet (serialised by an advisory lock).
async fn ensure_template(admin_url: &str) -> anyhow::Result<String> {
    let mut hasher = DefaultHasher::new();
    for migration in natter_runtime::database::MIGRATOR.iter() {
        migration.version.hash(&mut hasher);
        migration.checksum.hash(&mut hasher);
    }
    let template = format!("natter_template_{:016x}", hasher.finish());
    let mut admin = PgConnection::connect(admin_url).await?;
    sqlx::query("SELECT pg_advisory_lock(7243)")
        .execute(&mut admin)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&template)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let building = format!("{template}_building");
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {building} WITH (FORCE)"
            )))
            .await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {building}")))
            .await?;
        let pool = PgPool::connect(&replace_database(admin_url, &building)).await?;
        natter_runtime::database::migrate(&pool).await?;
        pool.close().await;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {building} RENAME TO {template}"
            )))
            .await?;
    }
    sqlx::query("SELECT pg_advisory_unlock(7243)")
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    Ok(template)
}
