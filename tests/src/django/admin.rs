//! A browser in the Django admin: one flow (log in, add an item, see it listed under the
//! success message, change it, delete it, log out) through one address, with a cookie jar of
//! its own (Django's `sessionid`, `csrftoken` and `messages`, the proxy's `litefs-txid`),
//! every step checked as the admin's user would see it.

use std::{fmt, net::SocketAddr, time::Duration};

use super::Jar;
use crate::client::{self, Answer};

/// The superuser the project's migration `items/0003_admin_user` creates.
pub const USER: &str = "admin";
pub const PASSWORD: &str = "admin-flow-password";

const CHANGELIST: &str = "/admin/items/item/";

/// The step of a flow that did not answer as the admin's user expects.
#[derive(Debug, Clone)]
pub struct StepFailed {
    pub step: &'static str,
    pub method: &'static str,
    pub path: String,
    /// `None`: no answer (connection error or timeout).
    pub status: Option<u16>,
    /// The node whose Django answered (its `X-Served-By`), if one did.
    pub served_by: Option<String>,
    /// What was wrong, with the page's title or the start of its text.
    pub detail: String,
    /// Requests the flow sent, this one included.
    pub requests: usize,
}

impl fmt::Display for StepFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} {}): {} from {}: {}",
            self.step,
            self.method,
            self.path,
            self.status.map_or("no answer".into(), |s| s.to_string()),
            self.served_by.as_deref().unwrap_or("no Django"),
            self.detail
        )
    }
}

/// A flow that went through: each request's method and the node whose Django answered it,
/// in order.
#[derive(Debug, Clone)]
pub struct Completed {
    pub served_by: Vec<(&'static str, String)>,
    /// Requests the flow sent.
    pub requests: usize,
}

/// One flow through `addr` on item `key` (unique per flow): the login page, login, the
/// index, the add page, add, the changelist with "was added successfully", the change page,
/// change, the changelist with "was changed successfully", the delete action, its
/// confirmation ("Yes, I'm sure"), the changelist with "Successfully deleted 1 item." and
/// without the item, logout, and the index sending the logged-out user to the login page.
/// Each redirect is followed with a GET, as a browser does.
pub async fn flow(addr: SocketAddr, key: &str) -> Result<Completed, StepFailed> {
    let mut b = Browser::new(addr);

    let login = "/admin/login/?next=/admin/";
    let page = b.get("login page", login).await?;
    b.expect(&page, 200, &["csrfmiddlewaretoken"])?;
    let token = b.token(&page)?;
    let a = b
        .post(
            "log in",
            login,
            &[
                ("csrfmiddlewaretoken", &token),
                ("username", USER),
                ("password", PASSWORD),
                ("next", "/admin/"),
            ],
        )
        .await?;
    b.expect_redirect(&a, "/admin/")?;
    let page = b.get("index", "/admin/").await?;
    b.expect(&page, 200, &["Site administration", "/admin/items/item/"])?;

    let add = "/admin/items/item/add/";
    let page = b.get("add page", add).await?;
    b.expect(&page, 200, &["Add item", "name=\"key\""])?;
    let token = b.token(&page)?;
    let fields = [
        ("csrfmiddlewaretoken", token.as_str()),
        ("key", key),
        ("text", "added by a flow"),
        ("_save", "Save"),
    ];
    let a = b.post("add", add, &fields).await?;
    b.expect_redirect(&a, CHANGELIST)?;
    let page = b.get("changelist after add", CHANGELIST).await?;
    let link = format!(">{key}</a>");
    b.expect(
        &page,
        200,
        &["class=\"success\"", "was added successfully", &link],
    )?;
    let id = b.item_id(&page, key)?;

    let change = format!("/admin/items/item/{id}/change/");
    let page = b.get("change page", &change).await?;
    b.expect(
        &page,
        200,
        &[&format!("value=\"{key}\""), "added by a flow"],
    )?;
    let token = b.token(&page)?;
    let fields = [
        ("csrfmiddlewaretoken", token.as_str()),
        ("key", key),
        ("text", "changed by a flow"),
        ("_save", "Save"),
    ];
    let a = b.post("change", &change, &fields).await?;
    b.expect_redirect(&a, CHANGELIST)?;
    let page = b.get("changelist after change", CHANGELIST).await?;
    b.expect(
        &page,
        200,
        &["was changed successfully", "changed by a flow", &link],
    )?;

    let token = b.token(&page)?;
    let fields = [
        ("csrfmiddlewaretoken", token.as_str()),
        ("action", "delete_selected"),
        ("select_across", "0"),
        ("index", "0"),
        ("_selected_action", id.as_str()),
    ];
    let page = b.post("delete action", CHANGELIST, &fields).await?;
    b.expect(&page, 200, &["Are you sure", "name=\"post\" value=\"yes\""])?;
    let token = b.token(&page)?;
    let fields = [
        ("csrfmiddlewaretoken", token.as_str()),
        ("_selected_action", id.as_str()),
        ("action", "delete_selected"),
        ("post", "yes"),
    ];
    let a = b.post("confirm delete", CHANGELIST, &fields).await?;
    b.expect_redirect(&a, CHANGELIST)?;
    let page = b.get("changelist after delete", CHANGELIST).await?;
    b.expect(&page, 200, &["Successfully deleted 1 item."])?;
    if page.text().contains(&link) {
        return Err(b.failed(&page, format!("{key} still listed after its deletion")));
    }

    let token = b.token(&page)?;
    let a = b
        .post(
            "log out",
            "/admin/logout/",
            &[("csrfmiddlewaretoken", &token)],
        )
        .await?;
    b.expect(&a, 200, &["Logged out"])?;
    let a = b.get("index after logout", "/admin/").await?;
    b.expect_redirect(&a, "/admin/login/?next=/admin/")?;
    Ok(Completed {
        served_by: b.served_by,
        requests: b.requests,
    })
}

/// Sends what a browser sends: its Host (with the port, the address it connects to), its
/// cookies, and on POST an `Origin` and a urlencoded form.
struct Browser {
    addr: SocketAddr,
    jar: Jar,
    served_by: Vec<(&'static str, String)>,
    requests: usize,
    /// The step and request now being checked, for [`StepFailed`].
    step: &'static str,
    method: &'static str,
    path: String,
}

impl Browser {
    fn new(addr: SocketAddr) -> Browser {
        Browser {
            addr,
            jar: Jar::default(),
            served_by: Vec::new(),
            requests: 0,
            step: "",
            method: "",
            path: String::new(),
        }
    }

