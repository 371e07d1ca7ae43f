//! A group's life beyond messages: its members read a page at a time, its
//! id never taken for a direct conversation's (or the reverse), and its
//! deletion by its creator.

use natter_testkit::{TestApp, TestUser};
use serde_json::{Value, json};

/// Every member id, following `next` a page of `limit` at a time.
async fn all_members(app: &TestApp, user: &TestUser, group: &str, limit: u32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = app
            .get(
                &format!("/api/groups/{group}/members?limit={limit}&after={after}"),
                Some(&user.token),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let members = page["members"].as_array().unwrap();
        assert!(members.len() <= limit as usize);
        for m in members {
            assert!(m["username"].as_str().is_some() && m["displayName"].as_str().is_some());
            ids.push(m["id"].as_str().unwrap().to_owned());
        }
        match page.get("next") {
            Some(next) => after = next.as_str().unwrap().to_owned(),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn members_are_read_a_page_at_a_time() {
    let app = TestApp::spawn().await;
    let users = app.seed_users("pager", 7).await;
    let outsider = app.signup("outsider").await;
    let others: Vec<&TestUser> = users[1..].iter().collect();
    let group = app.create_group(&users[0], "Paged", &others).await;
    let id = group["id"].as_str().unwrap();
    assert!(group.get("members").is_none(), "{group}");
    let (_, shown) = app
        .get(&format!("/api/groups/{id}"), Some(&users[1].token))
        .await;
    assert_eq!(shown["group"]["memberCount"], 7);
    assert!(shown["group"].get("members").is_none(), "{shown}");

    let paged = all_members(&app, &users[3], id, 3).await;
    let mut expected: Vec<String> = users.iter().map(|u| u.id.to_string()).collect();
    expected.sort();
    assert_eq!(paged, expected, "every member once, in id order");
    assert_eq!(all_members(&app, &users[3], id, 200).await, expected);

    let path = format!("/api/groups/{id}/members");
    for query in ["?limit=0", "?limit=201", "?limit=x", "?after=nope"] {
        let (status, body) = app
            .get(&format!("{path}{query}"), Some(&users[0].token))
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, body) = app.get(&path, Some(&outsider.token)).await;
    assert_eq!(status, 404, "non-members learn nothing: {body}");
}

#[tokio::test]
async fn group_commands_on_a_direct_conversation_are_not_found() {
    let app = TestApp::spawn().await;
    let ann = app.signup("ann").await;
    let bob = app.signup("bob").await;
    let mut a = app.connect(&ann, "a").await;
    let sent = a.send_direct(bob.id, "hi", "d1").await;
    let direct = sent["data"]["message"]["conversationId"]
        .as_str()
        .unwrap()
        .to_owned();

    a.send_ref(
        "send_group_message",
        json!({"groupId": direct, "content": "sneaky"}),
        "g1",
    )
    .await;
    let reply = a.reply_to("g1").await;
    assert_eq!(reply["event"], "error", "{reply}");
    assert_eq!(reply["data"]["code"], "not_found", "{reply}");
    let (status, body) = app
        .post(
            "/api/messages",
            Some(&ann.token),
            json!({"groupId": direct, "content": "sneaky"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    let t = Some(ann.token.as_str());
    let group = format!("/api/groups/{direct}");
    let members = format!("{group}/members");
    let (status, body) = app.get(&group, t).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app.get(&members, t).await;
    assert_eq!(status, 404, "{body}");
    let carl = app.signup("carl").await;
    let (status, body) = app.post(&members, t, json!({"userIds": [carl.id]})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app.delete(&format!("{members}/{}", bob.id), t).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app.delete(&group, t).await;
    assert_eq!(status, 404, "{body}");
    // Nothing of it reached the direct conversation: a message sent after
    // the refused ones is the next one there.
    a.send_direct(bob.id, "still direct", "d2").await;
    let history = app.history_eventually(&bob, &direct, 2).await;
    let contents: Vec<&str> = history
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["hi", "still direct"]);
}

fn listed(list: &Value, id: &str) -> bool {
    list.as_array().unwrap().iter().any(|c| c["id"] == id)
}

#[tokio::test]
async fn the_creator_deletes_a_group_for_every_member() {
    let app = TestApp::spawn().await;
    let owner = app.signup("owner").await;
    let member = app.signup("member").await;
    let outsider = app.signup("outsider").await;
    let mut m = app.connect(&member, "m").await;
    let group = app.create_group(&owner, "Doomed", &[&member]).await;
    let id = group["id"].as_str().unwrap().to_owned();
    m.next_event("group_updated").await;
    m.send_ref(
        "send_group_message",
        json!({"groupId": id, "content": "before"}),
        "b",
    )
    .await;
    assert_eq!(m.reply_to("b").await["event"], "message_sent");

    let path = format!("/api/groups/{id}");
    let (status, body) = app.delete(&path, Some(&member.token)).await;
    assert_eq!(status, 403, "only the creator: {body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, body) = app.delete(&path, Some(&outsider.token)).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app.delete(&path, Some(&owner.token)).await;
    assert_eq!(status, 204, "{body}");

    let update = m.next_event("group_updated").await;
    assert_eq!(update["data"]["change"]["kind"], "deleted", "{update}");
    assert_eq!(update["data"]["change"]["by"], owner.id.to_string());
    assert_eq!(update["data"]["group"]["id"], id);
    assert!(update["cursor"].as_u64().is_some());

    for user in [&owner, &member] {
        let t = Some(user.token.as_str());
        for read in [
            path.clone(),
            format!("{path}/members"),
            format!("/api/conversations/{id}/messages"),
        ] {
            let (status, body) = app.get(&read, t).await;
            assert_eq!(status, 404, "{read}: {body}");
            assert_eq!(body["error"]["code"], "not_found");
        }
        let (status, body) = app
            .post(
                "/api/messages",
                t,
                json!({"groupId": id, "content": "after"}),
            )
            .await;
        assert_eq!(status, 404, "{body}");
        let (status, _) = app
            .post(&format!("/api/conversations/{id}/read"), t, json!({}))
            .await;
        assert_eq!(status, 404);
        let (_, list) = app.get("/api/conversations", t).await;
        assert!(!listed(&list, &id), "{list}");
    }
    m.send_ref(
        "send_group_message",
        json!({"groupId": id, "content": "after"}),
        "a",
    )
    .await;
    assert_eq!(m.reply_to("a").await["data"]["code"], "not_found");
    let (status, _) = app.delete(&path, Some(&owner.token)).await;
    assert_eq!(status, 404, "deleted once");
}
