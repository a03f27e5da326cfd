//! Secrets in source URLs stay in the process: [`Redacted`] shows text with
//! every URL's userinfo and query string replaced, so a presigned URL or a
//! `user:password@` URL can go into a log line or an error message.
use std::fmt;

/// What replaces a URL's userinfo or query string.
const MASK: &str = "***";

/// Displays `0` with every `scheme://` URL in it redacted: userinfo
/// (`user:pass@`) becomes `***@` and the query (`?…`) becomes `?***`.
/// Text without `://` is shown unchanged. Every log line and error that
/// may quote a source URL goes through this type.
#[derive(Clone, Copy)]
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find("://") {
            let (before, url) = rest.split_at(at + 3);
            f.write_str(before)?;
            // The URL runs to the first character that cannot be in one
            // unescaped (what ends it in prose and in error messages).
            let end = url
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
                .unwrap_or(url.len());
            let (url, tail) = url.split_at(end);
            // Userinfo: an '@' before the query. (Before the path, by the
            // grammar; but a password with an unescaped '/' must not leak,
            // so an '@' in the path masks a little more than needed.)
            let authority = url.split(['?', '#']).next().unwrap_or(url);
            let host = match authority.rfind('@').and_then(|i| url.get(i + 1..)) {
                Some(host) => {
                    f.write_str(MASK)?;
                    f.write_str("@")?;
                    host
                }
                None => url,
            };
            match host.split_once('?') {
                Some((path, query)) => {
                    f.write_str(path)?;
                    f.write_str("?")?;
                    f.write_str(MASK)?;
                    // What follows a closing parenthesis (reqwest's
                    // "for url (…): why") is prose again.
                    if let Some((_, prose)) = query.split_once(')') {
                        f.write_str(")")?;
                        f.write_str(prose)?;
                    }
                }
                None => f.write_str(host)?,
            }
            rest = tail;
        }
        f.write_str(rest)
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// `s` redacted, as a string.
pub fn redact(s: &str) -> String {
    Redacted(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn userinfo_and_query_are_masked() {
        assert_eq!(
            redact("http://alice:S3CRETPW@127.0.0.1:5790/x.tar?X-Amz-Signature=TOPSECRET"),
            "http://***@127.0.0.1:5790/x.tar?***"
        );
        assert_eq!(redact("https://tok@h/p"), "https://***@h/p");
        assert_eq!(redact("https://h/p?a=1&b=2#f"), "https://h/p?***");
        // A password with an unescaped '/' is masked whole.
        assert_eq!(redact("https://u:p/w@h/a"), "https://***@h/a");
        assert_eq!(redact("s3://bucket/key.tar"), "s3://bucket/key.tar");
        assert_eq!(redact("/srv/images/app.tar"), "/srv/images/app.tar");
        assert_eq!(redact(""), "");
        // Multi-byte text in every part of the URL and around it.
        assert_eq!(
            redact("erro: https://usuário:sênha@hóst/ç?q=ã) fim"),
            "erro: https://***@hóst/ç?***) fim"
        );
        assert_eq!(redact("ç://ã@é?ü"), "ç://***@é?***");
        assert_eq!(redact("https://h/p?x=é)ñ"), "https://h/p?***)ñ");
        // A URL that is nothing but its scheme, or ends at '@' or '?'.
        assert_eq!(redact("http://"), "http://");
        assert_eq!(redact("http://u@"), "http://***@");
        assert_eq!(redact("http://h?"), "http://h?***");
    }

    #[test]
    fn urls_inside_messages_are_masked() {
        let msg = "error sending request for url (http://u:PW@h:1/x.tar?sig=SECRET): \
                   connection refused; argument \"a:v1=https://u:PW2@h/y?z=SECRET2\"";
        let got = redact(msg);
        for secret in ["PW", "SECRET", "PW2", "SECRET2", "u:"] {
            assert!(!got.contains(secret), "{secret} in {got}");
        }
        assert_eq!(
            got,
            "error sending request for url (http://***@h:1/x.tar?***): \
             connection refused; argument \"a:v1=https://***@h/y?***\""
        );
    }
}
