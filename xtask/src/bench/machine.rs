//! Where and how a suite ran: the hardware, the kernel, the toolchain, the servers' versions
//! and the command, read once per run so every published number names its setting.

use std::fs;
use std::path::Path;
use std::process::Command;

use natter_localinfra::workspace_root;

/// What the results section says about a run's setting. Every field is display text; a fact
/// that could not be read is "unknown" rather than an error, since the numbers stand anyway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    /// When the suite ran, UTC.
    pub date: String,
    pub cores: String,
    pub memory: String,
    pub cpu: String,
    pub os: String,
    pub kernel: String,
    /// The soft limit on open files, which caps the connections one process can hold.
    pub open_files: String,
    pub rustc: String,
    /// The cargo profile of natter's binaries: "release", or "debug" for a `--quick` smoke run.
    pub profile: &'static str,
    pub nats_server: String,
    /// JetStream's fsync policy, or that it is not known (an external NATS).
    pub fsync: String,
    pub postgres: String,
    /// The commit measured, and whether the tree had changes on top of it.
    pub commit: String,
    /// The `cargo xtask bench …` command line that reproduces the run.
    pub command: String,
}

const UNKNOWN: &str = "unknown";

/// Reads the facts that do not depend on the servers; the caller fills in `nats_server`,
/// `fsync`, `postgres` and `command`.
pub fn probe() -> Machine {
    let root = workspace_root();
    Machine {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        cores: std::thread::available_parallelism()
            .map_or_else(|_| UNKNOWN.to_owned(), |n| n.to_string()),
        memory: read("/proc/meminfo", mem_total),
        cpu: read("/proc/cpuinfo", cpu_model),
        os: read("/etc/os-release", os_name),
        kernel: command_output(Command::new("uname").arg("-r")).unwrap_or_else(unknown),
        open_files: read("/proc/self/limits", open_files_limit),
        // In the workspace so rust-toolchain.toml picks the same rustc that built the binaries.
        rustc: command_output(Command::new("rustc").arg("--version").current_dir(&root))
            .unwrap_or_else(unknown),
        profile: "release",
        nats_server: UNKNOWN.to_owned(),
        fsync: UNKNOWN.to_owned(),
        postgres: UNKNOWN.to_owned(),
        commit: commit(&root).unwrap_or_else(unknown),
        command: UNKNOWN.to_owned(),
    }
}

/// `<binary> --version`, e.g. `nats-server: v2.15.1`.
pub fn version_of(binary: &Path) -> String {
    command_output(Command::new(binary).arg("--version")).unwrap_or_else(unknown)
}

/// The server version PostgreSQL reports over `database_url`, asked with `psql`.
pub fn postgres_version(database_url: &str) -> String {
    let Ok(bin) = natter_localinfra::postgres_bin_dir() else {
        return UNKNOWN.to_owned();
    };
    command_output(
        Command::new(bin.join("psql"))
            .args(["-X", "-tA", "-c", "SHOW server_version", "-d"])
            .arg(database_url),
    )
    .map_or_else(unknown, |version| format!("PostgreSQL {version}"))
}

fn unknown() -> String {
    UNKNOWN.to_owned()
}

fn read(path: &str, parse: fn(&str) -> Option<String>) -> String {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| parse(&text))
        .unwrap_or_else(unknown)
}

/// Trimmed stdout of a command that succeeded and printed something.
fn command_output(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}

fn commit(root: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        // No optional locks: reading the state must not rewrite the index.
        command_output(
            Command::new("git")
                .arg("--no-optional-locks")
                .args(args)
                .current_dir(root),
        )
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some();
    Some(if dirty {
        format!("{head} with uncommitted changes")
    } else {
        head
    })
}

/// `MemTotal` from `/proc/meminfo`, in GiB.
fn mem_total(meminfo: &str) -> Option<String> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.1} GiB", kib / (1024.0 * 1024.0)))
}

/// The first `model name` in `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name" && !value.trim().is_empty()).then(|| value.trim().to_owned())
    })
}

/// `PRETTY_NAME` from `/etc/os-release`.
fn os_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

/// The soft `Max open files` limit from `/proc/self/limits`; children inherit it.
fn open_files_limit(limits: &str) -> Option<String> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3).map(str::to_owned)
}

/// The soft open-files limit as a number, when it is one ("unlimited" is `None`).
pub fn open_files(machine: &Machine) -> Option<u64> {
    machine.open_files.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_cpu_os_and_open_files() {
        let meminfo = "MemTotal:       24683656 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(meminfo).as_deref(), Some("23.5 GiB"));
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\
                       processor\t: 1\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC"));
        let os_release =
            "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_name(os_release).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             unlimited            unlimited            processes \n\
                      Max open files            20000                40000                files     \n";
        assert_eq!(open_files_limit(limits).as_deref(), Some("20000"));
    }

    #[test]
    fn missing_facts_are_none() {
        assert_eq!(mem_total(""), None);
        assert_eq!(cpu_model("processor\t: 0\n"), None);
        assert_eq!(os_name("NAME=x\n"), None);
        assert_eq!(open_files_limit(""), None);
    }
}
