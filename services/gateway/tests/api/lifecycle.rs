//! The gateway's own lifecycle: every task it spawns is owned, and stops
//! with it.

use natter_testkit::{TestApp, TestOptions};
use std::time::Duration;

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until the runtime holds at most `most` tasks; the last count seen.
async fn settle_to(most: usize, within: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let alive = alive_tasks();
        if alive <= most || tokio::time::Instant::now() > deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_restart_leaves_no_task_of_the_old_gateway_running() {
    // No persister: the only tasks on this runtime are the gateway's.
    let mut app = TestApp::spawn_with(TestOptions {
        persister: false,
        ..TestOptions::default()
    })
    .await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let idle = settle_to(0, Duration::from_millis(500)).await;

    // Exercise everything that spawns: sessions, live feeds, ack waits,
    // presence, typing and control messages.
    let old = app.gateway_tasks().expect("the gateway has a tracker");
    let mut a = app.connect(&alice, "a").await;
    let b = app.connect(&bob, "b").await;
    a.send_direct(bob.id, "hello", "r1").await;
    assert!(!old.is_empty(), "the sessions are the tracker's tasks");

    app.restart_gateway().await;
    assert!(old.is_closed(), "the old gateway's tracker is closed");
    assert_eq!(old.len(), 0, "no task of the old gateway is left");
    drop((a, b));

    // The new gateway, idle, holds no more tasks than the first one did.
    let after = settle_to(idle, Duration::from_secs(10)).await;
    assert!(
        after <= idle,
        "{after} tasks alive after the restart, {idle} with the first gateway idle"
    );
    let new = app.gateway_tasks().expect("the new gateway has a tracker");
    assert!(!new.is_closed());
}
