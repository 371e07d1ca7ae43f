//! Property tests of the frame decoder and the session around it: any
//! bytes, any JSON, any event name with any data. Never a panic; every
//! refused frame gets an `error` frame with a code of DESIGN §4, and the
//! connection stays and keeps answering.

use super::protocol;
use super::tests::{Client, Fake, limits};
use axum::extract::ws::Message as WsMessage;
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};

/// The error codes of DESIGN §4.
const CODES: [&str; 8] = [
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "payload_too_large",
    "rate_limited",
    "unavailable",
    "internal",
];

/// The client events of DESIGN §4, and a few near misses.
const EVENTS: [&str; 10] = [
    "send_direct_message",
    "send_group_message",
    "join_group",
    "mark_read",
    "ack",
    "typing",
    "ping",
    "Ping",
    "send_direct_message ",
    "",
];

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<u64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        Just(Value::String(uuid::Uuid::now_v7().to_string())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("receiverId".to_owned()),
                    Just("groupId".to_owned()),
                    Just("content".to_owned()),
                    Just("clientMsgId".to_owned()),
                    Just("conversationId".to_owned()),
                    Just("upToSeq".to_owned()),
                    Just("cursor".to_owned()),
                    ".{0,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// One frame a client might send, as text or binary.
#[derive(Debug, Clone)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        // Anything at all, mostly not JSON.
        ".{0,200}".prop_map(Frame::Text),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Frame::Binary),
        // Any JSON.
        any_json().prop_map(|v| Frame::Text(v.to_string())),
        // A command's shape, with any event name, data and ref.
        (
            prop_oneof![
                prop::sample::select(EVENTS.to_vec()).prop_map(str::to_owned),
                ".{0,20}"
            ],
            any_json(),
            any_json()
        )
            .prop_map(|(event, data, reference)| Frame::Text(
                json!({"event": event, "data": data, "ref": reference}).to_string()
            )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_decoder_never_panics_and_refuses_with_a_known_code(text in ".{0,300}") {
        if let Err(error) = protocol::parse(&text, 1024).command {
            prop_assert!(CODES.contains(&error.code()), "{}", error.code());
        }
    }

    #[test]
    fn the_decoder_takes_any_json_command_without_panicking(frame in any_frame()) {
        if let Frame::Text(text) = frame
            && let Err(error) = protocol::parse(&text, 1024).command
        {
            prop_assert!(CODES.contains(&error.code()), "{}", error.code());
        }
    }

    #[test]
    fn any_frames_leave_the_connection_open_and_answering(
        frames in prop::collection::vec(any_frame(), 1..12)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut client = Client::start(Fake::with_log(Some(0), &[]), limits(), 256);
            client.expect_event("ready").await;
            for frame in &frames {
                match frame {
                    Frame::Text(text) => client.send(text),
                    Frame::Binary(bytes) => client
                        .to_server
                        .unbounded_send(Ok(WsMessage::Binary(Bytes::from(bytes.clone()))))
                        .unwrap(),
                }
            }
            // The connection still answers, after whatever came first.
            client.send(r#"{"event": "ping", "ref": "still-here"}"#);
            loop {
                let frame = client.next().await;
                if frame["event"] == "error" {
                    let code = frame["data"]["code"].as_str().unwrap_or_default().to_owned();
                    assert!(CODES.contains(&code.as_str()), "{frame}");
                }
                if frame["event"] == "pong" && frame["ref"] == "still-here" {
                    break;
                }
            }
            assert!(!client.ended.is_finished(), "the session ended");
            client.stop().await;
        });
    }
}
