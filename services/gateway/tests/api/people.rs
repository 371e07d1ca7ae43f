//! `GET /api/users` a page at a time, searched, private about presence;
//! and the contact list (DESIGN §4).

use natter_testkit::{TestApp, TestUser};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

async fn people(app: &TestApp, viewer: &TestUser, query: &str) -> (u16, Value) {
    app.get(&format!("/api/users{query}"), Some(&viewer.token))
        .await
}

fn names(page: &Value) -> Vec<String> {
    page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect()
}

fn entry<'a>(page: &'a Value, user: &TestUser) -> &'a Value {
    page["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == user.id.to_string())
        .unwrap_or_else(|| panic!("{} not listed in {page}", user.username))
}

#[tokio::test]
async fn people_come_a_page_at_a_time_in_username_order_and_search_by_prefix() {
    let app = TestApp::spawn().await;
    let viewer = app.signup("viewer").await;
    let others = app.seed_users("person", 7).await;
    let mut seen = Vec::new();
    let mut query = "?limit=3".to_owned();
    loop {
        let (status, page) = people(&app, &viewer, &query).await;
        assert_eq!(status, 200, "{page}");
        assert!(names(&page).len() <= 3);
        seen.extend(names(&page));
        match page["next"].as_str() {
            Some(next) => query = format!("?limit=3&after={next}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = others.iter().map(|u| u.username.clone()).collect();
    expected.sort();
    assert_eq!(
        seen, expected,
        "everyone but the viewer, once each, in order"
    );

    let (_, by_username) = people(&app, &viewer, "?q=PERSON1").await;
    assert_eq!(names(&by_username), ["person1"]);
    let (_, by_display_name) = people(&app, &viewer, "?q=person2%20(disp").await;
    assert_eq!(names(&by_display_name), ["person2"]);
    // LIKE's wildcards are plain characters in a search.
    let (_, wildcard) = people(&app, &viewer, "?q=%25").await;
    assert_eq!(names(&wildcard), Vec::<String>::new());
    let (_, underscore) = people(&app, &viewer, "?q=_").await;
    assert_eq!(names(&underscore), Vec::<String>::new());

    for bad in [
        "?limit=0",
        "?limit=201",
        "?limit=abc",
        &format!("?q={}", "x".repeat(65)),
    ] {
        let (status, body) = people(&app, &viewer, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{bad}");
    }
}

#[tokio::test]
async fn presence_shows_only_for_contacts_and_people_who_share_a_conversation() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let stranger = app.signup("stranger").await;
    let contact = app.signup("contact").await;
    let partner = app.signup("partner").await;
    let mut a = app.connect(&alice, "a").await;
    a.send_direct(partner.id, "hello", "r").await;
    let (status, _) = app
        .put(&format!("/api/contacts/{}", contact.id), Some(&alice.token))
        .await;
    assert_eq!(status, 204);
    let _online: Vec<_> = futures::future::join_all(
        [&stranger, &contact, &partner].map(|user| app.connect(user, "phone")),
    )
    .await;

    let visible = |page: &Value| {
        let online = |user: &TestUser| entry(page, user)["online"].as_bool().unwrap();
        (online(&stranger), online(&contact), online(&partner))
    };
    let settled = app
        .eventually(Duration::from_secs(5), || async {
            let (_, page) = people(&app, &alice, "").await;
            visible(&page) == (false, true, true)
        })
        .await;
    let (_, page) = people(&app, &alice, "").await;
    assert!(
        settled,
        "stranger, contact, partner online as seen: {:?}",
        visible(&page)
    );
    assert_eq!(entry(&page, &contact)["isContact"], true);
    assert_eq!(entry(&page, &stranger)["isContact"], false);

    // Adding the stranger as a contact shows them.
    app.put(
        &format!("/api/contacts/{}", stranger.id),
        Some(&alice.token),
    )
    .await;
    let (_, page) = people(&app, &alice, "").await;
    assert!(visible(&page).0, "a new contact's presence shows");
}

#[tokio::test]
async fn contacts_are_added_listed_and_removed_and_bad_ones_refused() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let path = format!("/api/contacts/{}", bob.id);
    for _ in 0..2 {
        assert_eq!(
            app.put(&path, Some(&alice.token)).await.0,
            204,
            "adding twice is fine"
        );
    }
    let (status, list) = app.get("/api/contacts", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(list["contacts"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["contacts"][0]["id"], bob.id.to_string());
    assert_eq!(list["contacts"][0]["displayName"], bob.display_name);
    // Private to its owner.
    let (_, bobs) = app.get("/api/contacts", Some(&bob.token)).await;
    assert_eq!(bobs, json!({"contacts": []}));

    let cases = [
        (format!("/api/contacts/{}", alice.id), 400, "bad_request"),
        (
            format!("/api/contacts/{}", uuid::Uuid::now_v7()),
            404,
            "not_found",
        ),
        ("/api/contacts/not-a-uuid".to_owned(), 400, "bad_request"),
    ];
    for (path, status, code) in cases {
        let (got, body) = app.put(&path, Some(&alice.token)).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}"
        );
    }
    assert_eq!(app.put(&path, None).await.0, 401);

    assert_eq!(app.delete(&path, Some(&alice.token)).await.0, 204);
    assert_eq!(app.delete(&path, Some(&alice.token)).await.0, 204);
    let (_, list) = app.get("/api/contacts", Some(&alice.token)).await;
    assert_eq!(list, json!({"contacts": []}));
}

#[tokio::test]
async fn a_contact_list_is_bounded() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice").await;
    let extra = app.signup("extra").await;
    let pool = app.db.pool().await.unwrap();
    sqlx::query(
        "WITH made AS (
             INSERT INTO users (id, username, display_name, password_hash)
             SELECT gen_random_uuid(), 'filler' || i, 'filler' || i, 'seeded'
             FROM generate_series(1, 1000) i RETURNING id)
         INSERT INTO contacts (owner_id, contact_id) SELECT $1, id FROM made",
    )
    .bind(alice.id.0)
    .execute(&pool)
    .await
    .unwrap();
    let (status, body) = app
        .put(&format!("/api/contacts/{}", extra.id), Some(&alice.token))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (_, list) = app.get("/api/contacts", Some(&alice.token)).await;
    assert_eq!(list["contacts"].as_array().unwrap().len(), 1000);
    let names: HashSet<&str> = list["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["username"].as_str())
        .collect();
    assert!(!names.contains("extra"));
}
