//! A Route's match, compiled: its path test (exact, prefix or an anchored
//! regular expression), method, and header and query parameter tests. All
//! of one match must hold; a rule applies when any of its matches does.

use http::header::HeaderName;
use http::Request;
use raftmesh_api::{RouteMatch, ValueMatch};
use regex::Regex;

/// How the path is tested.
#[derive(Debug, Clone)]
pub enum PathTest {
    /// The whole path.
    Exact(String),
    /// The path starts with it.
    Prefix(String),
    /// The whole path matches it (anchored when compiled).
    Regex(Regex),
}

/// How a header's or query parameter's value is tested.
#[derive(Debug, Clone)]
pub enum ValueTest {
    /// Equal to this.
    Exact(String),
    /// The whole value matches it.
    Regex(Regex),
    /// There (true) or not (false).
    Present(bool),
    /// A test that cannot hold (a rule that did not compile; validation
    /// refuses those, so this is only a guard).
    Never,
}

impl ValueTest {
    fn compile(v: &ValueMatch) -> Self {
        match (&v.exact, &v.regex, v.present) {
            (Some(x), None, None) => ValueTest::Exact(x.clone()),
            (None, Some(re), None) => raftmesh_api::validate::compile_regex(re)
                .map(ValueTest::Regex)
                .unwrap_or(ValueTest::Never),
            (None, None, Some(p)) => ValueTest::Present(p),
            _ => ValueTest::Never,
        }
    }

    /// Whether the values found (none: absent) pass.
    fn test<'a>(&self, mut values: impl Iterator<Item = &'a [u8]>) -> bool {
        match self {
            ValueTest::Present(p) => values.next().is_some() == *p,
            ValueTest::Exact(x) => values.any(|v| v == x.as_bytes()),
            ValueTest::Regex(re) => {
                values.any(|v| std::str::from_utf8(v).is_ok_and(|v| re.is_match(v)))
            }
            ValueTest::Never => false,
        }
    }
}

/// One compiled match.
#[derive(Debug, Clone, Default)]
pub struct Match {
    /// The path test.
    pub path: Option<PathTest>,
    /// The method.
    pub method: Option<http::Method>,
    /// Header tests (the exact `headers` map included).
    pub headers: Vec<(HeaderName, ValueTest)>,
    /// Query parameter tests.
    pub query: Vec<(String, ValueTest)>,
}

impl Match {
    /// Compiles a validated match.
    pub fn compile(m: &RouteMatch) -> Self {
        let path = match (&m.path_prefix, &m.path) {
            (Some(p), _) => Some(PathTest::Prefix(p.clone())),
            (None, Some(p)) => match (&p.exact, &p.prefix, &p.regex) {
                (Some(x), _, _) => Some(PathTest::Exact(x.clone())),
                (_, Some(x), _) => Some(PathTest::Prefix(x.clone())),
                (_, _, Some(re)) => Some(
                    raftmesh_api::validate::compile_regex(re)
                        .map(PathTest::Regex)
                        // Never matches a path (which starts with '/').
                        .unwrap_or_else(|_| PathTest::Exact(String::new())),
                ),
                _ => None,
            },
            (None, None) => None,
        };
        let header = |name: &str, test: ValueTest| {
            let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes());
            match name {
                Ok(n) => (n, test),
                Err(_) => (
                    HeaderName::from_static("x-raftmesh-invalid"),
                    ValueTest::Never,
                ),
            }
        };
        Match {
            path,
            method: m
                .method
                .as_deref()
                .map(|x| http::Method::from_bytes(x.as_bytes()).unwrap_or(http::Method::CONNECT)),
            headers: m
                .headers
                .iter()
                .map(|(k, v)| header(k, ValueTest::Exact(v.clone())))
                .chain(
                    m.header_matches
                        .iter()
                        .map(|v| header(&v.name, ValueTest::compile(v))),
                )
                .collect(),
            query: m
                .query_params
                .iter()
                .map(|v| (v.name.clone(), ValueTest::compile(v)))
                .collect(),
        }
    }

    /// Whether `req` meets every test.
    pub fn test<B>(&self, req: &Request<B>) -> bool {
        let path_ok = match &self.path {
            None => true,
            Some(PathTest::Exact(x)) => req.uri().path() == x,
            Some(PathTest::Prefix(x)) => req.uri().path().starts_with(x.as_str()),
            Some(PathTest::Regex(re)) => re.is_match(req.uri().path()),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| req.method() == m)
            && self.headers.iter().all(|(name, test)| {
                test.test(req.headers().get_all(name).iter().map(|v| v.as_bytes()))
            })
            && (self.query.is_empty() || self.query_ok(req.uri().query().unwrap_or_default()))
    }

    fn query_ok(&self, query: &str) -> bool {
        self.query.iter().all(|(name, test)| {
            let values: Vec<_> = form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v)
                .collect();
            test.test(values.iter().map(|v| v.as_bytes()))
        })
    }

    /// The path prefix this match tests, if it tests one (what a rewrite
    /// or redirect of the prefix replaces).
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            Some(PathTest::Prefix(p)) => Some(p),
            _ => None,
        }
    }
}
