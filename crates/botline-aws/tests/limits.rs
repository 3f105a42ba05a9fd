//! Token buckets in DynamoDB ([`AwsBackend::limiter`]), against the moto server: tokens that
//! several instances share, taken all at once or not at all, never more than the bucket holds
//! under a race, and invisible to the outbox they live in.

mod common;

use botline_aws::AwsBackend;
use botline_core::limits::{Bucket, SharedLimiter, Taken};
use botline_core::{Outbox, OutboxStats};
use std::time::Duration;

async fn backend() -> AwsBackend {
    common::standard_backend(common::whole_seconds()).await
}

fn bucket(key: &str, burst: u32) -> Bucket {
    Bucket {
        key: key.to_owned(),
        period: Duration::from_secs(3600),
        burst,
    }
}

#[tokio::test]
async fn two_instances_draw_on_one_bucket() {
    let a = backend().await;
    // A second handle with its own clients, as another execution environment would have.
    let b = common::backend_with(a.settings().clone(), common::whole_seconds()).await;
    let (a, b) = (a.limiter(), b.limiter());
    let all = [bucket("telegram:all", 2)];
    assert_eq!(a.take(&all).await.unwrap(), Taken::Yes);
    assert_eq!(b.take(&all).await.unwrap(), Taken::Yes);
    for limiter in [&a, &b] {
        match limiter.take(&all).await.unwrap() {
            Taken::NotBefore(wait) => assert!(
                wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600),
                "{wait:?}"
            ),
            Taken::Yes => panic!("a third token from a bucket of two"),
        }
    }
}

#[tokio::test]
async fn all_buckets_or_none() {
    let limiter = backend().await.limiter();
    let (chat, all) = (bucket("telegram:chat:1", 1), bucket("telegram:all", 1));
    assert_eq!(
        limiter.take(std::slice::from_ref(&chat)).await.unwrap(),
        Taken::Yes
    );
    // The chat's bucket is empty: the call waits, and the overall bucket keeps its token.
    assert!(matches!(
        limiter.take(&[all.clone(), chat]).await.unwrap(),
        Taken::NotBefore(_)
    ));
    assert_eq!(limiter.take(&[all]).await.unwrap(), Taken::Yes);
}

#[tokio::test]
async fn a_race_never_takes_more_than_the_bucket_holds() {
    let backend = backend().await;
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let limiter = backend.limiter();
        racers.spawn(async move {
            // A racer that lost every read-and-write is told to ask again: it does.
            loop {
                match limiter.take(&[bucket("telegram:all", 5)]).await.unwrap() {
                    Taken::NotBefore(wait) if wait < Duration::from_secs(1) => {
                        tokio::time::sleep(wait).await;
                    }
                    taken => return taken,
                }
            }
        });
    }
    let mut granted = 0;
    while let Some(taken) = racers.join_next().await {
        if taken.unwrap() == Taken::Yes {
            granted += 1;
        }
    }
    assert_eq!(granted, 5, "a bucket of five gave {granted}");
}

#[tokio::test]
async fn the_buckets_are_not_outbox_calls() {
    let backend = backend().await;
    let limiter = backend.limiter();
    assert_eq!(
        limiter
            .take(&[bucket("telegram:chat:-100", 1)])
            .await
            .unwrap(),
        Taken::Yes
    );
    assert_eq!(
        backend.outbox_stats().await.unwrap(),
        OutboxStats::default()
    );
    assert!(
        backend
            .due_calls(10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
}
