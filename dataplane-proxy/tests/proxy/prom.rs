//! Reading a Prometheus text exposition in tests (this file is shared by
//! the proxy's and meshd's test suites).

/// The series `name` of a Prometheus text exposition: each one's labels
/// and value.
pub fn series(text: &str, name: &str) -> Vec<(std::collections::BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (head, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (n, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (head, ""),
        };
        if n != name {
            continue;
        }
        let mut map = std::collections::BTreeMap::new();
        let mut chars = labels.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "a label value is quoted: {line}");
            let mut v = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => v.push(chars.next().unwrap()),
                    '"' => break,
                    c => v.push(c),
                }
            }
            if chars.peek() == Some(&',') {
                chars.next();
            }
            map.insert(key, v);
        }
        out.push((map, value.parse().unwrap()));
    }
    out
}

/// The sum of the series `name` whose labels hold every pair of `with`.
pub fn metric(text: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    series(text, name)
        .iter()
        .filter(|(l, _)| {
            with.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Whether a series `name` with every pair of `with` exists (a sum of 0
/// does not tell an absent series from a zero).
pub fn has(text: &str, name: &str, with: &[(&str, &str)]) -> bool {
    series(text, name).iter().any(|(l, _)| {
        with.iter()
            .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
    })
}
