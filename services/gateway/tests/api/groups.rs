//! Groups (seed test case 4), their read receipts and unread counts, and
//! the membership rules.

use natter_testkit::{TestApp, TestUser, WsClient};
use serde_json::{Value, json};
use std::time::Duration;

async fn send_group(client: &mut WsClient, group: &str, content: &str, reference: &str) -> Value {
    client
        .send_ref(
            "send_group_message",
            json!({"groupId": group, "content": content}),
            reference,
        )
        .await;
    client.reply_to(reference).await
}

async fn group_messages(client: &mut WsClient, n: usize) -> Vec<Value> {
    let mut messages = Vec::new();
    while messages.len() < n {
        let frame = client.next().await;
        if frame["event"] == "receive_group_message" {
            messages.push(frame["data"]["message"].clone());
        }
    }
    messages
}

fn ids(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Three users, connected, in a group user1 created.
struct Trio {
    one: TestUser,
    two: TestUser,
    three: TestUser,
    a: WsClient,
    b: WsClient,
    c: WsClient,
    group: Value,
    group_id: String,
}

async fn trio(app: &TestApp, name: &str) -> Trio {
    let one = app.signup("user1").await;
    let two = app.signup("user2").await;
    let three = app.signup("user3").await;
    let a = app.connect(&one, "a").await;
    let b = app.connect(&two, "b").await;
    let c = app.connect(&three, "c").await;
    let group = app.create_group(&one, name, &[&two, &three]).await;
    let group_id = group["id"].as_str().unwrap().to_owned();
    Trio {
        one,
        two,
        three,
        a,
        b,
        c,
        group,
        group_id,
    }
}

#[tokio::test]
async fn group_messages_reach_every_member_once_in_one_order() {
    // Seed test case 4, with three members and two senders.
    let app = TestApp::spawn().await;
    let Trio {
        one,
        two,
        three,
        mut a,
        mut b,
        mut c,
        group,
        group_id,
    } = trio(&app, "TestGroup").await;
    assert_eq!(group["memberCount"], 3);
    assert!(group.get("members").is_none(), "{group}");
    assert_eq!(group["createdBy"], one.id.to_string());
    for client in [&mut a, &mut b, &mut c] {
        let update = client.next_event("group_updated").await;
        assert_eq!(update["data"]["group"]["id"], group_id);
        assert_eq!(update["data"]["group"]["memberCount"], 3);
        assert!(update["data"]["group"].get("members").is_none());
        assert_eq!(update["data"]["change"]["kind"], "created");
        assert_eq!(update["data"]["change"]["by"], one.id.to_string());
        assert_eq!(
            update["data"]["change"]["userIds"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert!(update["cursor"].as_u64().is_some());
    }
    // The seed client's join step is harmless.
    a.send("join_group", json!({"groupId": group_id})).await;

    for i in 0..3 {
        let sent = send_group(
            &mut a,
            &group_id,
            &format!("from one {i}"),
            &format!("a{i}"),
        )
        .await;
        assert_eq!(sent["event"], "message_sent", "{sent}");
        assert_eq!(sent["data"]["message"]["groupId"], group_id);
        let sent = send_group(
            &mut b,
            &group_id,
            &format!("from two {i}"),
            &format!("b{i}"),
        )
        .await;
        assert_eq!(sent["event"], "message_sent", "{sent}");
    }
    let seen_a = group_messages(&mut a, 6).await;
    let seen_b = group_messages(&mut b, 6).await;
    let seen_c = group_messages(&mut c, 6).await;
    assert_eq!(ids(&seen_a), ids(&seen_b));
    assert_eq!(ids(&seen_a), ids(&seen_c));
    let seqs: Vec<u64> = seen_c.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert!(seen_c.iter().any(|m| m["senderName"] == one.display_name));
    assert!(seen_c.iter().any(|m| m["senderName"] == two.display_name));
    for client in [&mut a, &mut b, &mut c] {
        let extra = client.drain(Duration::from_millis(200)).await;
        assert!(
            extra.iter().all(|f| f["event"] != "receive_group_message"),
            "duplicates: {extra:?}"
        );
    }

    // The creator removes user3, who hears of it and then of nothing more.
    let (status, body) = app
        .delete(
            &format!("/api/groups/{group_id}/members/{}", three.id),
            Some(&one.token),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let removed = c.next_event("group_updated").await;
    assert_eq!(removed["data"]["change"]["kind"], "member_removed");
    assert_eq!(removed["data"]["change"]["userIds"], json!([three.id]));
    assert_eq!(removed["data"]["group"]["memberCount"], 2);
    let after = send_group(&mut b, &group_id, "after removal", "late").await;
    assert_eq!(after["event"], "message_sent");
    assert_eq!(
        group_messages(&mut a, 1).await[0]["content"],
        "after removal"
    );
    let leaked = c.drain(Duration::from_millis(500)).await;
    assert!(
        leaked.iter().all(|f| f["event"] != "receive_group_message"),
        "{leaked:?}"
    );
    let refused = send_group(&mut c, &group_id, "let me in", "c1").await;
    assert_eq!(refused["data"]["code"], "forbidden", "{refused}");
    let (status, _) = app
        .get(
            &format!("/api/conversations/{group_id}/messages"),
            Some(&three.token),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn group_read_receipts_and_unread_counts() {
    let app = TestApp::spawn().await;
    let Trio {
        one,
        two,
        three,
        mut a,
        mut b,
        mut c,
        group_id,
        ..
    } = trio(&app, "Readers").await;
    for i in 0..3 {
        send_group(&mut a, &group_id, &format!("m{i}"), &format!("r{i}")).await;
    }
    group_messages(&mut b, 3).await;
    let unread = |user: TestUser| {
        let app = &app;
        let group_id = group_id.clone();
        async move {
            let (_, list) = app.get("/api/conversations", Some(&user.token)).await;
            list.as_array()
                .and_then(|l| l.iter().find(|c| c["id"] == group_id.as_str()))
                .and_then(|c| c["unreadCount"].as_i64())
                .unwrap_or(-1)
        }
    };
    assert!(
        app.eventually(Duration::from_secs(5), || async {
            unread(two.clone()).await == 3
        })
        .await
    );
    assert_eq!(unread(one.clone()).await, 0, "own messages are not unread");

    b.send("mark_read", json!({"conversationId": group_id}))
        .await;
    for client in [&mut a, &mut c] {
        let receipt = client.next_event("messages_read").await;
        assert_eq!(receipt["data"]["readerId"], two.id.to_string());
        assert_eq!(receipt["data"]["conversationId"], group_id);
    }
    assert!(
        app.eventually(Duration::from_secs(5), || async {
            unread(two.clone()).await == 0
        })
        .await
    );
    assert_eq!(unread(three.clone()).await, 3);

    // Someone who reads then writes has not got their own message unread;
    // a member added later starts at zero and counts what follows.
    send_group(&mut b, &group_id, "from two", "r-two").await;
    let four = app.signup("user4").await;
    let (status, _) = app
        .post(
            &format!("/api/groups/{group_id}/members"),
            Some(&one.token),
            json!({"userIds": [four.id.to_string()]}),
        )
        .await;
    assert_eq!(status, 200);
    send_group(&mut a, &group_id, "to four too", "r-four").await;
    let expected = [(&one, 1), (&two, 1), (&three, 5), (&four, 1)];
    assert!(
        app.eventually(Duration::from_secs(5), || async {
            unread(four.clone()).await == 1
        })
        .await
    );
    for (user, count) in expected {
        assert_eq!(unread(user.clone()).await, count, "{}", user.username);
    }
}

#[tokio::test]
async fn group_changes_are_validated_and_all_or_nothing() {
    let app = TestApp::spawn().await;
    let one = app.signup("user1").await;
    let two = app.signup("user2").await;
    let three = app.signup("user3").await;
    let outsider = app.signup("outsider").await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let t1 = Some(one.token.as_str());

    for (body, status) in [
        (json!({"name": "", "memberIds": []}), 400),
        (json!({"name": "x".repeat(101), "memberIds": []}), 400),
        (json!({"memberIds": []}), 400),
        (json!({"name": "g", "memberIds": "nope"}), 400),
        (json!({"name": "g", "memberIds": ["not-a-uuid"]}), 400),
        (
            json!({"name": "g", "memberIds": [two.id.to_string(), two.id.to_string()]}),
            400,
        ),
        (
            json!({"name": "g", "memberIds": [two.id.to_string(), unknown.clone()]}),
            400,
        ),
    ] {
        let (got, reply) = app.post("/api/groups", t1, body.clone()).await;
        assert_eq!(got, status, "{body}: {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (_, list) = app.get("/api/conversations", t1).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        0,
        "no failed creation left a trace"
    );

    let group = app.create_group(&one, "Team", &[&two]).await;
    let id = group["id"].as_str().unwrap().to_owned();
    let members = |g: &Value| g["memberCount"].as_u64().unwrap();

    // Adding: unknown or duplicate ids change nothing.
    let path = format!("/api/groups/{id}/members");
    let (status, _) = app
        .post(
            &path,
            t1,
            json!({"userIds": [three.id.to_string(), unknown]}),
        )
        .await;
    assert_eq!(
        status, 400,
        "a body naming no one is bad input, not a missing group"
    );
    let (status, _) = app
        .post(&path, t1, json!({"userIds": [two.id.to_string()]}))
        .await;
    assert_eq!(status, 400, "already a member");
    let (_, now) = app.get(&format!("/api/groups/{id}"), t1).await;
    assert_eq!(members(&now["group"]), 2);
    let (status, added) = app
        .post(
            &path,
            Some(&two.token),
            json!({"userIds": [three.id.to_string()]}),
        )
        .await;
    assert_eq!(status, 200, "any member adds: {added}");
    assert_eq!(members(&added["group"]), 3);

    // Removing: non-members, and others by a non-creator, are refused.
    let (status, _) = app.delete(&format!("{path}/{}", outsider.id), t1).await;
    assert_eq!(status, 404);
    let (status, _) = app
        .delete(&format!("{path}/{}", three.id), Some(&two.token))
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .delete(&format!("{path}/{}", two.id), Some(&two.token))
        .await;
    assert_eq!(status, 204, "a member may leave");
    let (_, now) = app.get(&format!("/api/groups/{id}"), t1).await;
    assert_eq!(members(&now["group"]), 2);
}

#[tokio::test]
async fn non_members_and_removed_members_learn_nothing() {
    let app = TestApp::spawn().await;
    let one = app.signup("user1").await;
    let two = app.signup("user2").await;
    let leaver = app.signup("leaver").await;
    let outsider = app.signup("outsider").await;
    let group = app.create_group(&one, "Private", &[&two, &leaver]).await;
    let group_id = group["id"].as_str().unwrap().to_owned();
    let mut a = app.connect(&one, "a").await;
    send_group(&mut a, &group_id, "secret", "s").await;
    let direct = a.send_direct(two.id, "direct secret", "d").await;
    let direct_id = direct["data"]["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.history_eventually(&two, &group_id, 1).await;
    let (status, _) = app
        .delete(
            &format!("/api/groups/{group_id}/members/{}", leaver.id),
            Some(&leaver.token),
        )
        .await;
    assert_eq!(status, 204);

    for stranger in [&outsider, &leaver] {
        let token = Some(stranger.token.as_str());
        for conversation in [&group_id, &direct_id] {
            let (status, body) = app
                .get(
                    &format!("/api/conversations/{conversation}/messages"),
                    token,
                )
                .await;
            assert_eq!(status, 404, "{}: history {body}", stranger.username);
            assert!(!body.to_string().contains("secret"));
            let (status, _) = app
                .post(
                    &format!("/api/conversations/{conversation}/read"),
                    token,
                    json!({}),
                )
                .await;
            assert_eq!(status, 404, "{}: read", stranger.username);
        }
        let (status, body) = app.get(&format!("/api/groups/{group_id}"), token).await;
        assert_eq!(status, 404, "{body}");
        let (status, _) = app
            .post(
                &format!("/api/groups/{group_id}/members"),
                token,
                json!({"userIds": [stranger.id.to_string()]}),
            )
            .await;
        assert_eq!(status, 404);
        let (status, _) = app
            .delete(&format!("/api/groups/{group_id}/members/{}", two.id), token)
            .await;
        assert_eq!(status, 404);
        let (status, body) = app
            .post(
                "/api/messages",
                token,
                json!({"groupId": group_id, "content": "hi"}),
            )
            .await;
        assert_eq!(status, 403, "{body}");

        let mut s = app.connect(stranger, "s").await;
        let refused = send_group(&mut s, &group_id, "hi", "g").await;
        assert_eq!(refused["data"]["code"], "forbidden");
        for conversation in [&group_id, &direct_id] {
            s.send_ref("mark_read", json!({"conversationId": conversation}), "m")
                .await;
            assert_eq!(s.reply_to("m").await["data"]["code"], "not_found");
            s.send_ref("typing", json!({"conversationId": conversation}), "t")
                .await;
            assert_eq!(s.reply_to("t").await["data"]["code"], "not_found");
        }
        let (_, list) = app.get("/api/conversations", token).await;
        assert!(
            list.as_array()
                .unwrap()
                .iter()
                .all(|c| c["id"] != group_id.as_str())
        );
    }
}

#[tokio::test]
async fn one_message_to_a_group_of_200_is_200_deliveries_each_received_once() {
    let app = TestApp::spawn().await;
    let users = app.seed_users("member", 200).await;
    let others: Vec<&TestUser> = users[1..].iter().collect();
    let group = app.create_group(&users[0], "Crowd", &others).await;
    let group_id = group["id"].as_str().unwrap().to_owned();
    assert_eq!(group["memberCount"], 200);
    let mut clients = Vec::new();
    for user in &users {
        clients.push(app.connect(user, "d").await);
    }
    let js = app.jetstream().await;
    let delivery = js.get_stream("DELIVERY").await.unwrap();
    let before = delivery.get_info().await.unwrap().state.messages;

    let sent = send_group(&mut clients[0], &group_id, "hello crowd", "crowd").await;
    let id = sent["data"]["message"]["id"].clone();
    for client in clients.iter_mut() {
        let got = group_messages(client, 1).await;
        assert_eq!(got[0]["id"], id);
    }
    for client in clients.iter_mut() {
        let extra = client.drain(Duration::from_millis(20)).await;
        assert!(extra.iter().all(|f| f["event"] != "receive_group_message"));
    }
    let after = delivery.get_info().await.unwrap().state.messages;
    assert_eq!(after - before, 200, "one delivery record per member");
}

#[tokio::test]
async fn conversations_list_both_kinds_newest_first() {
    // Seed test case 7 with three users and both kinds of conversation.
    let app = TestApp::spawn().await;
    let one = app.signup("user1").await;
    let two = app.signup("user2").await;
    let three = app.signup("user3").await;
    let mut a = app.connect(&one, "a").await;
    let to_two = a.send_direct(two.id, "Hello User2", "r1").await;
    let group = app.create_group(&one, "Trio", &[&two, &three]).await;
    let group_id = group["id"].as_str().unwrap().to_owned();
    send_group(&mut a, &group_id, "Hello group", "g1").await;
    let to_three = a.send_direct(three.id, "Hello User3", "r2").await;
    let conv_two = to_two["data"]["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    let conv_three = to_three["data"]["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.history_eventually(&three, &conv_three, 1).await;

    let (status, list) = app.get("/api/conversations", Some(&one.token)).await;
    assert_eq!(status, 200);
    let order: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [conv_three.as_str(), group_id.as_str(), conv_two.as_str()]
    );
    let group_entry = &list[1];
    assert_eq!(group_entry["kind"], "group");
    assert_eq!(group_entry["name"], "Trio");
    assert_eq!(group_entry["lastMessage"]["content"], "Hello group");
    let direct_entry = &list[0];
    assert_eq!(direct_entry["kind"], "direct");
    assert_eq!(direct_entry["peer"]["id"], three.id.to_string());
    assert_eq!(direct_entry["lastMessage"]["content"], "Hello User3");

    // Pages: the newest first, then what is older than the page's last.
    let (status, first) = app
        .get("/api/conversations?limit=2", Some(&one.token))
        .await;
    assert_eq!(status, 200);
    assert_eq!(first.as_array().unwrap().len(), 2);
    let before = first[1]["lastActivityAt"]
        .as_str()
        .unwrap()
        .replace('+', "%2B");
    let (_, rest) = app
        .get(
            &format!("/api/conversations?limit=2&before={before}"),
            Some(&one.token),
        )
        .await;
    let rest: Vec<&str> = rest
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(rest, [conv_two.as_str()]);
    let (status, _) = app
        .get("/api/conversations?limit=0", Some(&one.token))
        .await;
    assert_eq!(status, 400);

    // Histories stay apart.
    for (conversation, content) in [
        (&conv_two, "Hello User2"),
        (&group_id, "Hello group"),
        (&conv_three, "Hello User3"),
    ] {
        let history = app.history(&one, conversation).await;
        let contents: Vec<_> = history.iter().map(|m| m["content"].clone()).collect();
        assert_eq!(contents, [json!(content)]);
    }
    let (_, list) = app.get("/api/conversations", Some(&two.token)).await;
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == conv_two.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["unreadCount"], 1);
    assert_eq!(entry["lastReadSeq"], 0);
}
