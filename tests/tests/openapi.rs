//! `GET /openapi.json` against the router of a real `foldhost serve`: every documented
//! operation is served, every other method on a documented path is refused, and no route is
//! added to the router except through the documented `routes!` (which takes each route's path
//! and method from its handler's `#[utoipa::path]`).

pub mod serve;

use std::path::Path;

use reqwest::{Client, Method};
use serde_json::Value;
use serve::{Dirs, Server};

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH"];

/// A path of the document with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{stream}", "openapi-probe-1")
        .replace("{plugin}", "bank-account")
        .replace("{id}", "openapi-probe")
        .replace("{name}", "bank-analytics")
        .replace("{file}", "app.js")
}

/// Whether `body` is the router's own answer for a path or method it does not serve.
fn router_refused(status: u16, body: &str) -> bool {
    (status == 404 && body.contains("no route for"))
        || (status == 405 && body.contains("is not allowed on"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_router_agree() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, None);
    let client = Client::new();
    let response = client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0", "{document}");
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{paths:?}");
    // The types of the handlers are in it, not hand-written shapes.
    for schema in [
        "EventJson",
        "PluginInfo",
        "AppendRequest",
        "StreamPage",
        "ApiError",
    ] {
        assert!(
            document["components"]["schemas"][schema].is_object(),
            "no schema {schema}"
        );
    }

    for (path, item) in paths {
        let url = server.url(&concrete(path));
        for method in METHODS {
            let documented = item.get(method.to_lowercase()).is_some();
            let mut request = client.request(Method::from_bytes(method.as_bytes()).unwrap(), &url);
            if *method != "GET" {
                request = request
                    .header("content-type", "application/json")
                    .body("{}");
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            // A live feed never ends: its status and headers say enough.
            let body = if path == "/events/live" && status == 200 {
                String::new()
            } else {
                response.text().await.unwrap()
            };
            if documented {
                assert!(
                    !router_refused(status, &body),
                    "{method} {path} is documented but not served: {status} {body}"
                );
            } else {
                assert!(
                    router_refused(status, &body),
                    "{method} {path} is served ({status} {body}) but not documented"
                );
            }
        }
    }
}

/// Every route goes through `routes!`, so none can be served undocumented: no module of the
/// server adds one any other way.
#[test]
fn routes_are_added_only_with_their_documentation() {
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src/server");
    let mut sources = vec![server];
    let mut checked = 0;
    while let Some(path) = sources.pop() {
        if path.is_dir() {
            sources.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for undocumented in [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            ".merge(",
            "Router::new(",
        ] {
            assert!(
                !source.contains(undocumented),
                "{} adds a route with `{undocumented}`: register the handler with \
                 `routes!` in server::api() and annotate it with #[utoipa::path]",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked > 10, "only {checked} server modules found");
}
