//! Keeping secrets out of logs, errors and `/metrics`.

/// `url` with the password of its user info replaced by `***`
/// (`mongodb://weir:***@db-1,db-2/weir`); anything that is not `scheme://user:pass@...`
/// is returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let user_info = &authority[..at];
    let Some(colon) = user_info.find(':') else {
        return url.to_string();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end + 3],
        &user_info[..colon],
        &url[scheme_end + 3 + at..]
    )
}

/// Whether an `Authorization` header value carries `Bearer <token>`; always true when
/// no token is required. Compared in constant time.
pub fn bearer_matches(token: Option<&str>, authorization: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let given = authorization.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::{bearer_matches, redact_url};

    #[test]
    fn bearer_tokens() {
        assert!(bearer_matches(None, None));
        assert!(!bearer_matches(Some("s3cret"), None));
        assert!(!bearer_matches(Some("s3cret"), Some("Bearer s3cre")));
        assert!(!bearer_matches(Some("s3cret"), Some("s3cret")));
        assert!(bearer_matches(Some("s3cret"), Some("Bearer s3cret")));
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("mongodb://weir:s3cr@t@db-1:27017,db-2/weir?tls=true"),
            "mongodb://weir:***@db-1:27017,db-2/weir?tls=true"
        );
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("mongodb://127.0.0.1:27017"), "mongodb://127.0.0.1:27017");
        assert_eq!(redact_url("mongodb://user@host/"), "mongodb://user@host/");
        assert_eq!(redact_url("http://h/p?x=a:b@c"), "http://h/p?x=a:b@c");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
