//! Unit tests of the history parser and writer.

use serde_json::json;

use super::*;

fn parse_err(text: &str) -> (usize, String) {
    match History::parse_str(text) {
        Err(ParseError::Malformed { line, message }) => (line, message),
        other => panic!("expected a malformed-line error, got {other:?}"),
    }
}

#[test]
fn pairs_invokes_with_completions() {
    let text = r#"{"process":2,"type":"invoke","f":"cas","key":"r","value":[3,0]}
{"process":0,"type":"invoke","f":"read","key":"r","value":null}
{"process":2,"type":"ok","f":"cas","key":"r","value":[3,0]}
{"process":0,"type":"ok","f":"read","key":"r","value":0}
{"process":1,"type":"invoke","f":"write","key":"r","value":4,"time":17}
{"process":1,"type":"info","f":"write","key":"r","value":null,"time":99}
{"process":3,"type":"invoke","f":"write","key":"r","value":5}
"#;
    let history = History::parse_str(text).unwrap();
    assert_eq!(history.ops.len(), 4);
    let cas = &history.ops[0];
    assert_eq!(cas.process, 2);
    assert_eq!(
        cas.call,
        Call::Cas {
            expected: json!(3),
            new: json!(0)
        }
    );
    assert_eq!(
        (cas.outcome, cas.invoke_line, cas.complete_line),
        (Outcome::Ok, 1, Some(3))
    );
    let read = &history.ops[1];
    assert_eq!(
        (read.call.clone(), read.outcome, read.result.clone()),
        (Call::Read, Outcome::Ok, json!(0))
    );
    let info = &history.ops[2];
    assert_eq!(info.outcome, Outcome::Info);
    assert_eq!((info.invoke_time, info.complete_time), (Some(17), Some(99)));
    let pending = &history.ops[3];
    assert_eq!(
        (pending.outcome, pending.complete_line),
        (Outcome::Pending, None)
    );
    assert!(pending.outcome.is_indeterminate());
    assert_eq!(
        history.ops.iter().map(|o| o.index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
}

#[test]
fn keys_may_be_integers_or_missing_and_blank_lines_count() {
    let text = "\n{\"process\":0,\"type\":\"invoke\",\"f\":\"write\",\"key\":7,\"value\":1}\n  \n{\"process\":0,\"type\":\"fail\",\"f\":\"write\",\"key\":7,\"value\":1}\n{\"process\":1,\"type\":\"invoke\",\"f\":\"read\"}\n";
    let history = History::parse_str(text).unwrap();
    assert_eq!(history.ops[0].key, "7");
    assert_eq!(
        (history.ops[0].invoke_line, history.ops[0].complete_line),
        (2, Some(4))
    );
    assert_eq!(history.ops[0].outcome, Outcome::Fail);
    assert_eq!(history.ops[1].key, "");
    let keys: Vec<&str> = history.by_key().keys().copied().collect();
    assert_eq!(keys, vec!["", "7"]);
}

#[test]
fn a_process_may_invoke_again_after_an_info() {
    // Jepsen's etcd histories reuse a process after a timed-out read.
    let text = r#"{"process":3,"type":"invoke","f":"read","key":"r","value":null}
{"process":3,"type":"info","f":"read","key":"r","value":null}
{"process":3,"type":"invoke","f":"write","key":"r","value":1}
{"process":3,"type":"ok","f":"write","key":"r","value":1}
"#;
    let history = History::parse_str(text).unwrap();
    assert_eq!(history.ops.len(), 2);
    assert_eq!(history.ops[1].outcome, Outcome::Ok);
}

#[test]
fn rejects_an_unknown_type_naming_the_line() {
    let text = r#"{"process":0,"type":"invoke","f":"read","key":"r","value":null}
{"process":0,"type":"done","f":"read","key":"r","value":null}
"#;
    let (line, message) = parse_err(text);
    assert_eq!(line, 2);
    assert!(message.contains("unknown variant `done`"), "{message}");
}

#[test]
fn rejects_an_unknown_function() {
    let (line, message) =
        parse_err(r#"{"process":0,"type":"invoke","f":"append","key":"r","value":1}"#);
    assert_eq!(line, 1);
    assert!(message.contains("append"), "{message}");
}

#[test]
fn rejects_invalid_json() {
    let (line, message) =
        parse_err("{\"process\":0,\"type\":\"invoke\",\"f\":\"read\"}\nnot json\n");
    assert_eq!(line, 2);
    assert!(message.starts_with("invalid event"), "{message}");
}

#[test]
fn rejects_a_completion_without_invoke() {
    let (line, message) = parse_err(r#"{"process":4,"type":"ok","f":"write","key":"r","value":1}"#);
    assert_eq!(line, 1);
    assert!(message.contains("no pending invoke"), "{message}");
}

#[test]
fn rejects_a_second_invoke_while_pending() {
    let text = r#"{"process":1,"type":"invoke","f":"write","key":"r","value":1}
{"process":1,"type":"invoke","f":"read","key":"r","value":null}
"#;
    let (line, message) = parse_err(text);
    assert_eq!(line, 2);
    assert!(message.contains("invoked at line 1"), "{message}");
}

#[test]
fn rejects_a_completion_of_another_function_or_key() {
    let text = r#"{"process":1,"type":"invoke","f":"write","key":"r","value":1}
{"process":1,"type":"ok","f":"cas","key":"r","value":[1,2]}
"#;
    let (line, message) = parse_err(text);
    assert_eq!(line, 2);
    assert!(message.contains("is a write"), "{message}");
    let text = r#"{"process":1,"type":"invoke","f":"write","key":"r","value":1}
{"process":1,"type":"ok","f":"write","key":"s","value":1}
"#;
    let (line, message) = parse_err(text);
    assert_eq!(line, 2);
    assert!(message.contains("key \"s\""), "{message}");
}

#[test]
fn rejects_a_malformed_cas_value() {
    let (line, message) =
        parse_err(r#"{"process":1,"type":"invoke","f":"cas","key":"r","value":[1]}"#);
    assert_eq!(line, 1);
    assert!(message.contains("[expected, new]"), "{message}");
    let (_, message) = parse_err(r#"{"process":1,"type":"invoke","f":"cas","key":"r","value":3}"#);
    assert!(message.contains("got 3"), "{message}");
}

#[test]
fn rejects_a_bad_key() {
    let (line, message) =
        parse_err(r#"{"process":1,"type":"invoke","f":"read","key":[1],"value":null}"#);
    assert_eq!(line, 1);
    assert!(
        message.contains("key must be a string or an integer"),
        "{message}"
    );
}

#[test]
fn displays_operations_with_their_lines() {
    let text = r#"{"process":0,"type":"invoke","f":"read","key":"r","value":null}
{"process":1,"type":"invoke","f":"cas","key":"r","value":[1,2]}
{"process":0,"type":"ok","f":"read","key":"r","value":3}
"#;
    let history = History::parse_str(text).unwrap();
    assert_eq!(
        history.ops[0].to_string(),
        "process 0 read -> 3 ok (lines 1-3)"
    );
    assert_eq!(
        history.ops[1].to_string(),
        "process 1 cas 1->2 pending (line 2, never completed)"
    );
}

#[test]
fn writer_output_parses_back_with_increasing_times() {
    let mut writer = HistoryWriter::new(Vec::new());
    writer.invoke(1, Function::Write, "a", json!(5)).unwrap();
    writer.invoke(2, Function::Cas, "a", json!([5, 6])).unwrap();
    writer
        .complete(1, EventType::Ok, Function::Write, "a", json!(5))
        .unwrap();
    writer
        .complete(2, EventType::Fail, Function::Cas, "a", json!([5, 6]))
        .unwrap();
    writer
        .record(&Event::new(3, EventType::Invoke, Function::Read, "b", Value::Null).at(7))
        .unwrap();
    let bytes = writer.into_inner().unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert_eq!(text.lines().count(), 5);
    let events: Vec<Event> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let times: Vec<u64> = events.iter().map(|e| e.time.unwrap()).collect();
    assert!(times[..4].windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(times[4], 7, "an explicit time is kept");
    assert!(text
        .lines()
        .next()
        .unwrap()
        .starts_with(r#"{"process":1,"type":"invoke","f":"write","key":"a","value":5,"time":"#));
    let history = History::parse_str(&text).unwrap();
    assert_eq!(history.ops.len(), 3);
    assert_eq!(history.ops[1].outcome, Outcome::Fail);
    assert_eq!(history.ops[2].outcome, Outcome::Pending);
    assert_eq!(History::from_events(&events).unwrap(), history);
}

#[test]
fn writer_appends_to_a_file() {
    let dir = std::env::temp_dir().join(format!("raftmesh-history-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("append.jsonl");
    let _ = std::fs::remove_file(&path);
    for value in [1, 2] {
        let mut writer = HistoryWriter::append_to(&path).unwrap();
        writer
            .invoke(value, Function::Write, "k", json!(value))
            .unwrap();
        writer
            .complete(value, EventType::Ok, Function::Write, "k", json!(value))
            .unwrap();
    }
    let history = History::from_path(&path).unwrap();
    assert_eq!(history.ops.len(), 2);
    assert_eq!(history.ops[1].invoke_line, 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_file_is_an_io_error() {
    let err = History::from_path("/nonexistent/raftmesh/history.jsonl").unwrap_err();
    assert!(matches!(err, ParseError::Io(_)), "{err:?}");
}
