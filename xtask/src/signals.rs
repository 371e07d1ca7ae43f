//! SIGINT, SIGTERM and SIGHUP as a flag: xtask keeps running when one arrives so it can stop
//! what it started, in order, instead of dying and leaving servers behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Set once SIGINT, SIGTERM or SIGHUP has arrived.
#[derive(Clone)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Replaces the default action of these signals (terminate) with setting the flag. SIGHUP is
/// what closing the terminal sends.
pub fn install() -> anyhow::Result<Stop> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register(signal, Arc::clone(&flag))
            .with_context(|| format!("installing a handler for signal {signal}"))?;
    }
    Ok(Stop(flag))
}
