//! A short soak: `botline serve` under a steady 300 updates/s for 20 s, its resident memory
//! sampled every second. Nothing acknowledged may be lost or duplicated, and after warm-up the
//! memory must stay flat. `scripts/soak.sh` runs the same for half an hour on a release build.
//!
//! Flat means: the largest RSS sample of the last third of the load is at most the largest of
//! the second third (the first third is warm-up: the store's page cache, the allocator's arenas)
//! plus 5 % or 3 MiB, whichever is larger. On this code the two differ by about 0.1 MiB (two
//! runs: +84 KiB and +64 KiB on a 38 MiB debug server), so the margin is thirty times the noise,
//! and it still covers SQLite's page cache (2 MiB per connection by default) filling later than
//! usual on a slow machine. A leak of 1.5 KiB per update (450 KiB/s at this rate) grows the last
//! third's peak by 3 MiB over the 7 s between the two peaks and fails the test;
//! `the_flatness_check_catches_a_leak` shows it on such a series.

use botline_bench::timeline::rss_thirds;
use botline_bench::{
    LoadConfig, LoadLimit, ManagedRun, ManagedServer, SecondStats, ServerConfig, run_managed,
};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_botline");
const RATE: f64 = 300.0;
const SECONDS: u64 = 20;

/// How far the last third's peak may exceed the second third's, KiB.
fn allowed_growth_kib(second_third_max_kib: u64) -> u64 {
    (second_third_max_kib / 20).max(3 * 1024)
}

/// `Ok` when the timeline's RSS is flat after warm-up; otherwise why not.
fn check_flat(timeline: &[SecondStats]) -> Result<(), String> {
    let (Some(second), Some(last)) = rss_thirds(timeline) else {
        return Err("no RSS samples in the second or the last third".to_owned());
    };
    let allowed = allowed_growth_kib(second);
    if last > second + allowed {
        return Err(format!(
            "RSS grew: last third peak {last} KiB > second third peak {second} KiB + {allowed} KiB"
        ));
    }
    Ok(())
}

#[test]
fn memory_stays_flat_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
        .keep();
    let server = ManagedServer::start(ServerConfig {
        data_dir: Some(dir.join("data")),
        ..ServerConfig::new(BIN)
    })
    .expect("botline serve starts");
    let plot = dir.join("soak.svg");
    let config = LoadConfig {
        connections: 40,
        chats: 1000,
        rate: Some(RATE),
        limit: LoadLimit::Duration(Duration::from_secs(SECONDS)),
        plot: Some(plot.clone()),
        json_out: Some(dir.join("soak.json")),
        ..LoadConfig::default()
    };
    let report = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_managed(config, server, ManagedRun::default()))
        .expect("the soak ran");

    let expected = (RATE * SECONDS as f64) as u64;
    assert_eq!(report.updates_sent, expected, "{report}");
    assert_eq!(report.acknowledged, expected, "{report}");
    assert_eq!(report.given_up, 0, "{report}");
    let verification = report.verification.as_ref().expect("the store was checked");
    assert!(verification.is_ok(), "{report}");
    assert_eq!(
        (
            verification.present,
            verification.missing,
            verification.duplicated
        ),
        (expected, 0, 0)
    );

    let server = report.server.as_ref().expect("a server report");
    assert_eq!(server.died, None, "{report}");
    assert!(server.stopped_cleanly, "{report}");
    assert_eq!(server.kills, 0);
    assert!(
        server.rss_samples >= SECONDS - 2,
        "an RSS sample about every second: {report}"
    );
    let series: Vec<(u64, u64)> = report.rss_series().collect();
    assert!(series.iter().all(|&(_, kib)| kib > 1024), "{series:?}");
    if let Err(why) = check_flat(&report.timeline) {
        panic!("{why}; RSS by second (KiB): {series:?}\n{report}");
    }

    check_plot(&plot);
}

