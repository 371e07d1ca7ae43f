//! The way out for log lines: a bounded queue to a thread of its own that
//! writes them, many at a time.
//!
//! A line is formatted where it is logged, then only queued: the Tokio
//! threads that serve messages never wait on stdout. A terminal, a pipe
//! or a log shipper that falls behind fills the queue; lines that do not
//! fit are dropped and counted (`natter_log_lines_dropped_total`, and a
//! warning once the writer catches up) rather than stall every connection
//! behind a blocked write.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};
use tracing_subscriber::fmt::MakeWriter;

/// Most bytes of lines queued at once (a line is a few hundred).
pub const QUEUE_BYTES: usize = 8 << 20;

/// How long the writer lets lines gather after writing: a line queued while
/// it waits costs no wake-up of its thread (only a writer blocked on an
/// empty queue is woken), so a busy service pays a wake-up per this many
/// milliseconds, not per line.
const GATHER: Duration = Duration::from_millis(5);

/// The writer's buffer: the lines of one gathering leave in one write (or
/// one per this many bytes), not one write per line.
const WRITE_BUFFER: usize = 64 << 10;

/// How often at most the writer warns that lines were dropped.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(1);

enum Item {
    Line(Vec<u8>),
    /// Everything queued before it is written and flushed: answer.
    Flush(Sender<()>),
}

/// What the queue's two ends share.
struct Shared {
    queued_bytes: AtomicUsize,
    capacity: usize,
    /// Dropped since the writer last reported.
    dropped: AtomicU64,
}

/// The queue's entrance, for the log formatter: each line it writes is
/// queued whole, or dropped when the queue is full.
#[derive(Clone)]
pub struct LogQueue {
    items: Sender<Item>,
    shared: Arc<Shared>,
}

/// Where one log line is written.
pub struct QueuedLine<'a> {
    queue: &'a LogQueue,
}

impl LogQueue {
    /// Starts the writer thread on `out`, queuing at most `capacity` bytes.
    pub fn spawn<W: Write + Send + 'static>(out: W, capacity: usize) -> io::Result<LogQueue> {
        let (items, received) = mpsc::channel();
        let shared = Arc::new(Shared {
            queued_bytes: AtomicUsize::new(0),
            capacity,
            dropped: AtomicU64::new(0),
        });
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_out(out, &received, &writer))?;
        Ok(LogQueue { items, shared })
    }

    /// Waits until every line queued so far is written and flushed, for at
    /// most `patience`. `false` if the writer did not answer in time.
    pub fn flush(&self, patience: Duration) -> bool {
        let (done, answer) = mpsc::channel();
        self.items.send(Item::Flush(done)).is_ok() && answer.recv_timeout(patience).is_ok()
    }

    fn push(&self, line: &[u8]) {
        let shared = &*self.shared;
        let admitted = shared
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + line.len() <= shared.capacity).then_some(queued + line.len())
            })
            .is_ok();
        if !admitted || self.items.send(Item::Line(line.to_vec())).is_err() {
            if admitted {
                shared.queued_bytes.fetch_sub(line.len(), Ordering::AcqRel);
            }
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("natter_log_lines_dropped_total").increment(1);
        }
    }
}

impl<'a> MakeWriter<'a> for LogQueue {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine { queue: self }
    }
}

impl Write for QueuedLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.queue.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writer thread: writes what is queued in one go, flushes when the
/// queue is empty, says how many lines were dropped, and lets the next
/// lines gather.
fn write_out<W: Write>(out: W, items: &Receiver<Item>, shared: &Shared) {
    let mut out = io::BufWriter::with_capacity(WRITE_BUFFER, out);
    let mut last_warning: Option<Instant> = None;
    while let Ok(first) = items.recv() {
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Item::Line(line) => {
                    // A failed write (a closed stdout) loses the line; there
                    // is nowhere left to say so.
                    let _ = out.write_all(&line);
                    shared.queued_bytes.fetch_sub(line.len(), Ordering::AcqRel);
                }
                Item::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = items.try_recv().ok();
        }
        let _ = out.flush();
        if last_warning.is_none_or(|at| at.elapsed() >= DROP_WARNING_EVERY) {
            let dropped = shared.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                last_warning = Some(Instant::now());
                tracing::warn!(
                    dropped,
                    "log lines dropped: the log output is slower than the lines come"
                );
            }
        }
        std::thread::sleep(GATHER);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// What an [`Output`] was given, and whether it is held shut.
    #[derive(Default)]
    struct Written {
        bytes: Vec<u8>,
        held: bool,
    }

    /// An output that keeps what it is given, and can be held shut.
    #[derive(Clone, Default)]
    struct Output {
        state: Arc<(Mutex<Written>, Condvar)>,
    }

    impl Output {
        fn hold(&self) {
            self.state.0.lock().unwrap().held = true;
        }
        fn release(&self) {
            self.state.0.lock().unwrap().held = false;
            self.state.1.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.state.0.lock().unwrap().bytes.clone()).unwrap()
        }
    }

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, opened) = &*self.state;
            let mut state = opened.wait_while(lock.lock().unwrap(), |s| s.held).unwrap();
            state.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn log(queue: &LogQueue, line: &str) {
        queue.make_writer().write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn lines_come_out_whole_and_in_order() {
        let output = Output::default();
        let queue = LogQueue::spawn(output.clone(), QUEUE_BYTES).unwrap();
        for i in 0..1000 {
            log(&queue, &format!("line {i}\n"));
        }
        assert!(queue.flush(Duration::from_secs(10)));
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(output.text(), expected);
    }

    #[test]
    fn a_stuck_output_drops_lines_beyond_the_bound_instead_of_blocking() {
        let output = Output::default();
        let queue = LogQueue::spawn(output.clone(), 100).unwrap();
        output.hold();
        // The writer fills its buffer and blocks writing it out; the queue
        // then holds lines up to 100 bytes and drops the rest, at once.
        let lines = 20_000;
        let started = Instant::now();
        for _ in 0..lines {
            log(&queue, "0123456789\n");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(queue.shared.queued_bytes.load(Ordering::Relaxed) <= 100);
        // Counted until the writer, blocked until the release, reports them.
        let dropped = queue.shared.dropped.load(Ordering::Relaxed) as usize;
        output.release();
        assert!(queue.flush(Duration::from_secs(10)));
        // Every line is written or counted as dropped; at most the buffer
        // and the queue's worth are written.
        let written = output.text().lines().count();
        assert_eq!(written + dropped, lines);
        assert!(
            (1..=(WRITE_BUFFER + 100) / 11 + 1).contains(&written),
            "{written} lines written"
        );
        // Room again once the writer caught up.
        log(&queue, "after\n");
        assert!(queue.flush(Duration::from_secs(10)));
        assert!(output.text().ends_with("after\n"));
    }

    #[test]
    fn flush_gives_up_on_an_output_that_never_opens() {
        let output = Output::default();
        let queue = LogQueue::spawn(output.clone(), QUEUE_BYTES).unwrap();
        output.hold();
        log(&queue, "stuck\n");
        assert!(!queue.flush(Duration::from_millis(200)));
        output.release();
        assert!(queue.flush(Duration::from_secs(10)));
    }
}