    async fn get(&mut self, step: &'static str, path: &str) -> Result<Answer, StepFailed> {
        self.send(step, "GET", path, None).await
    }

    async fn post(
        &mut self,
        step: &'static str,
        path: &str,
        form: &[(&str, &str)],
    ) -> Result<Answer, StepFailed> {
        self.send(step, "POST", path, Some(form)).await
    }

    async fn send(
        &mut self,
        step: &'static str,
        method: &'static str,
        path: &str,
        form: Option<&[(&str, &str)]>,
    ) -> Result<Answer, StepFailed> {
        (self.step, self.method, self.path) = (step, method, path.to_owned());
        self.requests += 1;
        let host = self.addr.to_string();
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &host);
        if let Some(c) = self.jar.header() {
            req = req.header("cookie", c);
        }
        let body = match form {
            Some(fields) => {
                req = req
                    .header("origin", format!("http://{host}"))
                    .header("content-type", "application/x-www-form-urlencoded");
                client::full(urlencoded(fields))
            }
            None => client::empty(),
        };
        let sent = match req.body(body) {
            Ok(r) => tokio::time::timeout(Duration::from_secs(30), client::send(self.addr, r))
                .await
                .map_err(|_| anyhow::anyhow!("no answer in 30 s"))
                .and_then(|r| r),
            Err(e) => Err(e.into()),
        };
        let a = sent.map_err(|e| StepFailed {
            step,
            method,
            path: path.to_owned(),
            status: None,
            served_by: None,
            detail: format!("{e:#}"),
            requests: self.requests,
        })?;
        self.jar.store(&a);
        if let Some(n) = a.header("x-served-by") {
            self.served_by.push((method, n.to_owned()));
        }
        Ok(a)
    }

