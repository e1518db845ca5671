//! The one form of a request path that routing and authorization see, and
//! that the application receives: percent-encoded unreserved characters
//! decoded, other escapes in upper case, repeated slashes merged, `.` and
//! `..` segments resolved (never above the root). A path whose meaning
//! depends on who decodes it — an encoded `/` or `\` inside a segment, a
//! broken escape — is refused with 400, so `/admin` cannot be reached as
//! `/%61dmin`, `//admin`, `/x/../admin` or `/public%2F..%2Fadmin` past a
//! policy written for `/admin`. The choices follow Envoy's
//! `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action:
//! REJECT_REQUEST`.

use std::borrow::Cow;

use http::uri::{PathAndQuery, Uri};

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F` or `%5C` in the path.
    #[error("the path has an encoded '/' or '\\' (%2F, %5C), which servers read differently")]
    EscapedSlash,
    /// `%` not followed by two hex digits, or an escape of a control byte.
    #[error("the path has a malformed percent escape")]
    BadEscape,
    /// Not `/...` (origin form) or `*`.
    #[error("the path does not start with '/'")]
    NotAbsolute,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The normal form of `path` (borrowed when it already is).
pub fn normalise(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: nothing to decode, merge or resolve.
    let b = path.as_bytes();
    let clean = !b.contains(&b'%')
        && !path.contains("//")
        && !path.split('/').any(|s| s == "." || s == "..");
    if clean {
        return Ok(Cow::Borrowed(path));
    }
    // Decode what may be decoded.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (h, l) = match (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(PathError::BadEscape),
            };
            let c = h << 4 | l;
            if c == b'/' || c == b'\\' {
                return Err(PathError::EscapedSlash);
            }
            if c < 0x20 || c == 0x7f {
                return Err(PathError::BadEscape);
            }
            if unreserved(c) {
                decoded.push(c as char);
            } else {
                decoded.push('%');
                decoded.push_str(&format!("{c:02X}"));
            }
            i += 3;
        } else {
            // The URI parser let only ASCII through.
            decoded.push(b[i] as char);
            i += 1;
        }
    }
    // Merge slashes and resolve dot segments.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (n, s) in segments.iter().enumerate() {
        match *s {
            "" | "." => trailing = n == last,
            ".." => {
                out.pop();
                trailing = n == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut p = String::with_capacity(decoded.len());
    for s in &out {
        p.push('/');
        p.push_str(s);
    }
    if trailing || out.is_empty() {
        p.push('/');
    }
    Ok(Cow::Owned(p))
}

/// `uri` with its path in normal form (the query untouched).
pub fn normalise_uri(uri: &Uri) -> Result<Option<Uri>, PathError> {
    let Cow::Owned(path) = normalise(uri.path())? else {
        return Ok(None);
    };
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| PathError::BadEscape)?);
    Ok(Some(
        Uri::from_parts(parts).map_err(|_| PathError::BadEscape)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_path_becomes_one() {
        for (given, want) in [
            ("/", "/"),
            ("/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%7Eme", "/~me"),
            ("//admin", "/admin"),
            ("/x//y///z", "/x/y/z"),
            ("/x/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/./", "/a/"),
            ("/a/", "/a/"),
            ("/..", "/"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("*", "*"),
        ] {
            assert_eq!(normalise(given).unwrap(), want, "{given}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (bad, why) in [
            ("/public%2F..%2Fadmin", PathError::EscapedSlash),
            ("/a%2fb", PathError::EscapedSlash),
            ("/a%5Cb", PathError::EscapedSlash),
            ("/a%zz", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%00b", PathError::BadEscape),
            ("/a%0Ab", PathError::BadEscape),
            ("admin", PathError::NotAbsolute),
        ] {
            assert_eq!(normalise(bad), Err(why), "{bad}");
        }
    }

    #[test]
    fn a_uri_keeps_its_query_and_authority() {
        let u: Uri = "http://web/x/../a%62c?q=%2F..".parse().unwrap();
        assert_eq!(
            normalise_uri(&u).unwrap().unwrap(),
            "http://web/abc?q=%2F.."
        );
        let clean: Uri = "/abc?x=1".parse().unwrap();
        assert!(normalise_uri(&clean).unwrap().is_none());
    }
}
