//! natter-loadtest: load and correctness at once. Every scenario drives a
//! real gateway over protocol v1 and keeps Jepsen-style books on every
//! message (attempted, accepted, delivered, lost, duplicated, out of order,
//! unexpected) while it measures throughput and latency.
//!
//! - [`cli`]: the command line, one subcommand per scenario.
//! - [`scenarios`]: `steady`, `fanout`, `connections`, `storm`, `abuse`, and the
//!   machinery they share.
//! - [`accounting`]: the books, and the verdict they give.
//! - [`measure`]: latency histograms and the per-second timeline.
//! - [`client`], [`users`]: sockets and test users; [`streams`]: JetStream's bytes.
//! - [`report`]: what a run measured; [`render`]: its summary, JSON and HTML.

pub mod accounting;
pub mod cli;
pub mod client;
pub mod measure;
pub mod render;
pub mod report;
pub mod scenarios;
pub mod streams;
pub mod users;

use cli::{Cli, Scenario};
use report::Report;

/// Runs the scenario the command line names.
pub async fn run(cli: &Cli) -> anyhow::Result<Report> {
    match &cli.scenario {
        Scenario::Steady(args) => scenarios::steady::run(&cli.target, args).await,
        Scenario::Fanout(args) => scenarios::fanout::run(&cli.target, args).await,
        Scenario::Connections(args) => scenarios::connections::run(&cli.target, args).await,
        Scenario::Storm(args) => scenarios::storm::run(&cli.target, args).await,
        Scenario::Abuse(args) => scenarios::abuse::run(&cli.target, args).await,
    }
}
