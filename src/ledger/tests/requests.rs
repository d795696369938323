//! A request's life: accepted once, progress noted, finished, redriven, counted.

use super::*;

pub(super) async fn a_request_is_new_once_then_existing(s: Store) {
    let l = s.open().await;
    assert!(matches!(
        l.accept(&req("r1")).await.unwrap(),
        Accept::New { .. }
    ));
    match l.accept(&req("r1")).await.unwrap() {
        Accept::Existing(r) => assert_eq!((r.status, r.cursor), (Status::Running, 0)),
        other => panic!("{other:?}"),
    }
}

pub(super) async fn the_request_is_kept_byte_for_byte(s: Store) {
    let l = s.open().await;
    // Not UTF-8, with a NUL: the body is bytes, not text.
    let body = vec![0xff, 0x00, b'{', 0xc3, 0x28, b'}', 0x80];
    let new = NewRequest {
        request_id: "r-ü/1".into(),
        provider: ProviderId::Computestacks,
        operation: Operation::LoginUrl,
        body: body.clone(),
    };
    let before = now_ms();
    let Accept::New { accepted_at_ms } = l.accept(&new).await.unwrap() else {
        panic!("not new")
    };
    assert!(accepted_at_ms >= before && accepted_at_ms <= now_ms());
    let r = l.get("r-ü/1").await.unwrap().unwrap();
    assert_eq!(r.request_id, "r-ü/1");
    assert_eq!(r.body, body);
    assert_eq!(
        (r.provider.as_str(), r.operation.as_str()),
        ("computestacks", "login_url")
    );
    assert_eq!((r.status, r.cursor), (Status::Running, 0));
    assert_eq!(
        (r.accepted_at_ms, r.updated_at_ms),
        (accepted_at_ms, accepted_at_ms)
    );
    assert!(r.outputs.is_empty() && r.secrets.is_empty() && r.done_steps.is_empty());
    assert_eq!(
        (
            r.current_step,
            r.current_index,
            r.waiting_until_ms,
            r.final_event
        ),
        (None, None, None, None)
    );
    // A copy with another body changes nothing.
    let copy = NewRequest {
        body: b"other".to_vec(),
        ..new
    };
    match l.accept(&copy).await.unwrap() {
        Accept::Existing(r) => assert_eq!(r.body, body),
        other => panic!("{other:?}"),
    }
}

pub(super) async fn an_unknown_request_is_unknown_everywhere(s: Store) {
    let l = s.open().await;
    assert!(matches!(
        l.claim("nope", 0, 0, "a", MINUTE).await.unwrap(),
        Claim::Unknown
    ));
    assert!(l.get("nope").await.unwrap().is_none());
    assert!(l.redrive("nope").await.unwrap().is_none());
    // Neither of these makes it known.
    l.advance("nope", "a", 1, &Progress::default())
        .await
        .unwrap();
    l.finish(
        "nope",
        &Finish {
            status: Status::Completed,
            final_event: "{}".into(),
            step: None,
            index: None,
        },
    )
    .await
    .unwrap();
    assert!(l.get("nope").await.unwrap().is_none());
    assert_eq!(l.counts().await.unwrap(), (0, 0));
}

pub(super) async fn a_late_advance_does_not_overwrite_newer_progress(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    let waiting = |step: &str, until: i64| Progress {
        current_step: Some(step.into()),
        current_index: Some(3),
        waiting_until_ms: Some(until),
    };
    l.claim("r1", 1, 1, "b", MINUTE).await.unwrap();
    l.advance("r1", "b", 2, &waiting("poll_order", 2_000))
        .await
        .unwrap();
    // The predecessor's advance arrives after its successor's.
    l.advance(
        "r1",
        "a",
        1,
        &Progress {
            current_step: Some("create_order".into()),
            current_index: Some(2),
            waiting_until_ms: None,
        },
    )
    .await
    .unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(r.current_step.as_deref(), Some("poll_order"));
    assert_eq!(r.waiting_until_ms, Some(2_000));
    assert_eq!(r.cursor, 2);
}

