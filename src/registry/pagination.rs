//! The `n`/`last` pagination shared by tag lists and the catalog: entries
//! in lexical order, those after `last`, at most `n`, and a `Link` header
//! when more remain.
use http::HeaderValue;

use super::query;

/// What a client asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// At most this many entries. A value that is not a number is ignored
    /// (whole list) rather than refused: the spec names no error for it.
    pub n: Option<usize>,
    /// Only entries lexically after this one.
    pub last: Option<String>,
}

impl Page {
    pub fn from_query(q: Option<&str>) -> Page {
        Page {
            n: query::param(q, "n").and_then(|v| v.parse().ok()),
            last: query::param(q, "last"),
        }
    }

    /// The page of `entries`, and the `Link` to the next page (pointing at
    /// `path`) when entries remain after it. `n=0` is an empty page and no
    /// link: a link that asks for zero again would never advance.
    pub fn apply(
        &self,
        mut entries: Vec<String>,
        path: &str,
    ) -> (Vec<String>, Option<HeaderValue>) {
        entries.sort();
        entries.dedup();
        if let Some(last) = &self.last {
            entries.retain(|e| e.as_str() > last.as_str());
        }
        let Some(n) = self.n else {
            return (entries, None);
        };
        if entries.len() <= n || n == 0 {
            entries.truncate(n);
            return (entries, None);
        }
        entries.truncate(n);
        // Entries are validated names and tags: nothing to escape.
        let link = entries.last().and_then(|last| {
            HeaderValue::try_from(format!("<{path}?n={n}&last={last}>; rel=\"next\"")).ok()
        });
        (entries, link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pages_through_in_lexical_order() {
        let all = strings(&["b", "a", "d", "c"]);
        let page = Page {
            n: Some(2),
            last: None,
        };
        let (got, link) = page.apply(all.clone(), "/v2/x/tags/list");
        assert_eq!(got, strings(&["a", "b"]));
        assert_eq!(link.unwrap(), "</v2/x/tags/list?n=2&last=b>; rel=\"next\"");
        let page = Page {
            n: Some(2),
            last: Some("b".into()),
        };
        let (got, link) = page.apply(all.clone(), "/v2/x/tags/list");
        assert_eq!(got, strings(&["c", "d"]));
        assert!(link.is_none());
        let page = Page {
            n: None,
            last: Some("a".into()),
        };
        assert_eq!(page.apply(all.clone(), "p").0, strings(&["b", "c", "d"]));
        let page = Page {
            n: Some(0),
            last: None,
        };
        assert_eq!(page.apply(all, "p"), (vec![], None));
    }

    #[test]
    fn reads_the_query() {
        let p = Page::from_query(Some("ns=docker.io&n=5&last=v1"));
        assert_eq!(
            p,
            Page {
                n: Some(5),
                last: Some("v1".into())
            }
        );
        assert_eq!(Page::from_query(Some("n=-1")), Page::default());
    }
}
