//! Processes without libc: signals through the `kill` command, liveness through /proc, the
//! effective uid, watchdogs that clean up after a killed caller, and the tail of a log file.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{InfraError, IoContext, Result};

/// How often waits poll; short enough that tests don't notice, long enough to cost nothing.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// A signal [`send_signal`] can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT: what a terminal's Ctrl-C sends.
    Int,
    /// SIGTERM: asks for a graceful shutdown.
    Term,
    /// SIGKILL: ends the process at once.
    Kill,
    /// SIGSTOP: pauses the process (a hung machine, as its peers see it).
    Stop,
    /// SIGCONT: resumes a paused process.
    Cont,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Self::Int => "INT",
            Self::Stop => "STOP",
            Self::Cont => "CONT",
            Self::Term => "TERM",
            Self::Kill => "KILL",
        }
    }
}

/// Sends `signal` to process `pid` with the `kill` command (the crate forbids `unsafe`, so no
/// libc). Signalling a process that already exited is not an error.
pub fn send_signal(pid: u32, signal: Signal) -> Result<()> {
    let output = Command::new("kill")
        .args(["-s", signal.name(), &pid.to_string()])
        .output()
        .context(|| format!("running `kill -s {} {pid}`", signal.name()))?;
    if output.status.success() || !is_alive(pid) {
        return Ok(());
    }
    Err(command_failed(
        &format!("kill -s {} {pid}", signal.name()),
        &output,
    ))
}

/// Whether process `pid` exists and is not a zombie (Linux: reads /proc).
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone, for at most `timeout`.
pub(crate) fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
    true
}

/// The pids whose parent is `parent` (Linux: scans /proc).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // Fields after the command name: state, ppid, ...
                    let (_, rest) = stat.rsplit_once(") ")?;
                    rest.split_ascii_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Waits for `child` to exit, for at most `timeout`; `None` if it is still running.
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .context(|| format!("waiting for process {}", child.id()))?
        {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; always reaps the child.
pub(crate) fn terminate_child(child: &mut Child, what: &str, grace: Duration) -> Result<()> {
    if child
        .try_wait()
        .context(|| format!("checking on {what}"))?
        .is_some()
    {
        return Ok(());
    }
    send_signal(child.id(), Signal::Term)?;
    if wait_child(child, grace)?.is_none() {
        kill_child(child, what)?;
    }
    Ok(())
}

/// SIGKILL and reap, so no zombie is left behind.
pub(crate) fn kill_child(child: &mut Child, what: &str) -> Result<()> {
    // kill() fails only when the child was already reaped, which wait() then reports as success.
    let _ = child.kill();
    child
        .wait()
        .context(|| format!("waiting for {what} (pid {}) to exit", child.id()))?;
    Ok(())
}

/// Where a [`Watchdog`] runs relative to process groups.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Group {
    /// The caller's: a harness that kills the caller's group kills the watchdog with it.
    Caller,
    /// A new group of its own: it outlives a kill of the caller's group.
    Own,
    /// The group led by this pid.
    Join(u32),
}

/// Runs a shell script if this process dies without dropping the watchdog first, even by
/// SIGKILL, when no destructor runs: servers then die with the test or xtask that started them
/// instead of piling up.
///
/// The shell blocks reading a pipe whose only writer is this process (Rust opens pipes
/// close-on-exec, so no other child inherits it). The kernel closes it when we die, the read
/// returns, and the script runs. Dropping the watchdog kills the shell before closing the pipe.
#[derive(Debug)]
pub(crate) struct Watchdog {
    shell: Child,
}