pub(super) async fn advance_notes_progress_while_running(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    let due = now_ms() + 60_000;
    l.advance(
        "r1",
        "a",
        1,
        &Progress {
            current_step: Some("wait_for_job".into()),
            current_index: Some(2),
            waiting_until_ms: Some(due),
        },
    )
    .await
    .unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(
        (
            r.cursor,
            r.current_step.as_deref(),
            r.current_index,
            r.waiting_until_ms
        ),
        (1, Some("wait_for_job"), Some(2), Some(due))
    );
    // No step named: the step stays, the wait is over.
    l.advance("r1", "a", 2, &Progress::default()).await.unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(
        (
            r.cursor,
            r.current_step.as_deref(),
            r.current_index,
            r.waiting_until_ms
        ),
        (2, Some("wait_for_job"), Some(2), None)
    );
    assert!(r.updated_at_ms >= r.accepted_at_ms);
}

pub(super) async fn a_finished_request_keeps_its_end_through_a_late_advance(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    l.advance(
        "r1",
        "a",
        1,
        &Progress {
            current_step: Some("create_user".into()),
            current_index: Some(1),
            waiting_until_ms: Some(now_ms() + 60_000),
        },
    )
    .await
    .unwrap();
    l.finish(
        "r1",
        &Finish {
            status: Status::Completed,
            final_event: r#"{"event":"completed"}"#.into(),
            step: None,
            index: Some(3),
        },
    )
    .await
    .unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(
        (
            r.status,
            r.current_step.as_deref(),
            r.current_index,
            r.waiting_until_ms
        ),
        (Status::Completed, None, Some(3), None)
    );
    l.advance(
        "r1",
        "a",
        2,
        &Progress {
            current_step: Some("late".into()),
            current_index: Some(9),
            waiting_until_ms: Some(now_ms() + 60_000),
        },
    )
    .await
    .unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(
        (
            r.status,
            r.cursor,
            r.current_step.as_deref(),
            r.current_index,
            r.waiting_until_ms
        ),
        (Status::Completed, 2, None, Some(3), None)
    );
    assert_eq!(r.final_event.as_deref(), Some(r#"{"event":"completed"}"#));
    // A completed request cannot be redriven either.
    assert!(l.redrive("r1").await.unwrap().is_none());
    // A copy of a finished request's step message is still granted: the
    // engine then publishes its final event again.
    match l.claim("r1", 2, 2, "b", MINUTE).await.unwrap() {
        Claim::Granted { record: r, .. } => assert_eq!(r.status, Status::Completed),
        other => panic!("{other:?}"),
    }
}

pub(super) async fn only_a_failed_request_can_be_redriven(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    assert!(l.redrive("r1").await.unwrap().is_none());
    l.finish(
        "r1",
        &Finish {
            status: Status::Failed,
            final_event: "{}".into(),
            step: Some("create_user".into()),
            index: Some(1),
        },
    )
    .await
    .unwrap();
    let r = l.redrive("r1").await.unwrap().unwrap();
    assert_eq!((r.status, r.current_index), (Status::Running, Some(1)));
    assert!(r.final_event.is_none());
    // Once running again, not a second time.
    assert!(l.redrive("r1").await.unwrap().is_none());
}

pub(super) async fn counts_are_running_and_waiting_requests(s: Store) {
    let l = s.open().await;
    assert_eq!(l.counts().await.unwrap(), (0, 0));
    for id in ["run", "wait", "waited", "done", "failed"] {
        l.accept(&req(id)).await.unwrap();
    }
    let waiting = |until: i64| Progress {
        current_step: Some("poll".into()),
        current_index: Some(1),
        waiting_until_ms: Some(until),
    };
    l.advance("wait", "a", 1, &waiting(now_ms() + 60_000))
        .await
        .unwrap();
    // Due already: no longer counted as waiting.
    l.advance("waited", "a", 1, &waiting(now_ms() - 1))
        .await
        .unwrap();
    for (id, status) in [("done", Status::Completed), ("failed", Status::Failed)] {
        l.finish(
            id,
            &Finish {
                status,
                final_event: "{}".into(),
                step: None,
                index: None,
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(l.counts().await.unwrap(), (3, 1));
}
