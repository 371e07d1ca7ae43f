//! `GET /api/openapi.json` and `/api/docs` on a running gateway: the
//! document is served as generated, and its viewer works without the
//! internet (every script and style comes from the gateway).

use natter_testkit::TestApp;

#[tokio::test]
async fn the_document_and_its_offline_viewer_are_served() {
    let app = TestApp::spawn().await;
    let (status, document) = app.get("/api/openapi.json", None).await;
    assert_eq!(status, 200, "{document}");
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(document["info"]["title"], "natter");
    let signup = &document["paths"]["/api/auth/signup"]["post"];
    assert!(signup["responses"]["201"].is_object(), "{signup}");
    assert!(signup["requestBody"].is_object(), "{signup}");

    let page = app.http.get(app.url("/api/docs/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    // Nothing loaded from elsewhere: every src and href is relative.
    for attribute in ["src=\"http", "href=\"http", "src='http", "href='http"] {
        assert!(!html.contains(attribute), "{attribute} in {html}");
    }
    // Its assets and its pointer at this document come from the gateway.
    let initializer = app
        .http
        .get(app.url("/api/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(initializer.status().as_u16(), 200);
    let script = initializer.text().await.unwrap();
    assert!(script.contains("/api/openapi.json"), "{script}");
    let bundle = app
        .http
        .get(app.url("/api/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status().as_u16(), 200);
}