impl Watchdog {
    pub(crate) fn arm(script: &str, group: Group) -> Result<Self> {
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(format!("read _unused; {script}"))
            .current_dir("/")
            .stdin(Stdio::piped())
            // Holding the caller's stdout would look like a leak to nextest.
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match group {
            Group::Caller => {}
            Group::Own => {
                command.process_group(0);
            }
            Group::Join(leader) => {
                // Linux pids fit in an i32; were one not to, a group of its own is the next best.
                command.process_group(i32::try_from(leader).unwrap_or(0));
            }
        }
        let shell = command
            .spawn()
            .context(|| "starting a watchdog shell".into())?;
        Ok(Self { shell })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Killed before its stdin closes, so the script never runs.
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

/// `text` quoted for /bin/sh.
pub(crate) fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// `command` as a /bin/sh command line.
pub(crate) fn sh_command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| sh_quote(&part.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The effective uid of this process (Linux: the second field of /proc/self/status's `Uid:`).
pub fn effective_uid() -> Result<u32> {
    let status =
        fs::read_to_string("/proc/self/status").context(|| "reading /proc/self/status".into())?;
    parse_effective_uid(&status).ok_or_else(|| InfraError::Io {
        context: "reading the effective uid from /proc/self/status".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no parsable Uid: line"),
    })
}

fn parse_effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_ascii_whitespace().nth(2)?.parse().ok()
}

/// Runs `command`, capturing its output, and turns a non-zero exit into [`InfraError::Command`].
pub(crate) fn run(command: &mut Command) -> Result<Output> {
    let shown = show(command);
    let output = command.output().context(|| format!("running `{shown}`"))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(command_failed(&shown, &output))
    }
}

pub(crate) fn command_failed(shown: &str, output: &Output) -> InfraError {
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    InfraError::Command {
        command: shown.to_owned(),
        status: output.status.to_string(),
        output: text,
    }
}

/// The command line as a person would type it, for error messages.
pub(crate) fn show(command: &Command) -> String {
    let mut shown = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

/// The size of `path` now, so a later [`log_tail`] shows only what was written after it.
pub(crate) fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// The last `lines` lines written to `path` after byte `from`, for error messages.
pub(crate) fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let mut text = Vec::new();
    let read = fs::File::open(path).and_then(|mut file| {
        let len = file.metadata()?.len();
        // A rewritten (shorter) log is read from its start.
        file.seek(SeekFrom::Start(if from <= len { from } else { 0 }))?;
        file.read_to_end(&mut text)
    });
    if let Err(error) = read {
        return format!("(could not read {}: {error})", path.display());
    }
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    let tail = all
        .get(all.len().saturating_sub(lines)..)
        .unwrap_or_default();
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_effective_uid() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t1\t1\t1\t1\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_is_alive_and_has_an_effective_uid() {
        assert!(is_alive(std::process::id()));
        effective_uid().unwrap();
    }

    #[test]
    fn terminates_and_reaps_a_child() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(children_of(std::process::id()).contains(&pid));
        terminate_child(&mut child, "sleep", Duration::from_secs(5)).unwrap();
        assert!(!is_alive(pid));
    }

    #[test]
    fn log_tail_shows_only_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        fs::write(&log, "old 1\nold 2\n").unwrap();
        let from = log_len(&log);
        fs::write(&log, "old 1\nold 2\nnew 1\nnew 2\nnew 3\n").unwrap();
        assert_eq!(log_tail(&log, from, 2), "new 2\nnew 3");
        assert_eq!(log_tail(&log, from, 10), "new 1\nnew 2\nnew 3");
    }

    #[test]
    fn quotes_for_the_shell() {
        let output = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote("it's $HOME \\ `x`")))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            "it's $HOME \\ `x`"
        );
    }

    #[test]
    fn watchdog_is_disarmed_by_drop() {
        let dir = tempfile::tempdir().unwrap();
        let fired = dir.path().join("fired");
        let script = format!("touch {}", sh_quote(&fired.to_string_lossy()));
        drop(Watchdog::arm(&script, Group::Own).unwrap());
        thread::sleep(Duration::from_millis(200));
        assert!(!fired.exists());
    }

    #[test]
    fn watchdog_fires_when_its_owner_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        // The owner is this test binary again, running the ignored helper below.
        let mut owner = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "process::tests::watchdog_owner", "--ignored"])
            .env("WATCHDOG_TEST_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let armed = dir.path().join("armed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !armed.exists() && Instant::now() < deadline {
            thread::sleep(POLL);
        }
        assert!(armed.exists(), "the owner never armed its watchdog");

        kill_child(&mut owner, "watchdog owner").unwrap();
        let fired = dir.path().join("fired");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !fired.exists() && Instant::now() < deadline {
            thread::sleep(POLL);
        }
        assert!(
            fired.exists(),
            "the watchdog did not fire after its owner was killed"
        );
    }

    /// Helper for the test above: arms a watchdog, says so, and waits to be killed.
    #[test]
    #[ignore = "run by watchdog_fires_when_its_owner_is_killed"]
    fn watchdog_owner() {
        let Some(dir) = std::env::var_os("WATCHDOG_TEST_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let script = format!("touch {}", sh_quote(&dir.join("fired").to_string_lossy()));
        let _watchdog = Watchdog::arm(&script, Group::Own).unwrap();
        fs::write(dir.join("armed"), "").unwrap();
        thread::sleep(Duration::from_secs(30));
    }
}
