use super::*;

fn ready(head: &[u8], caller: Option<&[u8]>) -> Prepared {
    match prepare(head, caller) {
        Prep::Ready(p) => p,
        other => panic!("{other:?} for {:?}", String::from_utf8_lossy(head)),
    }
}

fn fallback(head: &[u8]) -> &'static str {
    match prepare(head, None) {
        Prep::Fallback(why) => why,
        other => panic!("{other:?} for {:?}", String::from_utf8_lossy(head)),
    }
}

#[test]
fn a_plain_request_goes_to_the_app_as_sent_with_hop_by_hop_headers_dropped() {
    let head = b"POST /a/b?x=1 HTTP/1.1\r\nHost: web\r\nX-Custom: Keep Me\r\nConnection: keep-alive, x-gone\r\nKeep-Alive: 5\r\nTE: gzip\r\nProxy-Authorization: secret\r\nContent-Length: 5\r\n\r\nhelloGET";
    let p = ready(
        head,
        Some(b"x-forwarded-client-cert: URI=spiffe://d/ns/a/sa/b\r\n"),
    );
    assert_eq!(p.head_len, head.len() - 8);
    assert_eq!(p.body, Framing::Length(5));
    assert!(!p.close && !p.head_method);
    assert_eq!(
        String::from_utf8(p.out.clone()).unwrap(),
        "POST /a/b?x=1 HTTP/1.1\r\nHost: web\r\nX-Custom: Keep Me\r\nContent-Length: 5\r\nx-forwarded-client-cert: URI=spiffe://d/ns/a/sa/b\r\n\r\n"
    );
    assert_eq!(&p.out[..p.method], b"POST");
    assert_eq!(
        &p.out[p.path.0..p.path.1],
        b"/a/b",
        "the path without its query"
    );
    let p = ready(
        b"HEAD / HTTP/1.1\r\nhost: web\r\nconnection: close\r\nte: trailers\r\n\r\n",
        None,
    );
    assert!(p.close && p.head_method);
    assert!(
        p.out.ends_with(b"te: trailers\r\n\r\n"),
        "te: trailers passes (gRPC)"
    );
    assert_eq!(p.body, Framing::None);
}

#[test]
fn a_forged_caller_identity_never_reaches_the_app_in_any_spelling() {
    let head = b"GET / HTTP/1.1\r\nHost: web\r\nX-Forwarded-Client-Cert: URI=spiffe://evil\r\nx_forwarded_client_cert: URI=spiffe://evil\r\nX-FORWARDED_CLIENT-CERT: URI=spiffe://evil\r\n\r\n";
    let p = ready(head, None);
    let out = String::from_utf8(p.out).unwrap();
    assert!(!out.contains("evil"), "{out}");
    let p = ready(
        head,
        Some(b"x-forwarded-client-cert: URI=spiffe://d/ns/a/sa/real\r\n"),
    );
    let out = String::from_utf8(p.out).unwrap();
    assert!(
        !out.contains("evil") && out.contains("spiffe://d/ns/a/sa/real"),
        "{out}"
    );
}