    fn failed(&self, a: &Answer, what: String) -> StepFailed {
        StepFailed {
            step: self.step,
            method: self.method,
            path: self.path.clone(),
            status: Some(a.status.as_u16()),
            served_by: a.header("x-served-by").map(str::to_owned),
            detail: format!("{what}; page: {}", gist(&a.text())),
            requests: self.requests,
        }
    }

    fn expect(&self, a: &Answer, status: u16, contains: &[&str]) -> Result<(), StepFailed> {
        if a.status != status {
            return Err(self.failed(a, format!("expected {status}")));
        }
        let text = a.text();
        match contains.iter().find(|c| !text.contains(**c)) {
            Some(c) => Err(self.failed(a, format!("no {c:?}"))),
            None => Ok(()),
        }
    }

    fn expect_redirect(&self, a: &Answer, to: &str) -> Result<(), StepFailed> {
        match a.header("location") {
            Some(l) if a.status == 302 && l == to => Ok(()),
            l => Err(self.failed(a, format!("expected 302 to {to}, Location {l:?}"))),
        }
    }

    /// The form's `csrfmiddlewaretoken`.
    fn token(&self, a: &Answer) -> Result<String, StepFailed> {
        let text = a.text();
        attr_after(&text, "name=\"csrfmiddlewaretoken\" value=\"")
            .ok_or_else(|| self.failed(a, "no csrfmiddlewaretoken".into()))
    }

    /// The id in the changelist's link to `key`'s change page.
    fn item_id(&self, a: &Answer, key: &str) -> Result<String, StepFailed> {
        let text = a.text();
        let end = format!("/change/\">{key}</a>");
        let id = text.find(&end).and_then(|e| {
            let start = text[..e].rfind(CHANGELIST)? + CHANGELIST.len();
            let id = &text[start..e];
            id.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| id.to_owned())
        });
        id.ok_or_else(|| self.failed(a, format!("no change link of {key}")))
    }
}

/// The text after `prefix` up to the next `"`.
fn attr_after(text: &str, prefix: &str) -> Option<String> {
    let start = text.find(prefix)? + prefix.len();
    let len = text[start..].find('"')?;
    Some(text[start..start + len].to_owned())
}

/// A page's `<title>` (Django's error pages: "Bad Request (400)", "Server Error (500)"),
/// else the start of its text.
fn gist(text: &str) -> String {
    let title = text
        .split_once("<title>")
        .and_then(|(_, t)| t.split_once("</title>"))
        .map(|(t, _)| t.trim().to_owned());
    title.unwrap_or_else(|| text.chars().take(200).collect::<String>().trim().to_owned())
}

/// `application/x-www-form-urlencoded`.
fn urlencoded(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_urlencoded() {
        assert_eq!(
            urlencoded(&[("next", "/admin/?a=b c"), ("k", "x-1")]),
            "next=%2Fadmin%2F%3Fa%3Db+c&k=x-1"
        );
    }

    #[test]
    fn the_token_and_the_item_id_are_read_from_the_page() {
        let page = r#"<input type="hidden" name="csrfmiddlewaretoken" value="abc123">
            <th class="field-key"><a href="/admin/items/item/17/change/">k-1</a></th>
            <th class="field-key"><a href="/admin/items/item/3/change/">k-10</a></th>"#;
        assert_eq!(
            attr_after(page, "name=\"csrfmiddlewaretoken\" value=\"").as_deref(),
            Some("abc123")
        );
        let b = Browser::new("127.0.0.1:1".parse().unwrap());
        let a = Answer {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: page.to_owned().into(),
        };
        assert_eq!(b.item_id(&a, "k-1").unwrap(), "17");
        assert_eq!(b.item_id(&a, "k-10").unwrap(), "3");
        assert!(b.item_id(&a, "k-2").is_err());
    }

    #[test]
    fn an_error_page_is_told_by_its_title() {
        assert_eq!(
            gist("<html><title>Server Error (500)</title><h1>x</h1>"),
            "Server Error (500)"
        );
    }
}
