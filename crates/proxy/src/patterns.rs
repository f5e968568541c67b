//! Path patterns with LiteFS's glob semantics: anchored at both ends, `*` matches any run
//! of characters including `/`, every other character is literal. Compiled into one
//! `RegexSet` so a request costs one scan whatever the number of patterns.

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

#[cfg(test)]
mod tests {
    use super::*;

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
