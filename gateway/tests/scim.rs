//! The SCIM 2.0 service provider over HTTP on loopback, as an identity provider's
//! connector uses it: tokens, discovery, users and groups with every filter
//! operator, paging, attribute selection, PATCH paths, PUT, DELETE and ETags, the
//! error schema, and tenant isolation; users and groups on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::Fixture;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

struct Scim {
    base: String,
    token: String,
    client: reqwest::Client,
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Scim {
    async fn new(fx: &Fixture, base: &str) -> Self {
        let (status, created) = common::call(
            base,
            Method::POST,
            "/v1/admin/identity/scim-tokens",
            Some(fx.keys.tenant_admin.expose_secret()),
            Some(r#"{"name": "okta"}"#),
        )
        .await;
        assert_eq!(status, 200, "{created}");
        Self {
            base: base.to_owned(),
            token: created["token"].as_str().unwrap().to_owned(),
            client: reqwest::Client::new(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self
            .client
            .request(method, format!("{}/scim/v2{path}", self.base))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/scim+json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        if !text.is_empty() {
            assert_eq!(
                headers["content-type"], "application/scim+json",
                "{path}: {text}"
            );
        }
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None, &[]).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(Method::POST, path, Some(body), &[]).await
    }

    async fn patch(&self, path: &str, ops: Value) -> Answer {
        self.send(
            Method::PATCH,
            path,
            Some(json!({"schemas": [PATCH], "Operations": ops})),
            &[],
        )
        .await
    }

    /// The userNames a filter finds.
    async fn find(&self, filter: &str) -> Vec<String> {
        let a = self
            .get(&format!(
                "/Users?filter={}&attributes=userName",
                common::percent_encode(filter)
            ))
            .await;
        assert_eq!(a.status, 200, "{filter}: {}", a.body);
        let mut names: Vec<String> = a.body["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["userName"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        assert_eq!(a.body["totalResults"], names.len());
        names
    }
}

fn user(name: &str, external: &str, display: &str, email: &str, active: bool) -> Value {
    json!({
        "schemas": [USER],
        "userName": name,
        "externalId": external,
        "displayName": display,
        "name": {"givenName": display.split(' ').next().unwrap(), "familyName": display.split(' ').nth(1).unwrap_or("")},
        "emails": [{"value": email, "type": "work", "primary": true}],
        "active": active
    })
}

fn assert_error(a: &Answer, status: u16, scim_type: Option<&str>) {
    assert_eq!(a.status.as_u16(), status, "{}", a.body);
    assert_eq!(a.body["schemas"], json!([ERROR]), "{}", a.body);
    assert_eq!(a.body["status"], status.to_string());
    assert!(a.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    match scim_type {
        Some(t) => assert_eq!(a.body["scimType"], t, "{}", a.body),
        None => assert!(a.body.get("scimType").is_none(), "{}", a.body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_discovery_and_tenant_isolation() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let scim = Scim::new(&fx, &base).await;
    assert!(scim.token.starts_with("paybond_scim_"));

    // Only a tenant admin makes tokens; the list never shows one.
    let (status, body) = common::call(
        &base,
        Method::POST,
        "/v1/admin/identity/scim-tokens",
        Some(fx.keys.operator.expose_secret()),
        Some("{}"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (_, listed) = common::call(
        &base,
        Method::GET,
        "/v1/admin/identity/scim-tokens",
        Some(fx.keys.tenant_admin.expose_secret()),
        None,
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["name"], "okta");
    assert!(!listed.to_string().contains(&scim.token));

    // Discovery.
    let spc = scim.get("/ServiceProviderConfig").await;
    assert_eq!(spc.status, 200);
    assert_eq!(spc.body["patch"]["supported"], true);
    assert_eq!(spc.body["filter"]["supported"], true);
    assert_eq!(spc.body["etag"]["supported"], true);
    assert_eq!(spc.body["bulk"]["supported"], false);
    assert_eq!(
        spc.body["authenticationSchemes"][0]["type"],
        "oauthbearertoken"
    );
    let schemas = scim.get("/Schemas").await;
    assert_eq!(schemas.body["totalResults"], 3);
    let user_schema = scim.get(&format!("/Schemas/{USER}")).await;
    assert_eq!(user_schema.status, 200);
    assert!(
        user_schema.body["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "userName"
                && a["required"] == true
                && a["uniqueness"] == "server")
    );
    let types = scim.get("/ResourceTypes").await;
    assert_eq!(types.body["Resources"][0]["endpoint"], "/Users");
    assert_eq!(scim.get("/ResourceTypes/Group").await.body["schema"], GROUP);
    assert_error(&scim.get("/Schemas/urn:nothing").await, 404, None);
    assert_error(&scim.get("/Nothing").await, 404, None);

    // No token, a wrong one: 401 in the SCIM error schema, with a challenge.
    let bare = reqwest::Client::new()
        .get(format!("{base}/scim/v2/Users"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 401);
    assert!(
        bare.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let wrong = Scim {
        token: "paybond_scim_0000".to_owned(),
        base: base.clone(),
        client: reqwest::Client::new(),
    };
    assert_error(&wrong.get("/Users").await, 401, None);
    // An API key is not a SCIM token.
    let key = Scim {
        token: fx.keys.tenant_admin.expose_secret().to_owned(),
        base: base.clone(),
        client: reqwest::Client::new(),
    };
    assert_error(&key.get("/Users").await, 401, None);

    // Another tenant's token sees none of this tenant's users.
    let ada = scim
        .post(
            "/Users",
            user(
                "ada@example.com",
                "00u1",
                "Ada Lovelace",
                "ada@example.com",
                true,
            ),
        )
        .await;
    assert_eq!(ada.status, 201);
    let other_keys = fx
        .engine
        .create_tenant("other", paybond_middleware_core::wire::Environment::Sandbox)
        .await
        .unwrap();
    let other_fx = Fixture {
        engine: fx.engine.clone(),
        agent: fx
            .engine
            .authenticate(other_keys.agent.expose_secret())
            .await
            .unwrap(),
        operator: fx
            .engine
            .authenticate(other_keys.operator.expose_secret())
            .await
            .unwrap(),
        admin: fx
            .engine
            .authenticate(other_keys.tenant_admin.expose_secret())
            .await
            .unwrap(),
        keys: other_keys,
    };
    let other = Scim::new(&other_fx, &base).await;
    assert_eq!(other.get("/Users").await.body["totalResults"], 0);
    let id = ada.body["id"].as_str().unwrap();
    assert_error(&other.get(&format!("/Users/{id}")).await, 404, None);
    assert_error(
        &other
            .patch(
                &format!("/Users/{id}"),
                json!([{"op": "replace", "path": "active", "value": false}]),
            )
            .await,
        404,
        None,
    );
    // The same userName is free in the other tenant.
    assert_eq!(
        other
            .post(
                "/Users",
                user("ada@example.com", "x", "Ada L", "ada@example.com", true)
            )
            .await
            .status,
        201
    );

    // Revoked: refused from the next request.
    let token_id = listed[0]["id"].as_str().unwrap();
    let (status, revoked) = common::call(
        &base,
        Method::DELETE,
        &format!("/v1/admin/identity/scim-tokens/{token_id}"),
        Some(fx.keys.tenant_admin.expose_secret()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    assert_error(&scim.get("/Users").await, 401, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_filters_paging_attributes_patch_put_delete_and_etags() {
    users(Fixture::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_postgres() {
    let Some(config) = common::pg_config() else {
        return;
    };
    users(
        tokio::task::spawn_blocking(move || Fixture::with_config(config))
            .await
            .unwrap(),
    )
    .await;
}

async fn users(fx: Fixture) {
    let base = common::serve(fx.engine.clone()).await;
    let scim = Scim::new(&fx, &base).await;

    let created = scim
        .post(
            "/Users",
            user(
                "ada@example.com",
                "00uAda",
                "Ada Lovelace",
                "ada@example.com",
                true,
            ),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let ada = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["schemas"], json!([USER]));
    assert_eq!(created.body["meta"]["resourceType"], "User");
    assert_eq!(created.body["meta"]["version"], "W/\"1\"");
    assert_eq!(created.headers["etag"], "W/\"1\"");
    let location = created.headers["location"].to_str().unwrap();
    assert_eq!(location, created.body["meta"]["location"]);
    assert!(location.ends_with(&format!("/scim/v2/Users/{ada}")));
    assert_eq!(created.body["active"], true);
    // userName is unique in the tenant, whatever its case.
    assert_error(
        &scim
            .post(
                "/Users",
                user("ADA@example.com", "x", "Other Ada", "o@example.com", true),
            )
            .await,
        409,
        Some("uniqueness"),
    );
    // Bad input: no userName, wrong schemas, not JSON.
    assert_error(
        &scim.post("/Users", json!({"schemas": [USER]})).await,
        400,
        Some("invalidValue"),
    );
    assert_error(
        &scim.post("/Users", json!({"userName": "x"})).await,
        400,
        Some("invalidSyntax"),
    );
    let not_json = reqwest::Client::new()
        .post(format!("{base}/scim/v2/Users"))
        .bearer_auth(&scim.token)
        .header("content-type", "application/scim+json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let text: Value = not_json.json().await.unwrap();
    assert_eq!(text["scimType"], "invalidSyntax");

    let people = [
        (
            "bob@example.com",
            "00uBob",
            "Bob Builder",
            "bob@corp.example",
            true,
        ),
        (
            "carol@example.com",
            "00uCarol",
            "Carol Danvers",
            "carol@example.com",
            false,
        ),
        (
            "dave@other.example",
            "00uDave",
            "Dave Grohl",
            "dave@other.example",
            true,
        ),
    ];
    for (n, x, d, e, a) in people {
        assert_eq!(scim.post("/Users", user(n, x, d, e, a)).await.status, 201);
    }
    let all = [
        "ada@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@other.example",
    ];

    // Every operator, on the attributes an IdP filters by.
    assert_eq!(
        scim.find(r#"userName eq "ADA@EXAMPLE.COM""#).await,
        ["ada@example.com"]
    );
    assert_eq!(
        scim.find(r#"externalId eq "00uBob""#).await,
        ["bob@example.com"]
    );
    assert!(scim.find(r#"externalId eq "00ubob""#).await.is_empty());
    assert_eq!(
        scim.find(r#"emails.value eq "bob@corp.example""#).await,
        ["bob@example.com"]
    );
    assert_eq!(
        scim.find(r#"emails[type eq "work" and value co "corp"]"#)
            .await,
        ["bob@example.com"]
    );
    assert_eq!(
        scim.find(r#"displayName co "an""#).await,
        ["carol@example.com"]
    );
    assert_eq!(
        scim.find(r#"userName sw "da""#).await,
        ["dave@other.example"]
    );
    assert_eq!(
        scim.find(r#"userName ew "@example.com""#).await,
        ["ada@example.com", "bob@example.com", "carol@example.com"]
    );
    assert_eq!(scim.find("active eq false").await, ["carol@example.com"]);
    assert_eq!(scim.find(r#"userName ne "ada@example.com""#).await.len(), 3);
    assert_eq!(scim.find("externalId pr").await, all);
    assert!(scim.find("nickName pr").await.is_empty());
    assert_eq!(
        scim.find(r#"active eq true and (userName sw "a" or userName sw "d")"#)
            .await,
        ["ada@example.com", "dave@other.example"]
    );
    assert_eq!(
        scim.find(r#"not (active eq true)"#).await,
        ["carol@example.com"]
    );
    assert_eq!(
        scim.find(r#"meta.created gt "2000-01-01T00:00:00Z""#).await,
        all
    );
    assert!(
        scim.find(r#"meta.created lt "2000-01-01T00:00:00Z""#)
            .await
            .is_empty()
    );
    let invalid = scim
        .get(&format!(
            "/Users?filter={}",
            common::percent_encode(r#"userName zz "x""#)
        ))
        .await;
    assert_error(&invalid, 400, Some("invalidFilter"));

    // Paging: 1-based, totalResults of everything matched.
    let page = scim.get("/Users?startIndex=2&count=2").await;
    assert_eq!(
        page.body["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:ListResponse"])
    );
    assert_eq!(page.body["totalResults"], 4);
    assert_eq!(page.body["startIndex"], 2);
    assert_eq!(page.body["itemsPerPage"], 2);
    assert_eq!(page.body["Resources"][0]["userName"], "bob@example.com");
    let none = scim.get("/Users?count=0").await;
    assert_eq!(
        (
            none.body["totalResults"].clone(),
            none.body["itemsPerPage"].clone()
        ),
        (json!(4), json!(0))
    );
    assert_eq!(
        scim.get("/Users?startIndex=0&count=1").await.body["startIndex"],
        1
    );
    assert_error(
        &scim.get("/Users?count=many").await,
        400,
        Some("invalidValue"),
    );

    // attributes and excludedAttributes (id and schemas always come back).
    let some = scim
        .get(&format!("/Users/{ada}?attributes=userName,name.familyName"))
        .await;
    assert_eq!(
        some.body,
        json!({"id": ada, "schemas": [USER], "userName": "ada@example.com", "name": {"familyName": "Lovelace"}})
    );
    let less = scim
        .get(&format!("/Users/{ada}?excludedAttributes=emails,meta"))
        .await;
    assert!(less.body.get("emails").is_none() && less.body.get("meta").is_none());
    assert_eq!(less.body["userName"], "ada@example.com");
    // A .search POST is the same query.
    let searched = scim
        .post(
            "/Users/.search",
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                   "filter": "active eq false", "attributes": ["userName"]}),
        )
        .await;
    assert_eq!(
        searched.body["Resources"],
        json!([{"id": searched.body["Resources"][0]["id"], "schemas": [USER], "userName": "carol@example.com"}])
    );

    // PATCH: the paths IdPs send.
    let patched = scim
        .patch(
            &format!("/Users/{ada}"),
            json!([
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "ada@corp.example"},
                {"op": "add", "path": "emails", "value": [{"value": "ada@home.example", "type": "home"}]},
                {"op": "replace", "path": "name.givenName", "value": "Augusta Ada"},
                {"op": "add", "value": {"nickName": "AAL", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Analytics"}}},
                {"op": "remove", "path": "name.familyName"}
            ]),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let p = &patched.body;
    assert_eq!(p["emails"][0]["value"], "ada@corp.example");
    assert_eq!(p["emails"][1]["type"], "home");
    assert_eq!(p["name"], json!({"givenName": "Augusta Ada"}));
    assert_eq!(p["nickName"], "AAL");
    assert_eq!(
        p["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"],
        "Analytics"
    );
    assert_eq!(p["meta"]["version"], "W/\"2\"");
    assert_eq!(
        scim.find(r#"emails.value eq "ada@corp.example""#).await,
        ["ada@example.com"]
    );
    assert_eq!(
        scim.find(r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "analytics""#).await,
        ["ada@example.com"]
    );
    // Entra's form: a string boolean.
    let off = scim
        .patch(
            &format!("/Users/{ada}"),
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
        )
        .await;
    assert_eq!(off.body["active"], false);
    assert_error(
        &scim
            .patch(
                &format!("/Users/{ada}"),
                json!([{"op": "replace", "path": "id", "value": "x"}]),
            )
            .await,
        400,
        Some("mutability"),
    );
    assert_error(
        &scim
            .patch(
                &format!("/Users/{ada}"),
                json!([{"op": "replace", "path": "emails[type eq", "value": "x"}]),
            )
            .await,
        400,
        Some("invalidPath"),
    );
    assert_error(
        &scim
            .patch(&format!("/Users/{ada}"), json!([{"op": "remove"}]))
            .await,
        400,
        Some("noTarget"),
    );
    // A failed PATCH changed nothing (all or nothing).
    let still = scim.get(&format!("/Users/{ada}")).await;
    assert_eq!(still.body["meta"]["version"], "W/\"3\"");
    assert_eq!(still.body["active"], false);

    // ETags: a stale If-Match is 412, the current one passes; If-None-Match is 304.
    let stale = scim
        .send(
            Method::PATCH,
            &format!("/Users/{ada}"),
            Some(json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "active", "value": true}]})),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_error(&stale, 412, None);
    let fresh = scim
        .send(
            Method::PATCH,
            &format!("/Users/{ada}"),
            Some(json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "active", "value": true}]})),
            &[("if-match", "W/\"3\"")],
        )
        .await;
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.headers["etag"], "W/\"4\"");
    let unchanged = scim
        .send(
            Method::GET,
            &format!("/Users/{ada}"),
            None,
            &[("if-none-match", "W/\"4\"")],
        )
        .await;
    assert_eq!(unchanged.status, 304);

    // PUT replaces: what it does not send is gone; read-only attributes are ignored.
    let mut replacement = user(
        "ada@example.com",
        "00uAda",
        "Ada King",
        "ada@king.example",
        true,
    );
    replacement["id"] = json!("forged");
    let put = scim
        .send(
            Method::PUT,
            &format!("/Users/{ada}"),
            Some(replacement),
            &[],
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.body["id"], ada);
    assert!(put.body.get("nickName").is_none());
    assert_eq!(
        put.body["emails"],
        json!([{"value": "ada@king.example", "type": "work", "primary": true}])
    );
    assert_error(
        &scim
            .send(
                Method::PUT,
                "/Users/nobody",
                Some(user("x@x", "x", "X Y", "x@x", true)),
                &[],
            )
            .await,
        404,
        None,
    );

    // DELETE: 204, then gone.
    let deleted = scim
        .send(Method::DELETE, &format!("/Users/{ada}"), None, &[])
        .await;
    assert_eq!(deleted.status, 204);
    assert_error(&scim.get(&format!("/Users/{ada}")).await, 404, None);
    assert_eq!(scim.get("/Users").await.body["totalResults"], 3);
    // The ledger recorded each change, by id only.
    let events = fx
        .engine
        .ledger_events(&fx.operator, 0, 1000)
        .await
        .unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e.event.as_str())
        .filter(|e| e.starts_with("identity.user"))
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "identity.user_created")
            .count(),
        4
    );
    assert!(kinds.contains(&"identity.user_deleted"));
    assert!(
        !events
            .iter()
            .any(|e| e.payload.to_string().contains("ada@king.example"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_members_patch_and_filters() {
    groups(Fixture::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_on_postgres() {
    let Some(config) = common::pg_config() else {
        return;
    };
    groups(
        tokio::task::spawn_blocking(move || Fixture::with_config(config))
            .await
            .unwrap(),
    )
    .await;
}

async fn groups(fx: Fixture) {
    let base = common::serve(fx.engine.clone()).await;
    let scim = Scim::new(&fx, &base).await;
    let mut ids = Vec::new();
    for n in ["ada", "bob", "carol"] {
        let u = scim
            .post(
                "/Users",
                user(
                    &format!("{n}@example.com"),
                    n,
                    &format!("{n} X"),
                    &format!("{n}@example.com"),
                    true,
                ),
            )
            .await;
        ids.push(u.body["id"].as_str().unwrap().to_owned());
    }
    let created = scim
        .post(
            "/Groups",
            json!({"schemas": [GROUP], "displayName": "paybond-operators", "externalId": "g1",
                   "members": [{"value": ids[0]}, {"value": ids[1]}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let group = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["members"].as_array().unwrap().len(), 2);
    assert_eq!(created.body["members"][0]["display"], "ada@example.com");
    // A user shows their groups (read-only).
    let ada = scim.get(&format!("/Users/{}", ids[0])).await;
    assert_eq!(ada.body["groups"][0]["value"], group);
    assert_eq!(ada.body["groups"][0]["display"], "paybond-operators");
    let by_group = scim
        .get(&format!(
            "/Users?filter={}",
            common::percent_encode(&format!("groups.value eq \"{group}\""))
        ))
        .await;
    assert_eq!(by_group.body["totalResults"], 2);
    // Members that are not users of the tenant are refused.
    assert_error(
        &scim
            .post(
                "/Groups",
                json!({"schemas": [GROUP], "displayName": "x", "members": [{"value": "nobody"}]}),
            )
            .await,
        400,
        Some("invalidValue"),
    );
    assert_error(
        &scim.post("/Groups", json!({"schemas": [GROUP]})).await,
        400,
        Some("invalidValue"),
    );

    // PATCH members: add one, remove one by filter, the Entra form with a value list.
    let p = scim
        .patch(
            &format!("/Groups/{group}"),
            json!([
                {"op": "add", "path": "members", "value": [{"value": ids[2]}]},
                {"op": "remove", "path": format!("members[value eq \"{}\"]", ids[0])}
            ]),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    let members: Vec<&str> = p.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    assert_eq!(members.len(), 2);
    assert!(members.contains(&ids[1].as_str()) && members.contains(&ids[2].as_str()));
    let p = scim
        .patch(
            &format!("/Groups/{group}"),
            json!([{"op": "Remove", "path": "members", "value": [{"value": ids[1]}]},
                   {"op": "replace", "path": "displayName", "value": "paybond-analysts"}]),
        )
        .await;
    assert_eq!(p.body["members"].as_array().unwrap().len(), 1);
    assert_eq!(p.body["displayName"], "paybond-analysts");
    assert!(
        scim.get(&format!("/Users/{}", ids[0]))
            .await
            .body
            .get("groups")
            .is_none()
    );

    // Filters on groups.
    let found = scim
        .get(&format!(
            "/Groups?filter={}",
            common::percent_encode(r#"displayName eq "paybond-analysts""#)
        ))
        .await;
    assert_eq!(found.body["totalResults"], 1);
    let found = scim
        .get(&format!(
            "/Groups?filter={}",
            common::percent_encode(&format!("members[value eq \"{}\"]", ids[2]))
        ))
        .await;
    assert_eq!(found.body["totalResults"], 1);
    let excluded = scim
        .get(&format!("/Groups/{group}?excludedAttributes=members"))
        .await;
    assert!(excluded.body.get("members").is_none());

    // PUT replaces the member list; deleting a user takes them out of groups.
    let put = scim
        .send(
            Method::PUT,
            &format!("/Groups/{group}"),
            Some(json!({"schemas": [GROUP], "displayName": "paybond-analysts", "members": [{"value": ids[0]}, {"value": ids[2]}]})),
            &[],
        )
        .await;
    assert_eq!(put.body["members"].as_array().unwrap().len(), 2);
    scim.send(Method::DELETE, &format!("/Users/{}", ids[2]), None, &[])
        .await;
    assert_eq!(
        scim.get(&format!("/Groups/{group}")).await.body["members"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        scim.send(Method::DELETE, &format!("/Groups/{group}"), None, &[])
            .await
            .status,
        204
    );
    assert_error(&scim.get(&format!("/Groups/{group}")).await, 404, None);
}
