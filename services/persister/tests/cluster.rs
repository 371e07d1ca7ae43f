//! natter on a 3-node NATS cluster with every stream replicated three
//! times: the guarantees of DESIGN.md §1 across the loss of a node.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

use natter_localinfra::Signal;
use natter_testkit::{TestApp, TestOptions, TestUser, WsClient};
use serde_json::{Value, json};
use std::time::Duration;

/// How long a send may take to be accepted, and the messages to arrive. A
/// Raft election takes up to 9 s and may need a second round, and a loaded
/// machine stretches both; a client stuck on a silent node would need 2–3
/// minutes, so this still tells the two apart.
const PATIENCE: Duration = Duration::from_secs(60);

/// Sends `content` to `to` with a `clientMsgId`, retrying what is answered
/// `unavailable` (the outcome is unknown) with the same id, as DESIGN §4
/// tells clients to. Returns the accepted message.
async fn send_until_accepted(from: &mut WsClient, to: &TestUser, content: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for attempt in 0.. {
        let reference = format!("{content}-{attempt}");
        from.send_ref(
            "send_direct_message",
            json!({"receiverId": to.id.to_string(), "content": content, "clientMsgId": content}),
            &reference,
        )
        .await;
        let reply = from.reply_to(&reference).await;
        if reply["event"] == "message_sent" {
            return reply["data"]["message"].clone();
        }
        assert_eq!(reply["data"]["code"], "unavailable", "{reply}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{content} never accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

/// The name of the node that leads `stream`.
async fn leader_of(app: &TestApp, stream: &str) -> String {
    let js = app.jetstream().await;
    let info = js
        .get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    info.cluster
        .and_then(|c| c.leader)
        .expect("a replicated stream has a leader")
}

/// Alice writing to bob on a natter over a 3-node cluster, with what she
/// had accepted so far.
struct Conversation {
    app: TestApp,
    bob: TestUser,
    a: WsClient,
    b: WsClient,
    sent: Vec<Value>,
}

impl Conversation {
    async fn start() -> Self {
        let app = TestApp::spawn_with(TestOptions {
            nats_nodes: 3,
            ..TestOptions::default()
        })
        .await;
        let alice = app.signup("alice").await;
        let bob = app.signup("bob").await;
        let a = app.connect(&alice, "a").await;
        let b = app.connect(&bob, "b").await;
        Self {
            app,
            bob,
            a,
            b,
            sent: Vec::new(),
        }
    }

    /// Ten messages, each sent until accepted.
    async fn send_ten(&mut self, prefix: &str) {
        for i in 0..10 {
            let message =
                send_until_accepted(&mut self.a, &self.bob, &format!("{prefix}-{i}")).await;
            self.sent.push(message);
        }
    }

    /// The index of the node whose name is `name`.
    fn node_named(&self, name: &str) -> usize {
        (0..self.app.nats.len())
            .find(|i| self.app.nats.node(*i).server_name() == Some(name))
            .unwrap()
    }

    /// The nodes with a client connection whose name starts with `name`
    /// (quoted as in `/connz`), e.g. `"natter-gateway"`.
    fn nodes_serving(&self, name: &str) -> Vec<usize> {
        let nodes: Vec<usize> = (0..self.app.nats.len())
            .filter(|i| {
                natter_localinfra::http_body(self.app.nats.node(*i).monitor_port(), "/connz")
                    .is_ok_and(|connz| connz.contains(name))
            })
            .collect();
        assert!(!nodes.is_empty(), "no node serves {name}");
        nodes
    }

    /// Steps a leader down (JetStream API `stepdown`, e.g.
    /// `STREAM.LEADER.STEPDOWN.DELIVERY`) until `leader` names a node that
    /// is none of `avoid`; returns that node.
    async fn lead_elsewhere<F>(&self, stepdown: &str, avoid: &[usize], leader: F) -> usize
    where
        F: AsyncFn(&TestApp) -> String,
    {
        let js = self.app.jetstream().await;
        let mut node = self.node_named(&leader(&self.app).await);
        for _ in 0..30 {
            if !avoid.contains(&node) {
                return node;
            }
            let _: Result<Value, _> = js.request(stepdown.to_owned(), &json!({})).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            node = self.node_named(&leader(&self.app).await);
        }
        panic!("{stepdown}: the leader never left {avoid:?}");
    }

    /// Bob got every accepted message once, in send order, with rising seq.
    /// Bob's device behaves as a client should: when the gateway closes
    /// its socket it reconnects, and skips what the replay from its cursor
    /// sends again (clients dedupe by message id, DESIGN §1.4). The gateway
    /// does close it in a long outage: this test reads bob's socket only
    /// here, so it leaves the gateway's pings unanswered meanwhile, and a
    /// client silent for two ping intervals is dropped.
    async fn assert_all_delivered(&mut self) {
        let mut got: Vec<Value> = Vec::new();
        let mut closes: Vec<Value> = Vec::new();
        // Messages got before the last reconnect: the replay may repeat them.
        let mut replayable = 0;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while got.len() < self.sent.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {} delivered; socket closes: {closes:?}",
                got.len(),
                self.sent.len()
            );
            let Some(frame) = self.b.try_next(Duration::from_secs(1)).await else {
                continue;
            };
            if frame["event"] == "__closed" {
                closes.push(frame["data"].clone());
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.b = self.app.connect(&self.bob, "b").await;
                replayable = got.len();
            } else if frame["event"] == "receive_direct_message" {
                let message = frame["data"]["message"].clone();
                if !got[..replayable].iter().any(|m| m["id"] == message["id"]) {
                    got.push(message);
                }
            }
        }
        let ids = |messages: &[Value]| -> Vec<String> {
            messages.iter().map(|m| m["id"].to_string()).collect()
        };
        assert_eq!(
            ids(&got),
            ids(&self.sent),
            "delivered once each, in send order"
        );
        let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let late = self.b.drain(Duration::from_millis(500)).await;
        assert!(
            late.iter().all(|f| f["event"] != "receive_direct_message"),
            "{late:?}"
        );
    }
}

#[tokio::test]
async fn the_loss_of_the_chat_leader_loses_duplicates_and_reorders_nothing() {
    let mut talk = Conversation::start().await;
    talk.send_ten("before").await;
    // kill -9 of the node that leads CHAT, while messages go on.
    let leader = leader_of(&talk.app, "CHAT").await;
    let node = talk.node_named(&leader);
    talk.app.nats.node_mut(node).kill().unwrap();
    talk.send_ten("during").await;
    talk.app.nats.node_mut(node).restart().unwrap();
    talk.send_ten("after").await;
    talk.assert_all_delivered().await;
}

#[tokio::test]
async fn a_paused_node_under_the_gateway_is_left_within_seconds() {
    let mut talk = Conversation::start().await;
    talk.send_ten("before").await;
    // SIGSTOP of the node the gateway is connected to: its connection stays
    // open and silent, as with a hung machine. Only the client's pings tell;
    // until they do, every send waits on it.
    let node = talk.nodes_serving("\"natter-gateway\"")[0];
    let pid = talk.app.nats.node(node).pid();
    natter_localinfra::send_signal(pid, Signal::Stop).unwrap();
    talk.send_ten("during").await;
    natter_localinfra::send_signal(pid, Signal::Cont).unwrap();
    talk.send_ten("after").await;
    talk.assert_all_delivered().await;
}

#[tokio::test]
async fn a_lost_majority_answers_unavailable_and_acks_nothing_it_could_lose() {
    let mut talk = Conversation::start().await;
    talk.send_ten("before").await;
    // The two nodes the gateway is not connected to stop (SIGSTOP: both
    // come back at once, where a restarted node would wait alone for a
    // quorum): its own connection stays up, but no write can reach one.
    let gateway_node = talk.nodes_serving("\"natter-gateway\"")[0];
    // DELIVERY's leader among them: the live records it republishes once
    // they are back cross a route to the gateway's node that is down until
    // it reconnects (what the gateway's leader watch is for).
    talk.lead_elsewhere(
        "STREAM.LEADER.STEPDOWN.DELIVERY",
        &[gateway_node],
        async |app| leader_of(app, "DELIVERY").await,
    )
    .await;
    let others: Vec<usize> = (0..talk.app.nats.len())
        .filter(|i| *i != gateway_node)
        .collect();
    let pids: Vec<u32> = others
        .iter()
        .map(|&i| talk.app.nats.node(i).pid())
        .collect();
    for &pid in &pids {
        natter_localinfra::send_signal(pid, Signal::Stop).unwrap();
    }
    // Every send is answered, and answered `unavailable`: never accepted,
    // since nothing can be stored.
    let outage: Vec<String> = (0..3).map(|i| format!("outage-{i}")).collect();
    for content in &outage {
        talk.a
            .send_ref(
                "send_direct_message",
                json!({"receiverId": talk.bob.id.to_string(), "content": content, "clientMsgId": content}),
                content,
            )
            .await;
        let reply = talk.a.reply_to(content).await;
        assert_eq!(reply["event"], "error", "{reply}");
        assert_eq!(reply["data"]["code"], "unavailable", "{reply}");
    }
    for &pid in &pids {
        natter_localinfra::send_signal(pid, Signal::Cont).unwrap();
    }
    // Retried with the same clientMsgId, as DESIGN §4 says: each is stored
    // and delivered once, whether or not a first attempt got through.
    for content in &outage {
        let message = send_until_accepted(&mut talk.a, &talk.bob, content).await;
        talk.sent.push(message);
    }
    talk.send_ten("after").await;
    talk.assert_all_delivered().await;
    // The gateway saw DELIVERY's leader out of reach and back, and made its
    // sessions re-read their logs: live records stored while the route to
    // its node was still down would otherwise wait for the user's next one.
    let resyncs = talk.app.scrape(talk.app.gateway_port).await.value(
        "natter_live_resyncs_total",
        &[("cause", "leader_back_in_reach")],
    );
    assert!(resyncs >= 1.0, "{resyncs} resyncs");
}

/// The name of the node that leads the persister's consumer.
async fn consumer_leader(app: &TestApp) -> String {
    let js = app.jetstream().await;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("CHAT")
        .await
        .unwrap()
        .get_consumer(natter_core::subjects::PERSISTER_CONSUMER)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap().clone();
    info.cluster
        .and_then(|c| c.leader)
        .expect("a replicated consumer has a leader")
}

#[tokio::test]
async fn a_paused_consumer_leader_holds_deliveries_for_seconds_not_until_the_pull_expires() {
    let mut talk = Conversation::start().await;
    talk.send_ten("before").await;
    // The consumer's leader on a node neither service's main connection
    // uses: its pause reaches the persister only through the pull request
    // it holds. (The gateway's log-read connections may sit anywhere; a
    // read on a paused node is asked again on the next connection.)
    let mut used = talk.nodes_serving("\"natter-gateway\"");
    used.extend(talk.nodes_serving("\"natter-persister"));
    let stepdown = format!(
        "CONSUMER.LEADER.STEPDOWN.CHAT.{}",
        natter_core::subjects::PERSISTER_CONSUMER
    );
    let node = talk
        .lead_elsewhere(&stepdown, &used, async |app| consumer_leader(app).await)
        .await;
    let pid = talk.app.nats.node(node).pid();
    natter_localinfra::send_signal(pid, Signal::Stop).unwrap();
    let paused = tokio::time::Instant::now();
    talk.send_ten("during").await;
    // Delivered once a new consumer leader is elected and the persister has
    // pulled again: seconds, where waiting for the lost request to expire
    // would take a minute.
    let mut got = 0;
    while got < 20 {
        assert!(
            paused.elapsed() < Duration::from_secs(45),
            "{got} of 20 delivered 45 s after the consumer's leader paused"
        );
        if let Some(frame) = talk.b.try_next(Duration::from_secs(1)).await
            && frame["event"] == "receive_direct_message"
        {
            got += 1;
        }
    }
    natter_localinfra::send_signal(pid, Signal::Cont).unwrap();
}

#[tokio::test]
async fn a_send_during_a_chat_leader_election_is_accepted_not_refused() {
    let mut talk = Conversation::start().await;
    talk.send_ten("before").await;
    let leader = leader_of(&talk.app, "CHAT").await;
    let node = talk.node_named(&leader);
    talk.app.nats.node_mut(node).kill().unwrap();
    // The gateway publishes the record again (same message id) until the
    // new leader acks it: the client waits an election, and is not asked
    // to retry.
    talk.a
        .send_ref(
            "send_direct_message",
            json!({"receiverId": talk.bob.id.to_string(), "content": "elected", "clientMsgId": "elected"}),
            "elected",
        )
        .await;
    let reply = talk.a.reply_to("elected").await;
    assert_eq!(reply["event"], "message_sent", "{reply}");
    talk.sent.push(reply["data"]["message"].clone());
    talk.app.nats.node_mut(node).restart().unwrap();
    talk.send_ten("after").await;
    talk.assert_all_delivered().await;
}