#[test]
fn what_the_fast_path_does_not_cover_goes_to_hyper_untouched() {
    for (head, why) in [
        (&b"GET / HTTP/1.0\r\nHost: web\r\n\r\n"[..], "version"),
        (b"GET http://web/ HTTP/1.1\r\nHost: web\r\n\r\n", "target"),
        (b"GET /a<b HTTP/1.1\r\nHost: web\r\n\r\n", "target"),
        (b"GET /a/../admin HTTP/1.1\r\nHost: web\r\n\r\n", "path"),
        (b"GET /%61dmin HTTP/1.1\r\nHost: web\r\n\r\n", "path"),
        (
            b"CONNECT web:80 HTTP/1.1\r\nHost: web:80\r\n\r\n",
            "upgrade",
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "upgrade",
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: h2c\r\n\r\n",
            "upgrade",
        ),
        (
            b"PUT / HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "expect",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: web\r\nContent-Type: application/grpc\r\n\r\n",
            "grpc",
        ),
        (b"GET / HTTP/1.1\r\n\r\n", "host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "host"),
        (
            b"GET / HTTP/1.1\r\nHost: web\r\nbad header\r\n\r\n",
            "malformed",
        ),
        // What httparse refuses goes to hyper, which refuses it too.
        (
            b"GET / HTTP/1.1\r\nHost: web\r\nX: a\0b\r\n\r\n",
            "malformed",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: web\r\nX: a\rb\r\n\r\n",
            "malformed",
        ),
        (b"GET / HTTP/1.1\r\nHost : web\r\n\r\n", "malformed"),
        (
            b"GET / HTTP/1.1\r\nHost: web\r\nX: a\r\n b\r\n\r\n",
            "malformed",
        ),
        (b"OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n", "target"),
        (b"GET web:80 HTTP/1.1\r\nHost: web\r\n\r\n", "target"),
        (b"GET //a HTTP/1.1\r\nHost: web\r\n\r\n", "path"),
        (
            b"POST / HTTP/1.0\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n",
            "version",
        ),
    ] {
        assert_eq!(fallback(head), why, "{:?}", String::from_utf8_lossy(head));
    }
    let many = [
        &b"GET / HTTP/1.1\r\nHost: web\r\n"[..],
        &b"x: y\r\n".repeat(MAX_HEADERS),
        b"\r\n",
    ]
    .concat();
    assert_eq!(fallback(&many), "many-headers");
    assert!(matches!(
        prepare(b"GET / HTTP/1.1\r\nHost: we", None),
        Prep::More
    ));
}

#[test]
fn every_framing_two_parsers_could_read_differently_goes_to_hyper() {
    for head in [
        &b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5, 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 0x5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: identity, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\xc2\xa0\r\n\r\n",
    ] {
        assert_eq!(fallback(head), "framing", "{:?}", String::from_utf8_lossy(head));
    }
    let p = ready(
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: Chunked\r\n\r\n",
        None,
    );
    assert_eq!(p.body, Framing::Chunked);
    // Spaces and tabs around a value are not part of it; the app gets the
    // value alone, with CRLF line ends whatever the client sent.
    let p = ready(
        b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked \r\n\r\n",
        None,
    );
    assert_eq!(p.body, Framing::Chunked);
    let p = ready(
        b"POST / HTTP/1.1\nHost: web\nContent-Length:  5\t\n\nhello",
        None,
    );
    assert_eq!(p.body, Framing::Length(5));
    let out = String::from_utf8(p.out.clone()).unwrap();
    assert!(out.contains("Content-Length: 5\r\n"), "{out:?}");
    assert!(
        !out.replace("\r\n", "").contains('\n') && !out.contains('\t'),
        "{out:?}"
    );
}

#[test]
fn a_chunked_body_is_scanned_once_however_it_arrives() {
    let body = b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\nGET /next";
    let end = body.len() - b"GET /next".len();
    // One byte more per read: each read scans only what is new. A scanner
    // started again on bytes it has seen would read them as a second
    // chunk-size line and refuse them.
    let mut held = Held::default();
    let mut got = None;
    for k in 1..=body.len() {
        match held.feed(&body[..k]).unwrap() {
            None => assert_eq!(held.scanned, k),
            Some(n) => {
                got = Some((k, n));
                break;
            }
        }
    }
    assert_eq!(got, Some((end, end)));
    // In two reads, or one.
    let mut held = Held::default();
    assert_eq!(held.feed(&body[..7]), Ok(None));
    assert_eq!(held.feed(body), Ok(Some(end)));
    assert_eq!(Held::default().feed(body), Ok(Some(end)));
}

fn answer_of(head: &[u8], head_method: bool) -> Answer {
    match parse_response(head, head_method) {
        Resp::Ready(a) => a,
        other => panic!("{other:?} for {:?}", String::from_utf8_lossy(head)),
    }
}

#[test]
fn an_answer_comes_back_with_its_framing_known_and_hop_by_hop_headers_dropped() {
    let a = answer_of(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-App: yes\r\n\r\nok", false);
    assert_eq!(
        (a.code, a.body, a.keep, a.error),
        (200, Framing::Length(2), true, "")
    );
    assert_eq!(
        String::from_utf8(a.out).unwrap(),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App: yes\r\n"
    );
    // Transfer-Encoding wins over Content-Length, which is dropped.
    let a = answer_of(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
    );
    assert_eq!(a.body, Framing::Chunked);
    assert!(!String::from_utf8(a.out)
        .unwrap()
        .to_lowercase()
        .contains("content-length"));
    // No length: until the app closes, and the connection is not kept.
    let a = answer_of(b"HTTP/1.1 200 OK\r\n\r\n", false);
    assert_eq!((a.body, a.keep), (Framing::UntilClose, false));
    let a = answer_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
    assert_eq!((a.body, a.keep), (Framing::UntilClose, false));
    // HTTP/1.0 and `close` are not kept; a HEAD's answer has no body.
    assert!(!answer_of(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).keep);
    assert!(
        answer_of(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false
        )
        .keep
    );
    assert!(
        !answer_of(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false
        )
        .keep
    );
    assert_eq!(
        answer_of(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).body,
        Framing::None
    );
    assert_eq!(
        answer_of(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false
        )
        .body,
        Framing::None
    );
    // The mesh's error code is read from an error answer only.
    let a = answer_of(b"HTTP/1.1 503 Service Unavailable\r\nx-raftmesh-error: no-route\r\nContent-Length: 0\r\n\r\n", false);
    assert_eq!(a.error, "no-route");
    let a = answer_of(b"HTTP/1.1 503 Service Unavailable\r\nx-raftmesh-error: made-up\r\nContent-Length: 0\r\n\r\n", false);
    assert_eq!(a.error, "other");
    assert_eq!(
        answer_of(
            b"HTTP/1.1 200 OK\r\nx-raftmesh-error: no-route\r\nContent-Length: 0\r\n\r\n",
            false
        )
        .error,
        ""
    );
}

#[test]
fn a_bad_or_unasked_for_answer_is_refused() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        // A length the client could read otherwise than this proxy.
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\xc2\xa0\r\n\r\n",
    ] {
        assert!(
            matches!(parse_response(bad, false), Resp::Bad),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    match parse_response(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n",
        false,
    ) {
        Resp::Info(n, out) => {
            assert_eq!(n, 44);
            assert_eq!(out, b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_connection_that_may_carry_stray_answer_bytes_is_not_used_again() {
    // Kept after a plain answer, and after a HEAD or 304 without a length.
    assert!(answer_of(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", false).keep);
    assert!(answer_of(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true).keep);
    assert!(answer_of(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", false).keep);
    // Not after an answer that must not have a body but says it has
    // one (a broken app may send it yet), nor after both framings.
    for (head, head_method) in [
        (&b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"[..], true),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            true,
        ),
        (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n",
            false,
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\n",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        ),
    ] {
        let a = answer_of(head, head_method);
        assert!(!a.keep, "{:?}", String::from_utf8_lossy(head));
    }
}

#[test]
fn a_head_sent_a_byte_at_a_time_is_parsed_at_its_first_byte_and_its_end_only() {
    for head in [
        &b"GET /a HTTP/1.1\r\nHost: web\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"[..],
        b"GET /a HTTP/1.1\nHost: web\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n\n",
        b"GET /a HTTP/1.1\r\nHost: web\r\n\nGET /b",
    ] {
        let mut gate = HeadEnd::default();
        let mut parsed = Vec::new();
        for k in 1..=head.len() {
            if gate.worth_parsing(&head[..k]) {
                parsed.push(k);
                if let Prep::Ready(p) = prepare(&head[..k], None) {
                    assert_eq!(p.head_len, k, "{:?}", String::from_utf8_lossy(head));
                    break;
                }
            }
        }
        let end = head.windows(2).position(|w| w == b"\n\n").map_or_else(
            || head.windows(3).position(|w| w == b"\n\r\n").unwrap() + 3,
            |i| i + 2,
        );
        assert_eq!(parsed, [1, end], "{:?}", String::from_utf8_lossy(head));
    }
    // Whole in one read: parsed at once. Not HTTP: told at the first read.
    let mut gate = HeadEnd::default();
    assert!(gate.worth_parsing(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"));
    let mut gate = HeadEnd::default();
    assert!(gate.worth_parsing(b"\x16\x03\x01\x02\x00"));
    assert!(matches!(
        prepare(b"\x16\x03\x01\x02\x00", None),
        Prep::Fallback(_)
    ));
    // A blank line split across two reads is found.
    let mut gate = HeadEnd::default();
    assert!(gate.worth_parsing(b"GET / HTTP/1.1\r\nHost: web\r\n\r"));
    assert!(gate.worth_parsing(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"));
}
