//! Path patterns with LiteFS's glob semantics: anchored at both ends, `*` matches any run
//! of characters including `/`, every other character is literal. Compiled into one
//! `RegexSet` so a request costs one scan whatever the number of patterns.

use std::borrow::Cow;

use regex::RegexSet;

#[derive(Clone, Debug)]
pub struct Patterns {
    set: Option<RegexSet>,
}

impl Patterns {
    pub fn new<S: AsRef<str>>(globs: &[S]) -> Result<Patterns, regex::Error> {
        if globs.is_empty() {
            return Ok(Patterns { set: None });
        }
        let regexes = globs.iter().map(|g| {
            let parts: Vec<String> = g.as_ref().split('*').map(regex::escape).collect();
            format!("^{}$", parts.join(".*"))
        });
        Ok(Patterns {
            set: Some(RegexSet::new(regexes)?),
        })
    }

    /// Whether the URL path (no query) matches any pattern.
    pub fn matches(&self, path: &str) -> bool {
        self.set.as_ref().is_some_and(|s| s.is_match(path))
    }
}

/// The forms of a request path that the proxy's routing must agree on: the raw path; the
/// RFC 3986 normalized path (percent-encoded unreserved characters decoded, dot segments
/// removed); and the path as a lenient app or router may read it (every percent-encoding
/// decoded, backslashes as `/`, `;` segment parameters dropped, dot segments removed). A path with
/// nothing to normalize is borrowed three times.
pub fn path_forms(raw: &str) -> [Cow<'_, str>; 3] {
    // A dot segment needs "/."; the other changes need one of these bytes.
    if !raw.contains("/.") && !raw.bytes().any(|b| matches!(b, b'%' | b';' | b'\\')) {
        return [Cow::Borrowed(raw), Cow::Borrowed(raw), Cow::Borrowed(raw)];
    }
    let normalized = remove_dot_segments(&decode(raw, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
    }));
    let decoded = decode(raw, |_| true).replace('\\', "/");
    let no_params: Vec<&str> = decoded
        .split('/')
        .map(|seg| seg.split(';').next().unwrap_or_default())
        .collect();
    let lenient = remove_dot_segments(&no_params.join("/"));
    [
        Cow::Borrowed(raw),
        Cow::Owned(normalized),
        Cow::Owned(lenient),
    ]
}

/// Decodes the `%XX` escapes whose byte `decodable` accepts; others are kept as they are.
fn decode(raw: &str, decodable: impl Fn(u8) -> bool) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if let (b'%', Some(&h), Some(&l)) = (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            if let (Some(h), Some(l)) = (hex(h), hex(l)) {
                let b = (h * 16 + l) as u8;
                if decodable(b) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3986 §5.2.4 on a path: `.` segments dropped, `..` drops the segment before it (never
/// above the root).
fn remove_dot_segments(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut segs = path.split('/');
    if absolute {
        segs.next();
    }
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in segs {
        trailing = matches!(seg, "." | "..");
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut r = String::with_capacity(path.len());
    if absolute {
        r.push('/');
    }
    r.push_str(&out.join("/"));
    if trailing && !out.is_empty() {
        r.push('/');
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_forms_normalize_dot_segments_and_encodings() {
        let forms = |p: &str| path_forms(p).map(|f| f.into_owned());
        assert_eq!(forms("/static/a.css"), ["/static/a.css"; 3]);
        assert!(path_forms("/static/a.css.map")
            .iter()
            .all(|f| matches!(f, Cow::Borrowed(_))));
        assert_eq!(forms("/a/.well-known/x")[2], "/a/.well-known/x");
        assert_eq!(
            forms("/static/../api/items"),
            ["/static/../api/items", "/api/items", "/api/items"]
        );
        assert_eq!(
            forms("/static/%2e%2E/api"),
            ["/static/%2e%2E/api", "/api", "/api"]
        );
        assert_eq!(
            forms("/static/..%2fapi/items"),
            [
                "/static/..%2fapi/items",
                "/static/..%2fapi/items",
                "/api/items"
            ]
        );
        assert_eq!(
            forms("/static/..;/api/items"),
            [
                "/static/..;/api/items",
                "/static/..;/api/items",
                "/api/items"
            ]
        );
        assert_eq!(forms("/static/%7euser/x")[1], "/static/~user/x");
        assert_eq!(forms("/a/b/.")[1], "/a/b/");
        assert_eq!(forms("/../../x")[1], "/x");
        assert_eq!(forms("/a/..")[1], "/");
        assert_eq!(forms("/a%20b/%zz")[1], "/a%20b/%zz");
    }

    #[test]
    fn litefs_glob_semantics() {
        let p = Patterns::new(&["/build/*", "/health", "*.css"]).unwrap();
        assert!(p.matches("/build/"));
        assert!(p.matches("/build/a/b"));
        assert!(!p.matches("/build"));
        assert!(p.matches("/health"));
        assert!(!p.matches("/health/x"));
        assert!(!p.matches("/x/health"));
        assert!(p.matches("/static/site.css"));
        assert!(!p.matches("/static/site.css.map"));
    }

    #[test]
    fn other_glob_characters_are_literal() {
        let p = Patterns::new(&["/a?b/[x]/{c}.+"]).unwrap();
        assert!(p.matches("/a?b/[x]/{c}.+"));
        assert!(!p.matches("/aXb/x/c.+"));
    }

    #[test]
    fn empty_matches_nothing() {
        assert!(!Patterns::new::<&str>(&[]).unwrap().matches("/"));
    }
}
