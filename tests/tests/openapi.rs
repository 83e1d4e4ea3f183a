//! `GET /openapi.json` against the router of a real `foldhost serve`: every documented
//! operation is served, every other method on a documented path is refused, and no route is
//! added to the router except through the documented `routes!` (which takes each route's path
//! and method from its handler's `#[utoipa::path]`). Every operation whose handler reads a
//! request body documents the statuses the body can be refused with before the handler runs.

use crate::serve;

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
    // An append's body is parsed by hand; its schema still says what the parser takes.
    let append = &document["components"]["schemas"]["AppendRequest"];
    assert_eq!(
        append["required"],
        serde_json::json!(["events"]),
        "{append}"
    );
    assert_eq!(append["additionalProperties"], false, "{append}");

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

/// Statuses a request body can be refused with while it is read (`server::bodies`), and
/// whether they carry `Retry-After`.
const BODY_REFUSALS: &[(&str, bool)] =
    &[("408", false), ("413", false), ("429", true), ("503", true)];

/// The operations whose handler reads a request body are found by sending every documented
/// operation a body larger than the host's whole body budget: those that read it answer 413.
/// Each of them, and no other, must declare its body and document every status a body can be
/// refused with before the handler sees it (408, 413, 429, 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_that_reads_a_body_documents_how_a_body_is_refused() {
    let dirs = Dirs::new();
    let mut command = Server::command(&dirs.data, None);
    command.args(["--admin-token", "secret", "--body-budget", "64KiB"]);
    let server = Server::launch(command);
    let client = Client::new();
    let document: Value = client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let oversized = vec![b' '; 128 << 10];
    let mut reading = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(operation) = item.get(method.to_lowercase()) else {
                continue;
            };
            let response = client
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    server.url(&concrete(path)),
                )
                .bearer_auth("secret")
                .header("content-type", "application/json")
                .body(oversized.clone())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = if path == "/events/live" && status == 200 {
                String::new()
            } else {
                response.text().await.unwrap()
            };
            let read = status == 413 && body.contains("larger than");
            let declared = operation.get("requestBody").is_some();
            assert_eq!(
                read, declared,
                "{method} {path} reads a body: {read} ({status} {body}), declares one: {declared}"
            );
            if !read {
                continue;
            }
            reading.push(format!("{method} {path}"));
            for (refused, retry) in BODY_REFUSALS {
                let response = &operation["responses"][refused];
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{method} {path} does not document {refused}: {response}"
                );
                assert_eq!(
                    response["headers"].get("Retry-After").is_some(),
                    *retry,
                    "{method} {path}, {refused}: {response}"
                );
            }
        }
    }
    // The appends, commands, retention rules, uploads and policies.
    assert_eq!(reading.len(), 5, "{reading:?}");
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