/// The plot is a well-formed SVG with its three panels and a line in each.
fn check_plot(path: &Path) {
    let svg = std::fs::read_to_string(path).expect("the plot was written");
    let texts = check_well_formed(&svg);
    for caption in [
        "Throughput per second",
        "Acknowledgement latency per second (ms, log scale)",
        "Server resident memory (VmRSS, MiB)",
        "acknowledged updates",
        "p99",
        "RSS",
    ] {
        assert!(
            texts.iter().any(|t| t == caption),
            "{caption:?} not among {texts:?}"
        );
    }
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("botline-bench: open loop at 300/s")),
        "a title with the run's parameters: {texts:?}"
    );
    // One line of SECONDS points or so per series: acked, failed, p50, p99, max, RSS.
    let long_lines = svg
        .split("<polyline")
        .skip(1)
        .filter(|element| {
            element
                .split("points=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .is_some_and(|points| points.split_whitespace().count() >= SECONDS as usize - 2)
        })
        .count();
    assert!(
        long_lines >= 6,
        "{long_lines} lines with a point per second"
    );
}

/// Checks that every element of `svg` is closed in order under one `<svg>` root, and returns
/// the texts of its `<text>` elements. (No XML parser among botline's dev-dependencies;
/// botline-bench's own tests parse the plot with roxmltree.)
fn check_well_formed(svg: &str) -> Vec<String> {
    let mut open: Vec<&str> = Vec::new();
    let mut texts = Vec::new();
    let mut roots = 0;
    let mut rest = svg;
    while let Some(at) = rest.find('<') {
        let tail = &rest[at + 1..];
        let end = tail.find('>').expect("every tag is closed with >");
        let tag = &tail[..end];
        rest = &tail[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                open.pop(),
                Some(name.trim()),
                "</{name}> closes what was opened"
            );
            continue;
        }
        let name = tag.split_whitespace().next().expect("a tag name");
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "quoted attributes in <{tag}>"
        );
        if open.is_empty() {
            assert_eq!(name, "svg", "the root is <svg>");
            roots += 1;
        }
        if name == "text" {
            let content = &rest[..rest.find('<').unwrap_or(rest.len())];
            texts.push(content.trim().to_owned());
        }
        if !tag.ends_with('/') {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "unclosed: {open:?}");
    assert_eq!(roots, 1, "one <svg> root");
    assert!(rest.trim().is_empty(), "nothing after the root");
    texts
}

#[test]
fn the_flatness_check_catches_a_leak() {
    let series = |kib: &dyn Fn(u64) -> u64| -> Vec<SecondStats> {
        (0..SECONDS)
            .map(|second| SecondStats {
                second,
                server_rss_kib: Some(kib(second)),
                ..SecondStats::default()
            })
            .collect()
    };
    // Warm-up, then flat with a little noise: passes.
    let flat = series(&|s| {
        if s < 3 {
            30_000 + s * 2_000
        } else {
            38_000 + s % 3 * 40
        }
    });
    assert_eq!(check_flat(&flat), Ok(()));
    // 1.5 KiB per update at 300/s: fails.
    let leaking = series(&|s| 38_000 + s * 460);
    assert!(check_flat(&leaking).is_err());
    // No samples: fails.
    assert!(check_flat(&series(&|_| 0)[..0]).is_err());
}

#[test]
fn the_well_formedness_check_rejects_broken_svg() {
    let good = r#"<svg width="2"><text x="1">hi</text><rect width="1"/></svg>"#;
    assert_eq!(check_well_formed(good), ["hi"]);
    for broken in [
        r#"<svg><text>hi</svg>"#,
        r#"<svg><rect width="1/></svg>"#,
        r#"<svg></svg><svg></svg>"#,
        r#"<g></g>"#,
    ] {
        let outcome = std::panic::catch_unwind(|| check_well_formed(broken));
        assert!(outcome.is_err(), "{broken} passed");
    }
}
